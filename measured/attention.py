"""The attention function the harness registers with transformers, and the attention arithmetic.

transformers calls `kvsim_attention(module, q, k, v, mask, scaling=..., **kw)` from every attention module
once the model's attention implementation is set to "kvsim". Because "kvsim" has no mask function
registered, transformers builds no mask: causality and sliding windows are applied here, where the cache
knows what each stored token is. The active cache is found through a context variable set by the decode
loop, so the model classes are never modified.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F

ACTIVE: contextvars.ContextVar = contextvars.ContextVar("kvsim_active_cache")
NAME = "kvsim"


def kvsim_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    cache = ACTIVE.get(None)
    if cache is None:
        raise RuntimeError("kvsim attention called outside measured.attention.active(cache)")
    layer = cache.layers[module.layer_idx]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None) or 0
    softcap = kwargs.get("softcap") or getattr(getattr(module, "config", None), "attn_logit_softcapping", None)
    # gpt-oss passes its sink logits as s_aux; MLA's latent layer absorbs with the module's kv_b_proj (mla.py)
    out = layer.attend(query, key, value, scale, int(window or 0), softcap, sinks=kwargs.get("s_aux"), module=module)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface
    AttentionInterface.register(NAME, kvsim_attention)


def prepare(model) -> None:
    """Point the model's attention modules at kvsim's attention (transformers' own switch)."""
    register()
    if getattr(model.config, "_attn_implementation", None) != NAME:
        model.set_attn_implementation(NAME)


@contextlib.contextmanager
def active(cache):
    token = ACTIVE.set(cache)
    try:
        yield cache
    finally:
        ACTIVE.reset(token)


def causal_mask(t: int, window: int, device) -> torch.Tensor:
    """[t, t] boolean: query i sees key j when j <= i (and i - j < window for a sliding layer)."""
    i = torch.arange(t, device=device)
    m = i[:, None] >= i[None, :]
    if window:
        m &= (i[:, None] - i[None, :]) < window
    return m


def prefill_attention(q, k, v, scale: float, window: int, softcap) -> torch.Tensor:
    """Causal attention over the prompt. q [B, H, t, D], k/v [B, Hkv, t, D] -> [B, H, t, Dv]."""
    group = q.shape[1] // k.shape[1]
    if softcap:
        return _explicit(q, k, v, scale, causal_mask(q.shape[2], window, q.device), softcap)
    kk = k.repeat_interleave(group, 1) if group > 1 else k
    vv = v.repeat_interleave(group, 1) if group > 1 else v
    if window and window < q.shape[2]:
        return F.scaled_dot_product_attention(q, kk, vv, attn_mask=causal_mask(q.shape[2], window, q.device),
                                              scale=scale)
    return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=scale)


def _explicit(q, k, v, scale, mask, softcap):
    group = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(group, 1)
    vv = v.repeat_interleave(group, 1)
    s = torch.matmul(q.float(), kk.float().transpose(-1, -2)) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(s.softmax(-1), vv.float()).to(q.dtype)


def scores(q, k, scale: float, softcap) -> torch.Tensor:
    """Attention logits of grouped queries q [B, Hkv, G, t, D] against keys k [B, Hkv, n, D] ->
    [B, Hkv, G, t, n] in float32."""
    s = torch.matmul(q, k.unsqueeze(2).transpose(-1, -2)).float() * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    return s


def decode_attention(q, k, v, k_new, v_new, scale: float, softcap, bias=None):
    """One decode step for a head group: q [B, Hg, G, 1, D] against stored k/v [B, Hg, n, D] plus the new
    token's k_new/v_new [B, Hg, 1, D]. Returns (out [B, Hg, G, 1, Dv], probs over stored [B, Hg, G, 1, n],
    prob of the new token [B, Hg, G, 1, 1]). `bias` [B, Hg, n] is added to stored logits (log counts of
    merged tokens)."""
    s_new = (q * k_new.unsqueeze(2)).sum(-1, keepdim=True).float() * scale
    if softcap:
        s_new = torch.tanh(s_new / softcap) * softcap
    if k is None or k.shape[2] == 0:
        return v_new.unsqueeze(2).expand(*q.shape[:-1], v_new.shape[-1]).to(q.dtype), None, torch.ones_like(s_new)
    s = scores(q, k, scale, softcap)
    if bias is not None:
        s = s + bias[:, :, None, None, :]
    m = torch.maximum(s.amax(-1, keepdim=True), s_new)
    e = torch.exp(s - m)
    e_new = torch.exp(s_new - m)
    z = e.sum(-1, keepdim=True) + e_new
    p, p_new = e / z, e_new / z
    out = torch.matmul(p.to(v.dtype), v.unsqueeze(2)) + p_new.to(v.dtype) * v_new.unsqueeze(2)
    return out, p, p_new


def window_votes(q, k, scale: float, window_queries: int, span: int, softcap) -> torch.Tensor:
    """Attention of the last `window_queries` prompt queries over all prompt keys, summed over those
    queries and over each KV head's query heads: [B, Hkv, t] (float32). Causal and span-limited."""
    b, h, t, d = q.shape
    hkv = k.shape[1]
    w = min(window_queries, t)
    qg = q[:, :, t - w:].reshape(b, hkv, h // hkv, w, d)
    s = scores(qg, k, scale, softcap)
    qpos = torch.arange(t - w, t, device=q.device)[:, None]
    kpos = torch.arange(t, device=q.device)[None, :]
    ok = kpos <= qpos
    if span:
        ok &= (qpos - kpos) < span
    s = s.masked_fill(~ok, float("-inf"))
    return s.softmax(-1).sum(dim=(2, 3))


def column_sums(q, k, scale: float, span: int, softcap, chunk: int = 256) -> torch.Tensor:
    """Attention every prompt key receives from every prompt query (H2O's accumulated score), summed over
    each KV head's query heads: [B, Hkv, t]. Queries are processed in chunks: no t x t matrix is held."""
    b, h, t, d = q.shape
    hkv = k.shape[1]
    out = torch.zeros(b, hkv, t, device=q.device, dtype=torch.float32)
    kpos = torch.arange(t, device=q.device)[None, :]
    for start in range(0, t, chunk):
        stop = min(t, start + chunk)
        qg = q[:, :, start:stop].reshape(b, hkv, h // hkv, stop - start, d)
        s = scores(qg, k, scale, softcap)
        qpos = torch.arange(start, stop, device=q.device)[:, None]
        ok = kpos <= qpos
        if span:
            ok &= (qpos - kpos) < span
        out += s.masked_fill(~ok, float("-inf")).softmax(-1).sum(dim=(2, 3))
    return out
