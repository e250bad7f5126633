"""Kernels a model's decoder layers launch per pass in the harness, counted: the check on kvsim's eager kernel
counts (kvsim.model.layer_kernels), whose fixed cost per launch (Profile.kernel_overhead_s) is most of a small
model's CPU decode step.

A kernel here is an aten op that computes or allocates: views, reshapes and casts that hand back their input's
storage launch nothing and are not counted; in-place ops are. The harness's native matmuls and attention run
through ctypes, not aten, and each shows up as the one allocation of its output.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .loop import Session


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and not func.__name__.split(".")[0].endswith("_"):
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            if first.untyped_storage().data_ptr() in inputs:
                return out  # a view or a no-op cast: its input's storage, no kernel
        self.ops[str(func)] += 1
        return out


def decoder_layers(model) -> list:
    """The model's decoder layers in order (`model.layers`, Mamba's `backbone.layers`, GPT-2's `transformer.h`)."""
    base = getattr(model, "model", None) or getattr(model, "backbone", None) or getattr(model, "transformer")
    return list(getattr(base, "layers", None) or base.h)


def layer_kernels(model, policy, prompt: int, batch: int = 1) -> tuple[list[int], list[int]]:
    """Kernels each decoder layer launches in the prefill of `prompt` tokens and in the decode step after it."""
    layers = decoder_layers(model)
    counter = _Count()
    counts: list[int] = []
    marks: dict[int, int] = {}

    def before(mod, *_):
        marks[id(mod)] = sum(counter.ops.values())

    def after(mod, *_):
        counts.append(sum(counter.ops.values()) - marks.pop(id(mod)))

    hooks = [h for layer in layers for h in (layer.register_forward_pre_hook(before),
                                              layer.register_forward_hook(after))]
    try:
        sess = Session(model, policy)
        ids = torch.randint(0, 100, (batch, prompt))
        with torch.inference_mode(), counter:
            token = sess.prefill(ids).argmax(-1)
            prefill, counts[:] = counts[:], []
            sess.step(token)
    finally:
        for h in hooks:
            h.remove()
    return prefill, counts
