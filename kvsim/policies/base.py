"""What every KV policy is made of.

A policy is a small frozen dataclass; its fields are its hyperparameters, declared with `param()` so the CLI
can parse them and `kvsim list policies` can explain them. Its methods are analytic and numpy-only: they
take the prompt length `p` and the number of decode steps done `g` as int64 arrays (any broadcastable
shapes) and return arrays, so one call covers a whole sweep.

Roles, in the order a composition applies them:
  select  which tokens of each head stay resident (eviction, merging of tokens, head-wise budgets)
  read    which resident tokens a decode step reads (Quest-style sparse reads); storage is unchanged
  merge   sharing across layers (MiniCache)
  encode  how a resident token is stored (quantization, low-rank projection)
  place   where the bytes live (offload to host memory)

Time convention: after the prefill of `p` tokens and `g` decode steps, `p + g` tokens have been processed.
Decode step g+1 feeds one token, reads what is resident after step g, appends the new token, and then the
policy may evict. Sizes are "resident between steps", exactly what measured/ counts in physical storage.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import KvsimError
from ..model import KVLayout

SELECT, READ, MERGE, ENCODE, PLACE = "select", "read", "merge", "encode", "place"
ROLE_ORDER = (SELECT, READ, MERGE, ENCODE, PLACE)


def param(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
          choices: tuple | None = None, quality_only: bool = False):
    """A policy hyperparameter: a dataclass field with its meaning and valid range. `quality_only` marks a
    field that changes which tokens are kept but no byte, FLOP or time figure (measured/ checks that it
    changes the model's outputs instead)."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "choices": choices,
                                            "quality_only": quality_only})


@dataclass(frozen=True)
class LayerCtx:
    """One layer as a policy sees it."""

    index: int  # layer index in the model
    layout: KVLayout
    rank: int  # index among the layers whose cache grows without bound (-1: not one of them)
    n_ranked: int  # how many such layers the model has
    kv_rank: int  # index among the layers that keep a cache of their own
    n_kv: int  # how many such layers the model has
    elem_bits: int  # bits of one unencoded KV element (the KV dtype)

    @property
    def heads(self) -> int:
        return self.layout.n_kv_heads


@dataclass(frozen=True)
class Segment:
    """`heads` KV heads each holding `tokens` tokens (an int64 array), stored with `encoding` (None: the
    composition's encoding chain). `extra_bits_per_token` is per-head metadata stored beside each token
    outside the encoding (MiniCache's magnitudes)."""

    heads: int
    tokens: np.ndarray
    encoding: Any = None
    extra_bits_per_token: int = 0


class Policy:
    """Base of all policies. Subclasses are frozen dataclasses and set `name` and `role`."""

    name: ClassVar[str] = ""
    role: ClassVar[str] = SELECT
    summary: ClassVar[str] = ""
    # When the policy changes the cache: "prefill", "step", "every N steps" (for display).
    when: ClassVar[str] = "never"

    def __post_init__(self):
        for f in dataclasses.fields(self):
            meta = f.metadata
            value = getattr(self, f.name)
            if meta.get("choices") is not None and value not in meta["choices"]:
                raise KvsimError(f"{self.name}: {f.name} must be one of {', '.join(map(str, meta['choices']))}, "
                                 f"got {value!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise KvsimError(f"{self.name}: {f.name} must be finite, got {value}")
            if meta.get("lo") is not None and value < meta["lo"]:
                raise KvsimError(f"{self.name}: {f.name} must be >= {meta['lo']}, got {value}")
            if meta.get("hi") is not None and value > meta["hi"]:
                raise KvsimError(f"{self.name}: {f.name} must be <= {meta['hi']}, got {value}")
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise KvsimError."""

    def spec(self) -> str:
        """The CLI spelling of this policy: name:key=value,..."""
        parts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)]
        return self.name + (":" + ",".join(parts) if parts else "")

    def notes(self, p: np.ndarray) -> list[str]:
        """Things a user should be told for these prompt lengths (a budget clamped to the sequence)."""
        return []

    def __str__(self) -> str:
        return self.spec()


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return repr(v)
    return str(v)


def clamp_note(name: str, budget: int, p) -> list[str]:
    """Say so when a budget exceeds some prompt: it is clamped to the prompt and nothing is evicted then."""
    p = np.asarray(p)
    small = p[p < budget]
    if small.size:
        return [f"{name}: budget {budget} > prompt {int(small.min())}: clamped to the prompt, nothing is evicted "
                "at the prefill"]
    return []


def i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def zeros_like(p, g) -> np.ndarray:
    return np.zeros(np.broadcast_shapes(np.shape(p), np.shape(g)), dtype=np.int64)


def budget_resident(p: np.ndarray, g: np.ndarray, budget, every: int) -> np.ndarray:
    """Tokens resident after prefill + g steps for a policy that compresses to `budget` at the prefill and
    then every `every` decode steps (0: prefill only; 1: every step)."""
    if every == 0:
        return np.minimum(p, budget) + g
    if every == 1:
        return np.minimum(p + g, budget)
    return np.minimum(p + g, budget + g % every)


def budget_peak(p: np.ndarray, gmax: np.ndarray, budget, every: int) -> np.ndarray:
    """Largest resident count over steps 0..gmax of `budget_resident`. For every > 1 the count saws between
    budget and budget + every - 1; the maximum is at gmax or at the last step before a compression."""
    end = budget_resident(p, gmax, budget, every)
    if every <= 1:
        return end
    g_star = ((gmax + 1) // every) * every - 1
    before = np.where(g_star >= 0, budget_resident(p, np.maximum(g_star, 0), budget, every), 0)
    return np.maximum(end, before)


def pack_bytes(elements, bits) -> np.ndarray:
    """Bytes of one row of `elements` values packed at `bits` each (rows are byte aligned)."""
    return (i64(elements) * bits + 7) // 8


class Selector(Policy):
    """A policy that decides which tokens of each head stay resident. Subclasses implement `kept`."""

    role = SELECT
    # True where the split of the budget across layers or heads is decided at run time from attention
    # scores (AdaKV, DynamicKV): per-layer or per-head figures are then averages, totals stay exact.
    data_dependent: ClassVar[bool] = False
    # True where compression waits until every layer has seen the prompt (a budget split across layers):
    # the whole uncompressed prompt is then resident at the end of the prefill.
    defers: ClassVar[bool] = False

    def kept(self, ctx: LayerCtx, p: np.ndarray, g: np.ndarray) -> list[Segment]:
        raise KvsimError(f"{self.name} does not say which tokens it keeps")

    def peak(self, ctx: LayerCtx, p: np.ndarray, gmax: np.ndarray) -> list[Segment]:
        """Segments at the step of the request where the most tokens are resident (0..gmax)."""
        return self.kept(ctx, p, gmax)

    def read(self, ctx: LayerCtx, p: np.ndarray, g: np.ndarray) -> list[Segment]:
        """What decode step g+1 reads, besides the token it appends."""
        return self.kept(ctx, p, g)

    def state_bytes(self, ctx: LayerCtx, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Per-sequence bookkeeping the policy keeps beside the KV (scores, positions, counts)."""
        return zeros_like(p, g)

    def shared_bytes(self, ctx: LayerCtx) -> int:
        """Per-layer bytes shared by every sequence (a learned scorer's weights)."""
        return 0

    def step_cost(self, ctx: LayerCtx, p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(FLOP, bytes) of the policy's own work in decode step g+1, per sequence. p and g arrive as float64
        arrays holding whole numbers, so FLOP formulas (which can pass 2**63) stay in float64."""
        z = zeros_like(p, g)
        return z, z

    def prefill_cost(self, ctx: LayerCtx, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(FLOP, bytes) of the policy's own work at the prefill, per sequence (p: float64, as in step_cost)."""
        z = zeros_like(p, 0)
        return z, z
