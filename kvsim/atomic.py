"""Whole files or nothing: outputs are written beside their target and renamed over it."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(target: Path, suffix: str = ""):
    """A temporary path beside `target` (ending in `suffix`, for writers that infer a format from it),
    renamed over `target` when the block succeeds and removed when it fails, so an existing file is never
    left half-written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
