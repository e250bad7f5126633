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

Routed experts are no nn.Linear: transformers 5 keeps each MoE layer's experts as stacked [experts, out, in]
parameters and runs them through its `grouped_mm` experts implementation, which on the CPU hands each expert's
rows to the BLAS and so packs the expert's weight on every call too (Mixtral's shape, one decode step of 8
sequences: its experts' weights stream at about 9.5 GB/s against 34 for one row). `native_matmuls` therefore
also selects `native_experts_forward` for them: the same grouped computation, each hit expert's weight read once
by decode.c's grouped skinny matmul (an eager loop over the experts instead costs Qwen3-Next's 128 small experts
1.5-2.4x grouped_mm's step time in Python and launches).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .decode import grouped_linear, linear, use_native

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


EXPERTS = "kvsim_native"  # the experts implementation native_matmuls registers and selects


def _row_major(w: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Stacked expert weights as [experts, out, in]: as stored, or the transpose of [experts, in, out]
    (`is_transposed`: gpt-oss), which native_experts lays out once so that this view has contiguous rows."""
    return w.transpose(-1, -2) if transposed else w


def native_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' grouped experts (its `grouped_mm` path: the (token, expert) pairs sorted by expert, every
    expert's rows through the gate-up projection in one grouped matmul, gated, the down projection likewise,
    weighted by the router scores and summed per token), with decode.c's grouped skinny matmul for a decode
    step's rows; transformers' grouped_mm itself for more rows (a prefill), other dtypes, or where
    decode.use_native says torch (KVSIM_ATTENTION=torch)."""
    from transformers.integrations.moe import grouped_mm_experts_forward

    up, up_bias = (self.gate_up_proj, "gate_up_proj_bias") if self.has_gate else (self.up_proj, "up_proj_bias")
    weights = (_row_major(up, self.is_transposed), _row_major(self.down_proj, self.is_transposed))
    biases = (getattr(self, up_bias), self.down_proj_bias) if self.has_bias else (None, None)
    if not (hidden_states.shape[0] <= MAX_ROWS and use_native(hidden_states.device)
            and hidden_states.dtype == torch.float32
            and all(w.dtype == torch.float32 and w.stride(-1) == 1 for w in weights)
            and all(b is None or (b.dtype == torch.float32 and b.stride(-1) == 1) for b in biases)):
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    tokens, k = top_k_index.shape
    expert_ids = top_k_index.reshape(-1)
    order = torch.argsort(expert_ids, stable=True)  # an expert-parallel sentinel (>= num_experts) sorts last
    ends = torch.cumsum(torch.bincount(expert_ids[expert_ids < self.num_experts], minlength=self.num_experts), 0)
    h = grouped_linear(hidden_states[order // k], ends, weights[0], biases[0])
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
    y = grouped_linear(h, ends, weights[1], biases[1])
    if self.has_post_expert_norm:
        y = self.post_expert_norm(y)
    weighted = torch.empty_like(y)
    weighted[order] = y * top_k_weights.reshape(-1)[order, None]
    return weighted.view(tokens, k, -1).sum(dim=1).to(hidden_states.dtype)


def _experts_modules(model: nn.Module) -> list[nn.Module]:
    """The stacked-experts modules of transformers' `use_experts_implementation` classes."""
    return [m for m in model.modules() if hasattr(m, "is_transposed") and hasattr(m, "has_gate")
            and isinstance(getattr(m, "down_proj", None), nn.Parameter)]


def native_experts(model: nn.Module) -> None:
    """Run `model`'s routed experts through native_experts_forward (idempotent): registered as transformers'
    experts implementation EXPERTS and selected, with [in, out] weights laid out once as [out, in] in memory
    (their shapes and parameters unchanged)."""
    experts = _experts_modules(model)
    if not experts:
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    ALL_EXPERTS_FUNCTIONS.register(EXPERTS, native_experts_forward)
    for mod in experts:
        if mod.is_transposed:
            for p in mod.parameters(recurse=False):
                if p.dim() == 3 and not p.data.transpose(-1, -2).is_contiguous():
                    p.data = p.data.transpose(-1, -2).contiguous().transpose(-1, -2)
    if getattr(model.config, "_experts_implementation", None) != EXPERTS:
        model.set_experts_implementation(EXPERTS)


def native_matmuls(model: nn.Module) -> None:
    """Swap every plain `nn.Linear` of `model` for a NativeLinear and every `Conv1D` for a NativeConv1D over the
    same parameters, and run its routed experts through native_experts (idempotent); each call still asks
    decode.use_native, so KVSIM_ATTENTION=torch runs torch's matmuls."""
    native_experts(model)
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
