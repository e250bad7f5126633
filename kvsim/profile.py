"""Efficiency profile: how much of the datasheet a real stack achieves, and its fixed overheads.

The default profile is the datasheet roofline itself: efficiencies of 1 and no overheads. Its times are
a physical lower bound ("no implementation can beat this"), never a guess dressed up as a prediction.
Calibrated profiles (calibrate/profiles/*.json) replace these numbers with fitted ones and carry the
held-out error they were measured to have.

Matrix work (weight GEMMs, attention) over a forward pass of T tokens reaches peak_flops times
    (compute_small_efficiency * compute_half_tokens + compute_efficiency * T) / (compute_half_tokens + T)
which goes from the small-batch level (decode: a few rows per matrix, often row-at-a-time kernels) to the
large-batch level (prefill: blocked GEMMs), half way at compute_half_tokens. Weight and activation streams
reach bandwidth * mem_efficiency; KV reads and writes reach bandwidth * kv_efficiency (a cache that is
re-copied on every append, or read through gathers, achieves less of the bandwidth than a weight stream).
The policy's own arithmetic (scoring, selection, dequantisation) runs at peak_flops * policy_efficiency.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import KvsimError


@dataclass(frozen=True)
class Profile:
    name: str = "datasheet"
    mem_efficiency: float = 1.0  # fraction of peak bandwidth reached by weight and activation streams
    kv_efficiency: float = 1.0  # fraction of peak bandwidth reached by KV reads and writes
    compute_efficiency: float = 1.0  # fraction of dense peak FLOP/s reached by matrix work over many tokens
    compute_small_efficiency: float = 0.0  # the same over very few tokens (0: same as compute_efficiency)
    compute_half_tokens: float = 0.0  # tokens per forward pass half way between the two
    policy_efficiency: float = 1.0  # fraction of peak FLOP/s reached by the KV policy's own arithmetic
    step_overhead_s: float = 0.0  # per forward pass (a decode step, or the prefill)
    layer_overhead_s: float = 0.0  # per layer per forward pass (framework module calls)
    kernel_overhead_s: float = 0.0  # per kernel launched (ModelSpec.kernels() per forward pass, eager)
    prefill_token_overhead_s: float = 0.0  # per prompt token in the prefill, beyond the roofline
    policy_layer_overhead_s: float = 0.0  # per layer per decode step when a KV policy does work there
    # Unfused executors dequantise or gather what a decode step reads into a new tensor at the KV dtype,
    # writing it and reading it back; fused kernels read the compressed or paged cache in place (0).
    materialised_reads: float = 0.0  # fraction of that copy's write-and-read traffic that reaches memory
    reserved_bytes: float = 0.0  # device memory not available to the model (runtime, allocator slack)
    # Serving engines' reservations (kvsim/serving.py), taken from the engine's memory share before the KV pool.
    runtime_bytes: float = 0.0  # CUDA context, NCCL buffers and other memory outside the allocator, per device
    cudagraph_bytes: float = 0.0  # memory pools of captured CUDA graphs, per device
    # Hardware figures measured by `kvsim probe` replace the datasheet ones when set (0: use the datasheet).
    memory_bandwidth: float = 0.0
    peak_flops: float = 0.0
    device: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for f in fields(self):
            if f.type == "float":
                v = getattr(self, f.name)
                if not isinstance(v, (int, float)) or v != v or v < 0:
                    raise KvsimError(f"profile {self.name}: {f.name} must be a non-negative number, got {v!r}")
        for name in ("mem_efficiency", "kv_efficiency", "compute_efficiency", "policy_efficiency"):
            if not 0 < getattr(self, name) <= 1.5:
                raise KvsimError(f"profile {self.name}: {name} must be in (0, 1.5]")
        if self.compute_small_efficiency > 1.5:
            raise KvsimError(f"profile {self.name}: compute_small_efficiency must be at most 1.5")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        known = {f.name for f in fields(cls)}
        params = data.get("params", data)
        unknown = sorted(set(params) - known)
        if unknown:
            raise KvsimError(f"profile has unknown keys: {', '.join(unknown)}")
        kwargs = dict(params)
        meta = {k: v for k, v in data.items() if k != "params"} if "params" in data else kwargs.pop("meta", {})
        kwargs["meta"] = meta
        return cls(**kwargs)


DATASHEET = Profile()


def load_profile(path: str | Path) -> Profile:
    """Read a calibrated profile JSON ({"params": {...}, "heldout": {...}, ...})."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise KvsimError(f"profile not found: {p}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise KvsimError(f"cannot read profile {p}: {e}") from None
    if not isinstance(data, dict):
        raise KvsimError(f"profile {p} must be a JSON object")
    try:
        return Profile.from_dict(data)
    except TypeError as e:
        raise KvsimError(f"profile {p}: {e}") from None
