"""Units. Inside kvsim everything is bytes, seconds, FLOP and bytes/s; conversion happens only here,
at the edge where a person reads a number. GB is 10**9 bytes and GiB is 2**30: they are never mixed."""

from __future__ import annotations

import math

from .errors import KvsimError

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40

# Storage width of each element type, in bits. Sub-byte types are packed: a row of d elements at b bits
# takes ceil(d * b / 8) bytes (see policies/quant.py).
DTYPE_BITS: dict[str, int] = {
    "fp64": 64,
    "fp32": 32,
    "tf32": 32,
    "bf16": 16,
    "fp16": 16,
    "fp8": 8,
    "int8": 8,
    "int4": 4,
}

DTYPE_ALIASES = {
    "float64": "fp64",
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
    "e4m3": "fp8",
}


def canonical_dtype(name: str) -> str:
    """Normalise a dtype name ("bfloat16" -> "bf16"); raise KvsimError (a ValueError) listing the valid names."""
    key = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DTYPE_BITS:
        raise KvsimError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_BITS)}")
    return key


def dtype_bytes(name: str) -> int:
    """Whole bytes per element; only for types at least a byte wide."""
    bits = DTYPE_BITS[canonical_dtype(name)]
    if bits % 8:
        raise ValueError(f"{name} is sub-byte; use DTYPE_BITS and pack rows")
    return bits // 8


def fmt_bytes(n: float, binary: bool = True) -> str:
    """1073741824 -> '1.00 GiB' (binary) or '1.07 GB' (decimal)."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return str(n)
    units = [("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)] if binary else [
        ("TB", TB), ("GB", GB), ("MB", MB), ("KB", KB)]
    for name, size in units:
        if abs(n) >= size:
            return f"{n / size:.2f} {name}"
    return f"{int(n)} B"


def fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return str(s)
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_count(n: float, unit: str = "") -> str:
    """1.23G, or with a unit 1.23 GFLOP."""
    sep = " " if unit else ""
    for name, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{sep}{name}{unit}"
    return (f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}") + sep + unit
