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


def sink_decode_attention(q, k, v, k_new, v_new, scale: float, softcap, bias, sinks):
    """decode_attention (attention.py) with sink logits [Hg, G] per query head: the same returns, with every
    probability over stored and new tokens normalised against the sink too (they sum to less than one)."""
    sink = sinks.float()[None, :, :, None, None]
    s_new = (q * k_new.unsqueeze(2)).sum(-1, keepdim=True).float() * scale
    if softcap:
        s_new = torch.tanh(s_new / softcap) * softcap
    if k is None or k.shape[2] == 0:
        m = torch.maximum(s_new, sink)
        e_new = torch.exp(s_new - m)
        p_new = e_new / (e_new + torch.exp(sink - m))
        return p_new.to(v_new.dtype) * v_new.unsqueeze(2), None, p_new
    s = scores(q, k, scale, softcap)
    if bias is not None:
        s = s + bias[:, :, None, None, :]
    m = torch.maximum(torch.maximum(s.amax(-1, keepdim=True), s_new), sink)
    e = torch.exp(s - m)
    e_new = torch.exp(s_new - m)
    z = e.sum(-1, keepdim=True) + e_new + torch.exp(sink - m)
    p, p_new = e / z, e_new / z
    out = torch.matmul(p.to(v.dtype), v.unsqueeze(2)) + p_new.to(v.dtype) * v_new.unsqueeze(2)
    return out, p, p_new
