"""Hardware: datasheet numbers with their source. How much of them a real run achieves is not here; that is
the calibration profile's business (profile.py), fitted by calibrate/ from measurements."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import KvsimError
from .units import canonical_dtype


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    display: str
    memory_bytes: int  # device memory capacity
    memory_bandwidth: float  # bytes/s, peak
    flops: dict[str, float] = field(hash=False)  # dense FLOP/s per operand dtype (never the 2:4 sparse figure)
    interconnect_bandwidth: float = 0.0  # bytes/s per direction between devices (NVLink, xGMI); 0: none
    host_bandwidth: float = 0.0  # bytes/s per direction to host memory (PCIe), for offload
    source: str = ""
    notes: str = ""
    # Streaming multiprocessors: kernels run their tiles in waves over them (calibrated kernel profiles, profile.py).
    sm_count: int = 0  # 0: not listed
    sm_source: str = ""

    def __post_init__(self):
        if self.memory_bytes <= 0 or self.memory_bandwidth <= 0:
            raise KvsimError(f"hardware {self.name}: memory size and bandwidth must be positive")
        if isinstance(self.sm_count, bool) or not isinstance(self.sm_count, int) or self.sm_count < 0:
            raise KvsimError(f"hardware {self.name}: sm_count must be a whole number of SMs")
        if not self.flops or any(v <= 0 for v in self.flops.values()):
            raise KvsimError(f"hardware {self.name}: needs a positive FLOP/s figure for at least one dtype")
        object.__setattr__(self, "flops", {canonical_dtype(k): float(v) for k, v in self.flops.items()})

    def peak_flops(self, dtype: str) -> float:
        """Dense peak for `dtype` operands. A dtype the device has no units for runs on the units it does
        have (`runs_on`): bf16 on a T4 or V100 at the fp16 rate, as frameworks cast it there."""
        return self.flops[self.runs_on(dtype)]

    def runs_on(self, dtype: str) -> str:
        """The listed dtype whose units run `dtype` operands: itself, else the next one in `_WIDER`."""
        dt = canonical_dtype(dtype)
        for candidate in (dt, *_WIDER.get(dt, ())):
            if candidate in self.flops:
                return candidate
        raise KvsimError(f"hardware {self.name} lists no FLOP/s for {dtype} (has {', '.join(self.flops)})")


_WIDER = {
    "int4": ("int8", "fp8", "fp16", "bf16", "fp32"),
    "int8": ("fp8", "fp16", "bf16", "fp32"),
    "fp8": ("fp16", "bf16", "fp32"),
    # Pre-Ampere GPUs (T4, V100) have fp16 but no bf16 tensor cores; frameworks run bf16 checkpoints in fp16 there
    # (vLLM's dtype=auto picks fp16; weights.on_device says so in a note). Without either, the fp32 units.
    "bf16": ("fp16", "fp32"),
    "fp16": ("bf16", "fp32"),
    "tf32": ("fp32",),
    "fp32": ("tf32",),
}
