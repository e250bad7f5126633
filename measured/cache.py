"""A transformers Cache whose layers execute a kvsim policy composition.

`KvsimCache(model, policy)` builds one cache layer per layer from kvsim's own view of the model (the same
`layer_contexts` the cost model uses), so per-layer budgets, merged pairs and offloaded layers are the ones
kvsim predicts: a `KvsimLayer` for attention (mla.py's `LatentLayer` for MLA's latent form), and a recurrent.py
`StateLayer` for Mamba and linear-attention layers, whose state no eviction touches. A layer's `update` only hands the new K and V through; the registered attention function
(attention.py) calls `attend`, which computes attention over what the layer holds and then lets the policy
insert and evict. `physical_bytes()` counts the unique storages the layers hold.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvsim.cost import layer_contexts
from kvsim.hf import from_hf_config
from kvsim.model import MLA, LinearAttention, Mamba
from kvsim.policies.compose import Compose
from kvsim.policies.learned import Learned
from kvsim.policies.pyramid import DynamicKV
from kvsim.units import DTYPE_BITS

from .attention import decode_step, prefill_attention, shared_value_sources
from .decode import Page
from .encoding import Encoder, quant_store
from .executors import Group, Pages, Prompt, Rule, gather, plan, split_layer_budgets, top_sorted
from .sinks import sink_prefill_attention
from .stores import physical_bytes

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class PolicyClock:
    """Time spent in policy work (scoring, selection, eviction, (de)quantisation). On CUDA it records event
    pairs and sums them at the end, so timing adds no synchronisation to the step."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self.events: list = []

    def __enter__(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((self._start, end))
        else:
            self.seconds += time.perf_counter() - self._t

    def total(self) -> float:
        if self.events:
            torch.cuda.synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self.events) / 1e3
            self.events.clear()
        return self.seconds


class Merged:
    """MiniCache's shared part of a layer pair: one direction per token and head, four magnitudes."""

    def __init__(self, store, mags: torch.Tensor):
        self.store, self.mags = store, mags  # mags [B, H, m, 4]: |K_a|, |V_a|, |K_b|, |V_b|

    def pages(self, which: int) -> list[Page]:
        """The shared directions as layer `which` of the pair reads them: each token's row times its magnitude."""
        out, offset = [], 0
        for p in self.store.pages():
            n = p.k.n
            m = self.mags[:, :, offset:offset + n]
            out.append(Page(dataclasses.replace(p.k, rowscale=m[..., 2 * which]),
                            dataclasses.replace(p.v, rowscale=m[..., 2 * which + 1])))
            offset += n
        return out


class KvsimLayer(CacheLayerMixin):
    is_compileable = False
    is_croppable = False

    def __init__(self, cache: "KvsimCache", index: int, ctx, policy: Compose, dtype, host=None):
        super().__init__()
        self.cache, self.index, self.ctx, self.policy = cache, index, ctx, policy
        self.dtype = dtype
        self.is_sliding = bool(ctx is not None and ctx.layout.span)
        self.groups: list[Group] = []
        self.seen = 0
        self.prompt = 0
        self.encoder = Encoder(policy, dtype)
        self.scorer_weights: list[torch.Tensor] = []
        self.host = host  # offloaded layers keep their stores here and stream them in every step

    # -- transformers' cache layer API
    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.groups, self.seen, self.prompt = [], 0, 0

    # -- what planners use
    def new_group(self, heads: torch.Tensor | None, n_heads: int) -> Group:
        dk, dv = self.ctx.layout.k_dim, self.ctx.layout.v_dim
        grp = Group(heads, n_heads, self.encoder.store(heads, dk, dv), Rule())
        if self.policy.reader is not None:
            grp.pages = Pages(self.policy.reader.page, self.policy.reader.budget)
        return grp

    def scorer(self, k: torch.Tensor) -> torch.Tensor:
        """The learned scorer: key [..., d] -> score [...] (float32)."""
        w1, b1, w2, b2 = self.scorer_weights
        return (torch.relu(k.float() @ w1 + b1) @ w2 + b2).squeeze(-1)

    def _init_scorer(self, d: int, device) -> None:
        pol = self.policy.select
        trained = self.cache.scorer_state.get(self.index)
        if trained is not None:
            self.scorer_weights = [t.to(device) for t in trained]
            return
        g = torch.Generator().manual_seed(1000 + self.index)
        h = pol.hidden
        self.scorer_weights = [(torch.randn(d, h, generator=g) / math.sqrt(d)).to(device),
                               torch.zeros(h, device=device),
                               (torch.randn(h, 1, generator=g) / math.sqrt(h)).to(device),
                               torch.zeros(1, device=device)]

    # -- attention
    def attend(self, q, k, v, scale: float, window: int, softcap, sinks=None, module=None) -> torch.Tensor:
        """Attention of q [B, H, t, D] over what the layer holds plus the new k/v [B, Hkv, t, D]: the prompt's
        causal attention and the policy's plan for it, or one decode step. `sinks`: per query head sink logits
        (gpt-oss); `module`: the model's attention module (unused here; see mla.py)."""
        t = q.shape[2]
        if self.seen == 0:
            out = prefill_attention(q, k, v, scale, window, softcap) if sinks is None else \
                sink_prefill_attention(q, k, v, scale, window, sinks)
            self.plan_prompt(Prompt(q, k, v, scale, self.ctx.layout.span, softcap))
            return out
        if t != 1:
            raise RuntimeError("the harness feeds one token per decode step (no chunked prefill)")
        return self.decode(q, k, v, scale, softcap, sinks)

    def plan_prompt(self, pr: Prompt) -> None:
        with self.cache.clock:
            self._prefill(pr)
        self.seen = self.prompt = pr.p

    def decode(self, q, k, v, scale: float, softcap, sinks=None) -> torch.Tensor:
        """One decode step: q [B, H, 1, D] over every group's pages, read in place, and the new token's k/v; the
        step rules then insert and evict. `sinks` [H]: per query head logits of a sink with no value. A layout
        without values of its own (MLA's latent, v_dim 0) reads its values from the first value_dim elements of
        its keys."""
        b, h, _, d = q.shape
        hkv = k.shape[1]
        clock = self.cache.clock
        pos = self.seen
        lay = self.ctx.layout
        shared_values = lay.v_dim == 0
        qg = q.view(b, hkv, h // hkv, d)  # the query heads of each KV head as rows: KV heads are never expanded
        sg = None if sinks is None else sinks.view(hkv, h // hkv)
        out = None
        for grp in self.groups:
            sel = grp.heads
            qh = qg if sel is None else qg[:, sel]
            kn = k if sel is None else k[:, sel]
            vn = v if sel is None else v[:, sel]
            want = grp.rule.needs_probs
            with clock:
                sources = grp.sources()
                if self.host is not None:  # offloaded: this step streams the layer's pages in
                    sources = [(st, [p.to(q.device) for p in pages]) for st, pages in sources]
                held = len(grp.store)
                sel_idx = grp.pages.select(qh, held) if grp.pages is not None and held else None
                bias = grp.rule.bias(grp)
                idx, shift = sel_idx, grp.merged_tokens()
                if shift and bias is not None:  # merged tokens come first and carry no bias
                    bias = torch.cat([bias.new_zeros(*bias.shape[:2], shift), bias], -1)
                if shift and idx is not None:  # merged tokens are always read
                    idx = torch.cat([torch.arange(shift, device=idx.device).expand(*idx.shape[:2], shift),
                                     idx + shift], -1)
                vr = vn  # the new token's values as read; the store keeps vn (none of its own when shared)
                if shared_values:
                    sources = shared_value_sources(sources, lay.value_dim)
                    vr = kn[..., :lay.value_dim]
            o, probs, p_new = decode_step(qh, sources, kn, vr, scale, softcap, bias, idx, want,
                                          None if sg is None else (sg if sel is None else sg[sel]))
            with clock:
                if probs is not None:  # the rules score the group's own tokens: [B, Hg, G, 1, n]
                    probs, p_new = probs[:, :, :, None, shift:], p_new[:, :, :, None, :]
                    if sel_idx is not None:
                        full = probs.new_zeros(*probs.shape[:-1], held)
                        probs = full.scatter(-1, sel_idx[:, :, None, None, :].expand(*probs.shape), probs)
                if self.host is not None:
                    kn, vn = kn.to(self.host), vn.to(self.host)
                grp.rule.step(self, grp, kn, vn, probs, p_new, pos)
            if sel is None:
                out = o
            else:
                if out is None:
                    out = o.new_zeros(b, hkv, h // hkv, o.shape[-1])
                out[:, sel] = o
        self.seen += 1
        return out.reshape(b, h, 1, -1)

    def _prefill(self, pr: Prompt) -> None:
        if self.host is not None:
            pr = Prompt(pr.q, pr.k.to(self.host), pr.v.to(self.host), pr.scale, pr.span, pr.softcap)
        self.encoder.fit(pr.k, pr.v)
        if isinstance(self.policy.select, Learned) and self.ctx.rank >= 0:
            self._init_scorer(pr.k.shape[-1], pr.k.device)
        merge = self.policy.merge
        if merge is not None and self.ctx.rank >= 0 and merge.pair_position(self.ctx) >= 0:
            self.groups = self._minicache(pr)
        else:
            self.groups = plan(self, pr)
        for grp in self.groups:
            if grp.pages is not None:
                grp.pages.refresh(grp.store, full=True)
        self.encoder.bases = None  # the stores hold their own (per-group) bases

    def _minicache(self, pr: Prompt) -> list[Group]:
        pol = self.policy.merge
        grp = self.new_group(None, pr.k.shape[1])
        if pol.pair_position(self.ctx) == 0:  # hold the prompt until the partner layer merges it
            grp.store.append(pr.k, pr.v)
            return [grp]
        first = self.cache.layer_of_rank(self.ctx.rank - 1)
        fgrp = first.groups[0]
        ka, va = fgrp.store.kv()
        kb, vb = pr.k, pr.v
        ang_k, dir_k, nka, nkb = _slerp(ka, kb, pol.t)
        ang_v, dir_v, nva, nvb = _slerp(va, vb, pol.t)
        p = kb.shape[2]
        r = int(math.floor(pol.retain * p))
        keep_idx = top_sorted(ang_k + ang_v, r) if r else torch.zeros(*kb.shape[:2], 0, dtype=torch.long,
                                                                        device=kb.device)
        merged_mask = torch.ones(*kb.shape[:2], p, dtype=torch.bool, device=kb.device)
        merged_mask.scatter_(2, keep_idx, False)
        m_idx = merged_mask.nonzero()[:, 2].reshape(*kb.shape[:2], p - r)
        shared = quant_store(self.policy.quant, kb.dtype, dir_k.shape[-1], dir_v.shape[-1])
        shared.append(gather(dir_k, m_idx).to(kb.dtype), gather(dir_v, m_idx).to(kb.dtype))
        mags = torch.stack([gather(x[..., 0], m_idx) for x in (nka, nva, nkb, nvb)], -1).to(kb.dtype).contiguous()
        merged = Merged(shared, mags)
        fgrp.store.clear()
        fgrp.store.append(gather(ka, keep_idx), gather(va, keep_idx))
        fgrp.extra.update(merged=merged, which=0)
        grp.store.append(gather(kb, keep_idx), gather(vb, keep_idx))
        grp.extra.update(merged_ref=merged, which=1)
        return [grp]

    # -- bytes
    def tensors(self) -> list[torch.Tensor]:
        out = []
        for grp in self.groups:
            out += grp.tensors()
            merged = grp.extra.get("merged")
            if merged is not None:
                out += merged.store.tensors() + [merged.mags]
        return out

    def shared_tensors(self) -> list[torch.Tensor]:
        out = list(self.scorer_weights)
        for grp in self.groups:
            out += grp.store.shared_tensors()
        return out


def _slerp(a, b, t: float):
    """Per token and head: angle between a and b, SLERP of their unit vectors at t, and both norms."""
    af, bf = a.float(), b.float()
    na, nb = af.norm(dim=-1, keepdim=True).clamp_min(1e-12), bf.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ua, ub = af / na, bf / nb
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(cos)
    s = torch.sin(theta)
    direction = (torch.sin((1 - t) * theta) / s) * ua + (torch.sin(t * theta) / s) * ub
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return theta.squeeze(-1), direction, na, nb


class KvsimCache(Cache):
    """One cache layer per model layer, built from kvsim's view of the model: a KvsimLayer for attention (a
    LatentLayer for MLA's latent form, mla.py), a StateLayer for recurrent mixers (recurrent.py)."""

    def __init__(self, model, policy: Compose, scorer_state: dict | None = None):
        from .mla import LatentLayer  # at call time: mla.py subclasses this module's KvsimLayer
        from .recurrent import StateLayer

        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.spec = from_hf_config(config.to_dict())
        dtype = next(model.parameters()).dtype
        self.kv_dtype = _DTYPE_NAMES[dtype]
        self.policy = policy
        self.scorer_state = scorer_state or {}
        device = next(model.parameters()).device
        self.clock = PolicyClock(device)
        ctxs = layer_contexts(self.spec, DTYPE_BITS[self.kv_dtype])
        host = torch.device("cpu") if policy.place is not None else None
        state_quant = policy.quant if policy.quantizes_state else None
        layers = []
        for i, (spec, ctx) in enumerate(zip(self.spec.layers, ctxs)):
            mixer = spec.mixer
            if isinstance(mixer, (Mamba, LinearAttention)):
                layers.append(StateLayer(state_quant))
                continue
            on_host = host if ctx is not None and policy.on_host(ctx) else None
            if isinstance(mixer, MLA) and mixer.cache == "latent":
                layers.append(LatentLayer(self, i, ctx, policy, dtype, on_host, mla=mixer))
            else:
                layers.append(KvsimLayer(self, i, ctx, policy, dtype, on_host))
        super().__init__(layers=layers)

    # transformers reads recurrent state through these; a quantized StateLayer hands out a dequantized copy
    def get_conv_state(self, layer_idx: int, state_idx: int = 0):
        layer = self.layers[layer_idx]
        return layer.conv_state(state_idx) if hasattr(layer, "conv_state") else super().get_conv_state(
            layer_idx, state_idx)

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0):
        layer = self.layers[layer_idx]
        return layer.recurrent_state(state_idx) if hasattr(layer, "recurrent_state") else \
            super().get_recurrent_state(layer_idx, state_idx)

    def layer_of_rank(self, rank: int) -> KvsimLayer:
        for layer in self.layers:
            if isinstance(layer, KvsimLayer) and layer.ctx is not None and layer.ctx.rank == rank:
                return layer
        raise IndexError(rank)

    def finish_prefill(self) -> None:
        """Work that needs every layer's prompt: DynamicKV's split of the budget across layers."""
        sel = self.policy.select
        if not isinstance(sel, DynamicKV):
            return
        with self.clock:
            layers = [l for l in self.layers if isinstance(l, KvsimLayer) and l.ctx is not None and l.ctx.rank >= 0]
            if not layers:  # every layer is bounded by its own window: nothing to split
                return
            p = layers[0].prompt
            if p <= sel.budget:
                for layer in layers:
                    layer.groups[0].extra.pop("votes", None)
                return
            budgets = split_layer_budgets([l.groups[0].extra["votes"] for l in layers], sel.budget, sel.window,
                                          sel.quantum, p)
            for layer, b in zip(layers, budgets):
                grp = layer.groups[0]
                votes = grp.extra.pop("votes")
                grp.store.take(top_sorted(votes, b))
                if grp.pages is not None:
                    grp.pages.refresh(grp.store, full=True)

    def physical_bytes(self) -> dict:
        """Bytes the cache holds: 'per_layer' (list, None for layers without a per-token cache), 'sequence' (sum),
        'shared' (per-layer data shared by the batch), 'host' (part of 'sequence' in host memory), and 'state'
        (recurrent layers' conv windows and state matrices, 'per_layer_state' by layer)."""
        per_layer, per_state, shared, host = [], [], [], 0
        for layer in self.layers:
            if not isinstance(layer, KvsimLayer):
                per_layer.append(None)
                per_state.append(layer.nbytes())
                continue
            per_state.append(None)
            if layer.ctx is None:
                per_layer.append(None)
                continue
            n = physical_bytes(layer.tensors())
            per_layer.append(n)
            if layer.host is not None:
                host += n
            shared.append(physical_bytes(layer.shared_tensors()))
        seq = sum(x for x in per_layer if x is not None)
        state = sum(x for x in per_state if x is not None)
        return {"per_layer": per_layer, "sequence": seq, "shared": sum(shared), "host": host,
                "state": state, "per_layer_state": per_state, "total": seq + sum(shared) + state}

    def policy_seconds(self) -> float:
        return self.clock.total()
