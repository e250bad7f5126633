"""One bounded JSON reader for every file kvsim reads (config.json, profiles): a regular file, at most
MAX_BYTES, UTF-8, nested at most MAX_DEPTH deep, finite numbers only, a JSON object at the top. Anything else
is a one-line KvsimError, never a traceback, a hang on /dev/zero or a NaN that flows into a prediction."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import KvsimError

MAX_BYTES = 16 * 2**20
MAX_DEPTH = 64


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number kvsim accepts")


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text} is out of range")
    return x


def _depth(obj) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def read_object(path: str | Path, what: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise KvsimError(f"{what} not found: {p}")
    if not p.is_file():
        raise KvsimError(f"{what} {p} is not a regular file")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise KvsimError(f"cannot read {what} {p}: {e.strerror or e}") from None
    return parse_object(raw, what, str(p))


def parse_object(raw: bytes, what: str, source: str = "") -> dict:
    """The same checks on bytes already in hand (an upload in the explorer)."""
    where = f" {source}" if source else ""
    if len(raw) > MAX_BYTES:
        raise KvsimError(f"{what}{where} is larger than {MAX_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KvsimError(f"{what}{where} is not UTF-8 text") from None
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as e:
        raise KvsimError(f"malformed {what}{where}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise KvsimError(f"malformed {what}{where}: {e}") from None
    except RecursionError:
        raise KvsimError(f"{what}{where} is nested more than {MAX_DEPTH} levels deep") from None
    if _depth(data) > MAX_DEPTH:
        raise KvsimError(f"{what}{where} is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(data, dict):
        raise KvsimError(f"malformed {what}{where}: expected a JSON object")
    return data
