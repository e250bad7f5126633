"""Attention with learned sinks (gpt-oss): one extra logit per query head in the softmax denominator, with no
value and no cached token. transformers hands it to attention functions as `s_aux`; the cache holds exactly
what it would without sinks, so they change the arithmetic here and no byte.
"""

from __future__ import annotations

import torch

from .attention import causal_mask, scores


def sink_prefill_attention(q, k, v, scale: float, window: int, sinks, chunk: int = 256) -> torch.Tensor:
    """Causal (and windowed) attention of q [B, H, t, D] over k/v [B, Hkv, t, D] with sink logits [H]:
    [B, H, t, Dv]. Queries in chunks, so no t x t matrix for all heads at once."""
    b, h, t, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    mask = causal_mask(t, window, q.device)
    sink = sinks.float().view(1, hkv, g, 1, 1)
    outs = []
    for start in range(0, t, chunk):
        stop = min(t, start + chunk)
        qg = q[:, :, start:stop].reshape(b, hkv, g, stop - start, d)
        s = scores(qg, k, scale, None).masked_fill(~mask[start:stop], float("-inf"))  # [B, Hkv, G, c, t]
        m = torch.maximum(s.amax(-1, keepdim=True), sink)
        e = torch.exp(s - m)
        p = e / (e.sum(-1, keepdim=True) + torch.exp(sink - m))
        outs.append(torch.matmul(p.to(v.dtype), v.unsqueeze(2)))
    return torch.cat(outs, 3).reshape(b, h, t, v.shape[-1])
