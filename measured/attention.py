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

from .decode import attend, prefix_values, raw_page

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
    """Point the model's attention modules at kvsim's attention (transformers' own switch), and its weight
    matmuls at the native skinny matmul for decode steps (measured/linear.py)."""
    from .linear import native_matmuls

    register()
    if getattr(model.config, "_attn_implementation", None) != NAME:
        model.set_attn_implementation(NAME)
    native_matmuls(model)


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
    """Causal attention over the prompt. q [B, H, t, D], k/v [B, Hkv, t, D] -> [B, H, t, Dv]. Grouped-query:
    KV heads are never expanded (SDPA's enable_gqa; the explicit path puts each group's queries in rows)."""
    if softcap:
        return _explicit(q, k, v, scale, causal_mask(q.shape[2], window, q.device), softcap)
    gqa = q.shape[1] != k.shape[1]
    if window and window < q.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(q.shape[2], window, q.device),
                                              scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)


def _explicit(q, k, v, scale, mask, softcap):
    b, h, t, d = q.shape
    hkv = k.shape[1]
    s = scores(q.reshape(b, hkv, h // hkv, t, d), k, scale, softcap)  # [B, Hkv, G, t, t]
    s = s.masked_fill(~mask, float("-inf"))
    out = torch.matmul(s.softmax(-1).reshape(b, hkv, -1, t), v.float())  # [B, Hkv, G*t, Dv]
    return out.reshape(b, h, t, -1).to(q.dtype)


def scores(q, k, scale: float, softcap) -> torch.Tensor:
    """Attention logits of grouped queries q [B, Hkv, G, t, D] against keys k [B, Hkv, n, D] ->
    [B, Hkv, G, t, n] in float32. A group's queries are rows of one matmul per KV head: K is never expanded."""
    b, hkv, g, t, d = q.shape
    s = torch.matmul(q.reshape(b, hkv, g * t, d), k.transpose(-1, -2)).float().view(b, hkv, g, t, -1) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    return s


def decode_step(q, sources, k_new, v_new, scale: float, softcap, bias=None, index=None, probs: bool = False,
                sinks=None):
    """One decode step of a head group: grouped queries q [B, Hg, G, D] against what the group stores, as
    `sources` [(store, pages), ...] in storage order, plus the new token k_new/v_new [B, Hg, 1, D], which is read
    at full precision. `bias` [B, Hg, n] is added to the logits of stored tokens, `index` [B, Hg, m] (ascending)
    reads only those stored tokens. Returns (out [B, Hg, G, Dv] at q's dtype, probs over the stored tokens read
    [B, Hg, G, n or m] and of the new token [B, Hg, G, 1], both float32 and None unless `probs`). `sinks`
    [Hg, G]: logits of a sink per query head that takes probability and gives no value (gpt-oss)."""
    new = raw_page(k_new, v_new)
    live = [(s, p) for s, p in sources if p]
    stored = sum(pg.k.n for _, pages in live for pg in pages)
    if all(s.native for s, _ in live) and sinks is None:  # one pass over every page, the new token last
        pages = [pg for _, ps in live for pg in ps] + [new]
        if index is not None:
            index = torch.cat([index, index.new_full((*index.shape[:2], 1), stored)], -1)
        out, lse, logits = attend(q, pages, scale, softcap, bias, index, probs)
    else:  # stores in their own coordinates: one pass each, merged by their log-sum-exp
        if index is not None and len(live) > 1:  # no per-source split of a selection: read full-width copies
            kv = [s.kv() for s, _ in live]
            live = [(_Copy, [raw_page(torch.cat([k for k, _ in kv], 2), torch.cat([v for _, v in kv], 2))])]
        parts, offset = [], 0
        for store, pages in live:
            n = sum(pg.k.n for pg in pages)
            b = None if bias is None else bias[..., offset:offset + n]
            o, lse, lg = attend(store.query(q), pages, scale, softcap, b, index, probs)
            parts.append((store.output(o).float(), lse, lg))
            offset += n
        parts.append(attend(q, [new], scale, softcap, None, None, probs))
        if sinks is not None:  # a value-less term of the softmax: output 0, log-sum-exp its logit
            lse_sink = sinks.float().expand(*q.shape[:3])
            parts.append((torch.zeros_like(parts[-1][0]), lse_sink, None))
        out, lse, logits = merge(parts)
    out = out.to(q.dtype)
    if not probs:
        return out, None, None
    p = torch.exp(logits - lse.unsqueeze(-1))
    return out, p[..., :-1], p[..., -1:]


def shared_value_sources(sources, dim: int):
    """`sources` of a layout whose values are the first `dim` elements of its keys (MLA's latent). Pages in the
    model's coordinates read their values in place; a store in its own coordinates (a low-rank basis) has no
    such prefix, so its keys are materialised once and their prefix read from that copy."""
    out = []
    for store, pages in sources:
        if not pages:
            out.append((store, pages))
        elif store.native:
            out.append((store, [prefix_values(pg, dim) for pg in pages]))
        else:
            k = store.keys()
            out.append((_Copy, [raw_page(k, k[..., :dim])]))
    return out


class _Copy:
    """Stands for materialised full-width K and V (model coordinates)."""

    native = True

    @staticmethod
    def query(q):
        return q

    @staticmethod
    def output(o):
        return o


def merge(parts):
    """Attention over disjoint token sets, each as (out, lse, logits or None), combined into one softmax."""
    lse = torch.logsumexp(torch.stack([p[1] for p in parts]), 0)
    out = sum(o * torch.exp(l - lse).unsqueeze(-1) for o, l, _ in parts)
    logits = None if parts[0][2] is None else torch.cat([p[2] for p in parts if p[2] is not None], -1)
    return out, lse, logits


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
