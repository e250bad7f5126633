"""A decode step's weight matmuls without the BLAS's per-call weight packing.

torch's linear hands a matmul of a few rows to a BLAS sgemm, which copies the weight into its own tile layout
on every call: a decode step of 2-16 sequences then reads and writes every weight two or three times, and the
output head of a large vocabulary dominates the step (SmolLM2's 113 MB head: 22 ms through torch's linear at 8
rows, 3.6 ms of memory traffic). No serving engine pays that (llama.cpp and vLLM's CPU backend run their own
kernels over weights laid out once), so on the CPU the harness runs those matmuls in measured/decode.c, reading
each weight row once where it lies. `native_matmuls(model)` swaps each `nn.Linear` of a model for a
`NativeLinear` that shares its parameters (ties and state-dict names unchanged; no model class is modified),
and each of transformers' `Conv1D` (GPT-2's projections: x @ weight[in, out]) for a `NativeConv1D`, whose same
parameter is laid out once as [out, in] in memory (its shape unchanged) so that decode.c reads it row by row;
rows beyond MAX_ROWS (a prefill) and other dtypes or devices go to torch as before.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .decode import linear, use_native

MAX_ROWS = 16  # decode steps; a prefill's thousands of rows are a compute-bound GEMM the BLAS does well


def _native(x: torch.Tensor, w: torch.Tensor, bias) -> bool:
    """Whether decode.c's skinny matmul takes x @ w[n, k]^T (+ bias): a decode step's few fp32 rows against a
    row-major fp32 weight."""
    return (x.numel() <= MAX_ROWS * x.shape[-1] and x.dtype == torch.float32 and w.dtype == torch.float32
            and w.stride(-1) == 1 and use_native(x.device)
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous())))


class NativeLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _native(x, self.weight, self.bias):
            return linear(x, self.weight, self.bias)
        return super().forward(x)


class NativeConv1D(Conv1D):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.t()  # [out, in], row-major once native_matmuls has laid the parameter out
        if _native(x, w, self.bias):
            return linear(x, w, self.bias)
        return super().forward(x)


def native_matmuls(model: nn.Module) -> None:
    """Swap every plain `nn.Linear` of `model` for a NativeLinear and every `Conv1D` for a NativeConv1D over the
    same parameters (idempotent); each call still asks decode.use_native, so KVSIM_ATTENTION=torch runs torch's
    matmuls."""
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Linear:
            new = NativeLinear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
        elif type(mod) is Conv1D:
            with torch.device("meta"):
                new = NativeConv1D(mod.nf, mod.nx)
            # the same parameter (ties kept), its [in, out] values stored column-major: weight.t() is row-major
            mod.weight.data = mod.weight.data.t().contiguous().t()
        else:
            continue
        new.weight, new.bias = mod.weight, mod.bias
        model.set_submodule(name, new)
