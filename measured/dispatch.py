"""Kernels a model's decoder layers launch per pass in the harness, counted: the check on kvsim's eager kernel
counts (kvsim.model.layer_kernels), whose fixed cost per launch (Profile.kernel_overhead_s) is most of a small
model's CPU decode step.

A kernel here is an aten op that computes or allocates: views, reshapes and casts that hand back their input's
storage launch nothing and are not counted; in-place ops are. The harness's native matmuls and attention run
through ctypes, not aten, and each shows up as the one allocation of its output.

    python -m measured.dispatch MODEL [--prompt N]

prints each decoder layer's counted kernels beside kvsim's, in the prefill and the decode step after it (MODEL: a
preset name or a config.json, random weights): where a new architecture's count is off.
"""

from __future__ import annotations

import sys
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kvsim.cost import scan_launches
from kvsim.model import ModelSpec
from kvsim.model import layer_kernels as kvsim_layer

from .loop import Session


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and not func.__name__.split(".")[0].endswith("_"):
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            if first.untyped_storage().data_ptr() in inputs:
                return out  # a view or a no-op cast: its input's storage, no kernel
        self.kernels += 1
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
        marks[id(mod)] = counter.kernels

    def after(mod, *_):
        counts.append(counter.kernels - marks.pop(id(mod)))

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


def predicted(spec: ModelSpec, prompt: int) -> tuple[list[int], list[int]]:
    """kvsim's kernels per layer for the prefill of `prompt` tokens (with the launches a stepped Mamba-1 scan and
    the delta rule's chunk loop add per token and per chunk, which the cost model prices beside those scans) and
    for a decode step."""
    rope = spec.learned_positions == 0
    prefill, decode = [], []
    for layer in spec.layers:
        grows = int(scan_launches(layer.mixer, prompt))
        prefill.append(kvsim_layer(layer, spec.norm_bias, rope, prefill=True) + grows)
        decode.append(kvsim_layer(layer, spec.norm_bias, rope))
    return prefill, decode


def main(argv=None) -> int:
    from kvsim.cliargs import Parser, whole
    from kvsim.errors import KvsimError
    from kvsim.hf import from_hf_config
    from kvsim.policies import parse_composition

    from .models import build_random, hf_config
    ap = Parser(prog="python -m measured.dispatch", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="preset name or config.json path")
    ap.add_argument("--prompt", type=whole("--prompt", 1, 4096), default=64, help="prompt tokens")
    try:
        a = ap.parse_args(argv)
        spec = from_hf_config(hf_config(a.model))
        model = build_random(a.model)
    except KvsimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    counted = layer_kernels(model, parse_composition([]), a.prompt)
    print(f"{'layer':>5} {'mixer':<15} {'prefill':>7} {'kvsim':>6} {'decode':>7} {'kvsim':>6}")
    for i, (layer, cp, cd, kp, kd) in enumerate(zip(spec.layers, *counted, *predicted(spec, a.prompt))):
        print(f"{i:>5} {type(layer.mixer).__name__:<15} {cp:>7} {kp:>6} {cd:>7} {kd:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
