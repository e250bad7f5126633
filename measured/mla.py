"""MLA (DeepSeek-V2/V3) with the latent cache vLLM and SGLang keep: per token and layer, the normalised
compressed latent c (kv_lora_rank) and the decoupled RoPE key (qk_rope_head_dim), one vector shared by every
query head. Decode steps absorb the up-projection kv_b_proj = [W_UK; W_UV] per head:

    score_h(j) = q_nope_h . (W_UK_h c_j) + q_pe_h . k_pe_j = (W_UK_h^T q_nope_h) . c_j + q_pe_h . k_pe_j
    out_h      = W_UV_h (sum_j p_hj c_j)

so the step attends over [c | k_pe] with a query of the same width (multi-query attention with group n_heads,
values read from the first kv_lora_rank elements of each key: kvsim's latent KVLayout) and never forms a
per-head K or V of a cached token. The prompt is attended per head with the decompressed K and V the model's
own forward computes (as the engines do at prefill); only the latent is kept.

No model class is patched: transformers' DeepSeek attention calls `cache.update(latent, k_pe)` before it
expands them, so the layer sees the latent there, and the registered attention function (attention.py) hands
over the attention module, whose kv_b_proj weights do the absorption. The model still expands the new token's
K and V (one token's worth of kv_b_proj per step) before calling attention; that output goes unused.
"""

from __future__ import annotations

import torch

from kvsim.policies.full import Full
from kvsim.policies.window import StreamingLLM, Window

from .attention import prefill_attention
from .cache import KvsimLayer
from .executors import Prompt


class LatentLayer(KvsimLayer):
    """A KvsimLayer whose stored 'key' is [latent | k_pe] ([B, 1, t, c + r]) and which has no values of its own."""

    def __init__(self, *args, mla=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mla = mla  # kvsim.model.MLA
        self.latent: torch.Tensor | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        # DeepSeek's attention passes the normalised latent [B, 1, t, c] and the roped key [B, 1, t, r]
        self.latent = torch.cat([key_states, value_states], -1)
        return super().update(key_states, value_states, *args, **kwargs)

    def _absorbed(self, module):
        """(W_UK [H, nope, c], W_UV [H, v, c]) from the module's kv_b_proj (c -> H x (nope + v), no bias)."""
        m = self.mla
        w = module.kv_b_proj.weight.view(m.n_heads, m.qk_nope_head_dim + m.v_head_dim, m.kv_lora_rank)
        return w[:, :m.qk_nope_head_dim], w[:, m.qk_nope_head_dim:]

    def _query(self, q, w_uk):
        """The absorbed query [B, H, t, c + r]: W_UK_h^T q_nope_h beside the roped q_pe_h."""
        nope = self.mla.qk_nope_head_dim
        return torch.cat([torch.einsum("bhtd,hdc->bhtc", q[..., :nope], w_uk), q[..., nope:]], -1)

    def attend(self, q, k, v, scale: float, window: int, softcap, sinks=None, module=None) -> torch.Tensor:
        if module is None or self.latent is None:
            raise RuntimeError("the latent MLA cache needs the attention module and the latent from cache.update")
        lat, self.latent = self.latent, None
        w_uk, w_uv = self._absorbed(module)
        none = lat.new_zeros(*lat.shape[:-1], 0)  # no values of their own: they are the latent itself
        if self.seen == 0:
            out = prefill_attention(q, k, v, scale, window, softcap)  # per head, on the decompressed prompt
            # scoring policies see the absorbed query against the latent: the same logits as per-head attention
            needs_q = not isinstance(self.policy.select, (Full, Window, StreamingLLM)) or self.policy.reader is not None
            self.plan_prompt(Prompt(self._query(q, w_uk) if needs_q else q, lat, none, scale, 0, softcap))
            return out
        if q.shape[2] != 1:
            raise RuntimeError("the harness feeds one token per decode step (no chunked prefill)")
        out_latent = self.decode(self._query(q, w_uk), lat, none, scale, softcap)  # [B, H, 1, c]
        return torch.einsum("bhtc,hvc->bhtv", out_latent, w_uv)
