"""The explicit prefill + decode loop: greedy decoding with explicit positions, timed and measured.

CPU: time.perf_counter around each forward; CUDA: events around each forward, read after the run.
Peak memory per phase is torch.cuda.max_memory_allocated after a reset at the start of the phase (GPU only).
Warm-up runs are not timed; results over repeats are medians.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from .attention import active, prepare
from .cache import KvsimCache


@dataclass
class Request:
    """One timed request."""

    ttft_s: float
    steps_s: list[float]
    tokens: torch.Tensor  # [B, gen] generated ids
    bytes_prefill: dict
    bytes_end: dict
    policy_prefill_s: float
    policy_decode_s: float
    peak_prefill: int | None = None
    peak_decode: int | None = None

    @property
    def tpot_s(self) -> float:
        return statistics.median(self.steps_s) if self.steps_s else float("nan")


@dataclass
class Measurement:
    requests: list[Request] = field(default_factory=list)

    def median(self, key: str) -> float:
        return self.median_of(lambda r: getattr(r, key))

    def median_of(self, fn) -> float:
        vals = [fn(r) for r in self.requests]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else float("nan")


class _Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list = []

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, start) -> object:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return (start, ev)
        return time.perf_counter() - start

    def seconds(self, mark) -> float:
        if self.cuda:
            a, b = mark
            b.synchronize()
            return a.elapsed_time(b) / 1e3
        return mark


class Session:
    """A model, a fresh KvsimCache and the next position: prefill once, then one token per step."""

    def __init__(self, model, policy, scorer_state=None):
        prepare(model)
        self.model = model
        self.cache = KvsimCache(model, policy, scorer_state)
        self.pos = 0

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        pos = torch.arange(self.pos, self.pos + t, device=ids.device).expand(b, -1)
        with active(self.cache):
            logits = self.model(input_ids=ids, position_ids=pos, cache=self.cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1]
        self.pos += t
        return logits

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] after the prompt ids [B, p]."""
        logits = self._forward(ids)
        self.cache.finish_prefill()
        return logits

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] after feeding one token per sequence [B]."""
        return self._forward(token[:, None])


def run_request(model, policy, input_ids: torch.Tensor, gen: int, scorer_state=None) -> Request:
    """Prefill `input_ids` [B, p], then gen - 1 greedy decode steps; time and measure each phase."""
    device = input_ids.device
    sess = Session(model, policy, scorer_state)
    cache = sess.cache
    timer = _Timer(device)
    cuda = device.type == "cuda"
    out = []
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = timer.start()
        nxt = sess.prefill(input_ids).argmax(-1)
        mark = timer.stop(t0)
        out.append(nxt)
        peak_prefill = torch.cuda.max_memory_allocated() if cuda else None
        bytes_prefill = cache.physical_bytes()
        policy_prefill = cache.policy_seconds()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        marks = []
        for _ in range(gen - 1):
            t = timer.start()
            nxt = sess.step(nxt).argmax(-1)
            marks.append(timer.stop(t))
            out.append(nxt)
        peak_decode = torch.cuda.max_memory_allocated() if cuda and gen > 1 else None
        ttft = timer.seconds(mark)
        steps = [timer.seconds(m) for m in marks]
        bytes_end = cache.physical_bytes()
        policy_total = cache.policy_seconds()
    return Request(ttft, steps, torch.stack(out, 1), bytes_prefill, bytes_end, policy_prefill,
                   (policy_total - policy_prefill) / max(1, gen - 1), peak_prefill, peak_decode)


def measure(model, policy, input_ids, gen: int, repeats: int = 3, warmup: int = 1, scorer_state=None) -> Measurement:
    """Warm up on a short request, then time `repeats` full requests (each with a fresh cache)."""
    for _ in range(warmup):
        run_request(model, policy, input_ids[:, : min(16, input_ids.shape[1])], min(gen, 4), scorer_state)
    m = Measurement()
    for _ in range(repeats):
        m.requests.append(run_request(model, policy, input_ids, gen, scorer_state))
    return m
