"""Numeric bounds of predict: which inputs kvsim computes exactly, and the refusal when a result cannot be.

Three explicit bounds keep every int64 operation from overflowing:
- INPUT_MAX: prompt, gen and batch are whole numbers up to 2**53 (float64 holds them exactly);
- per-sequence sizes are computed by the policies in int64; `token_limit` bounds prompt + gen so that every
  intermediate of them (bits of a row, times heads, summed over layers) stays below INT_SAFE = 2**62;
- whatever is scaled by the batch (and FLOP, which grow with the square of the prompt) is computed in float64;
  a byte count is reported only if it is below EXACT = 2**53 (8 PiB), where float64 and int64 agree exactly.
Anything beyond is refused with one line (KvsimError) instead of wrapping to a negative or made-up number.
"""

from __future__ import annotations

import numpy as np

from .errors import KvsimError

INPUT_MAX = 2**53
# Layers of one model: ten times the deepest published decoder (Llama-3.1-405B has 126), so that a typo or a
# crafted config (100,000 layers) is refused at once instead of building per-layer work nobody asked for.
MAX_LAYERS = 2048
# Points one sweep may evaluate (grid x models x hardware x policies): ~10 GB of CSV, minutes of work.
MAX_POINTS = 50_000_000
# Points of one seq x gen x batch grid, evaluated at once: about 1.5 KB of memory each (2M points peak at 3 GB).
MAX_GRID = 2_000_000
# Models, hardware and policy compositions: each one is a separate prediction (about a millisecond each).
MAX_CASES = 100_000
INT_SAFE = 2**62
EXACT = 2**53

# Upper bound, in bits per token and KV head per stored element (K and V channels) plus 2 extra elements, of what
# any policy's integer arithmetic forms: 64-bit elements with per-element 32-bit scales and zero points, per-token
# scores and positions, per-page min/max keys, merge magnitudes (policies/*.py stay well under it).
_BITS_PER_ELEMENT = 256


def check_layers(n: int, what: str = "layers") -> int:
    if not 1 <= n <= MAX_LAYERS:
        raise KvsimError(f"{what} must be between 1 and {MAX_LAYERS:,}, got {n:,}")
    return n


def check_points(n: int, what: str, limit: int = MAX_POINTS) -> int:
    """Refuse a sweep whose total work (a product of list lengths) is beyond `limit`, before any of it."""
    if n > limit:
        raise KvsimError(f"{what} is {n:,} points, more than the {limit:,} one sweep evaluates; "
                         "split it into smaller sweeps")
    return n


def token_limit(model) -> int:
    """Largest prompt + gen per sequence whose per-sequence int64 sizes cannot overflow for `model`."""
    per_token = 0
    for layer in model.layers:
        if layer.has_kv:
            lay = layer.mixer.kv_layout()
            per_token += lay.n_kv_heads * (lay.k_dim + lay.v_dim + 2) * _BITS_PER_ELEMENT
    return INPUT_MAX if per_token == 0 else min(INPUT_MAX, INT_SAFE // per_token)


def check_tokens(model, tokens: np.ndarray) -> None:
    """Refuse prompt + gen beyond `token_limit(model)`."""
    limit = token_limit(model)
    top = int(np.max(tokens)) if np.size(tokens) else 0
    if top > limit:
        raise KvsimError(f"prompt + gen = {top:,} tokens per sequence is beyond what kvsim computes exactly for "
                         f"{model.name} (at most {limit:,})")


def exact(what: str, x) -> np.ndarray:
    """A byte count computed in float64 (or int64 or a Python int) as int64, or KvsimError if it is not finite,
    negative or at least EXACT."""
    a = np.asarray(x, dtype=np.float64) if not isinstance(x, int) else np.asarray(float(x))
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a >= EXACT):
        worst = float(np.max(np.where(np.isfinite(a), a, np.inf)))
        raise KvsimError(f"{what} would be {worst:.3g} bytes: beyond 2**53 bytes (9.0 PB), the largest size kvsim "
                         "computes exactly; reduce the batch or sequence")
    return a.astype(np.int64)


def ceil_div(x, d: int):
    """Ceiling division of non-negative counts (int or float64 holding whole numbers)."""
    return -(-x // d)
