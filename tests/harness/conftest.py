import functools
import os

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch = pytest.importorskip("torch")


@functools.lru_cache(maxsize=None)
def tiny(arch: str):
    from measured.validate import tiny_model
    return tiny_model(arch)


@pytest.fixture(scope="session")
def smollm2():
    from measured.models import load_real
    return load_real("smollm2-135m")
