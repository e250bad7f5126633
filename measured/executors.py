"""The torch side of kvsim's policies: what each one does to a layer's cache.

A planner runs once per layer after the prompt's attention: it decides the layer's head groups (all heads,
one per head for AdaKV, retrieval and streaming heads for DuoAttention) and what each keeps. A step rule
runs after every decode step's attention: it inserts the new token and evicts. Budgets come from the
policy objects' own analytic methods, so the counts kvsim predicts are the counts kept here.

Score-based policies share one mechanism (`ScoreRule`): a per-token score, the top `budget` kept, and at
capacity the lowest-scoring token's slot overwritten in place; they differ only in how a score is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kvsim.policies.adakv import AdaKV
from kvsim.policies.duo import DuoAttention
from kvsim.policies.full import Full
from kvsim.policies.h2o import H2O
from kvsim.policies.keynorm import KeyNorm
from kvsim.policies.kmeans import KMeans
from kvsim.policies.learned import Learned
from kvsim.policies.lru import LRU
from kvsim.policies.mixed import MixedPrecision
from kvsim.policies.pyramid import DynamicKV
from kvsim.policies.quant import Quant
from kvsim.policies.scored import ScoredEviction
from kvsim.policies.snapkv import SnapKV
from kvsim.policies.tova import TOVA
from kvsim.policies.window import StreamingLLM, Window

from .attention import column_sums, window_votes
from .paged import Paged
from .stores import Store, TokenQuantStore

INF = float("inf")


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, ...] at token indices idx [B, H, m]."""
    if x.dim() == 3:
        return torch.gather(x, 2, idx)
    return torch.gather(x, 2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


def top_sorted(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores per (batch, head), in ascending token order (arrival order kept)."""
    k = min(k, score.shape[-1])
    return torch.topk(score, k, dim=-1).indices.sort(dim=-1).values


@dataclass
class Group:
    """Some KV heads of a layer and what they hold."""

    heads: torch.Tensor | None  # KV head indices; None: every head of the layer
    n_heads: int
    store: Store
    rule: "Rule"
    state: dict = field(default_factory=dict)  # per-token state tensors [B, heads, n], in storage order
    pages: "Pages | None" = None
    extra: dict = field(default_factory=dict)  # rule-specific tensors (centroid counts, merged tokens)

    def tensors(self) -> list[torch.Tensor]:
        """Everything this group owns (a reference to another layer's data, key ending '_ref', is not)."""
        out = self.store.tensors() + [t for t in self.state.values() if t is not None]
        for key, val in self.extra.items():
            if key.endswith("_ref"):
                continue
            if isinstance(val, torch.Tensor):
                out.append(val)
            elif isinstance(val, Store):
                out += val.tensors()
        if self.pages is not None:
            out += self.pages.tensors()
        return out

    def sources(self) -> list[tuple[Store, list]]:
        """What a decode step reads, in order, as (store, pages): merged tokens, then the rule's own stores."""
        out = []
        merged = self.extra.get("merged") or self.extra.get("merged_ref")
        if merged is not None:
            out.append((merged.store, merged.pages(self.extra["which"])))
        return out + [(st, st.pages()) for st in self.rule.stores(self)]

    def merged_tokens(self) -> int:
        merged = self.extra.get("merged") or self.extra.get("merged_ref")
        return 0 if merged is None else len(merged.store)


# --------------------------------------------------------------------------------------------- step rules
class Rule:
    """What a decode step does to a group after attention. `pos` is the new token's position."""

    needs_probs = False

    def stores(self, grp: Group) -> list[Store]:
        """The group's stores attention reads, in order."""
        return [grp.store]

    def bias(self, grp: Group) -> torch.Tensor | None:
        """Added to the logits of stored tokens [B, heads, n] (log counts of merged tokens)."""
        return None

    def step(self, layer, grp: Group, k, v, probs, prob_new, pos: int) -> None:
        grp.store.append(k, v)
        if grp.pages is not None:
            grp.pages.refresh(grp.store)


class Ring(Rule):
    """Keep `sinks` first tokens and the most recent `size`; the new token replaces the oldest one."""

    def __init__(self, sinks: int, size: int):
        self.sinks, self.size = sinks, size
        self.cap = sinks + size
        self.ptr = 0  # offset of the oldest recent token within the ring

    def prefill_keep(self, p: int, device) -> torch.Tensor:
        if p <= self.cap:
            return torch.arange(p, device=device)
        return torch.cat([torch.arange(self.sinks, device=device), torch.arange(p - self.size, p, device=device)])

    def step(self, layer, grp, k, v, probs, prob_new, pos):
        n = len(grp.store)
        if n < self.cap:
            grp.store.append(k, v)
        elif grp.store.order_free:
            b, h = k.shape[0], k.shape[1]
            slot = torch.full((b, h), self.sinks + self.ptr, dtype=torch.long, device=k.device)
            grp.store.put(slot, k, v)
            self.ptr = (self.ptr + 1) % self.size
        else:  # arrival order matters to the encoding: drop the oldest recent token, append
            keep = torch.cat([torch.arange(self.sinks), torch.arange(self.sinks + 1, n)]).to(k.device)
            grp.store.take(keep.expand(k.shape[0], k.shape[1], -1))
            grp.store.append(k, v)
        if grp.pages is not None:
            grp.pages.refresh(grp.store, full=True)


class ScoreRule(Rule):
    """Score-based eviction to `budget`, every `every` steps (0: never after the prefill)."""

    def __init__(self, policy: ScoredEviction, budget: int, prompt: int, layer):
        self.policy, self.budget, self.every = policy, budget, policy.every
        self.prompt = prompt
        self.needs_probs = isinstance(policy, (H2O, TOVA, LRU))
        self.recent = policy.recent if isinstance(policy, H2O) else 0
        self.layer = layer

    # -- scores of tokens
    def new_score(self, layer, grp, k, probs_new, pos) -> torch.Tensor:
        """Score of the appended token [B, heads, 1]."""
        p = self.policy
        if isinstance(p, H2O):
            return probs_new.sum(dim=(2, 3)).float()
        if isinstance(p, LRU):
            return torch.full(k.shape[:2] + (1,), float(pos), device=k.device)
        if isinstance(p, KeyNorm):
            return k.float().norm(dim=-1)
        if isinstance(p, Learned):
            return layer.scorer(k)
        return torch.zeros(k.shape[:2] + (1,), device=k.device)

    def _update_scores(self, grp, probs, pos) -> None:
        """Fold this step's attention into the stored tokens' scores, in place."""
        p = self.policy
        if probs is None:
            return
        if isinstance(p, H2O):
            grp.state["score"].add_(probs.sum(dim=(2, 3)))
        elif isinstance(p, LRU):
            used = probs.amax(dim=(2, 3)) >= 1.0 / (probs.shape[-1] + 1)
            grp.state["score"].masked_fill_(used, float(pos))

    def _new_keep(self, layer, grp, k, prob_new, pos) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(keep score of the new token [B, heads], its state value [B, heads] or None)."""
        p = self.policy
        new = self.new_score(layer, grp, k, prob_new, pos)[..., 0]
        if isinstance(p, TOVA):
            return prob_new.mean(dim=(2, 3))[..., 0], None
        if isinstance(p, KeyNorm):
            return -new, new
        return new, new

    def step(self, layer, grp, k, v, probs, prob_new, pos):
        self._update_scores(grp, probs, pos)
        n = len(grp.store)
        steps = pos + 1 - self.prompt
        due = self.every > 0 and steps % self.every == 0 and n + 1 > self.budget
        if due and self.every == 1 and n == self.budget and grp.store.order_free:
            self._evict_one(layer, grp, k, v, probs, prob_new, pos)
        else:
            self._append_then_trim(layer, grp, k, v, probs, prob_new, pos, due)
        if grp.pages is not None:
            grp.pages.refresh(grp.store, full=due)

    def _evict_one(self, layer, grp, k, v, probs, prob_new, pos) -> None:
        """At capacity: the lowest-scoring token (the new one included) leaves; the new token, unless it is
        the one leaving, takes its slot. Everything in place: no tensor grows or is copied."""
        p = self.policy
        new_keep, new_state = self._new_keep(layer, grp, k, prob_new, pos)
        if isinstance(p, KeyNorm):  # the largest norm leaves: no negated copy of the scores
            high, victim = grp.state["score"].max(dim=-1)
            low = -high
        else:
            if isinstance(p, TOVA):
                keep = probs.mean(dim=(2, 3))
            elif isinstance(p, H2O) and self.recent:
                keep = grp.state["score"].masked_fill(grp.state["pos"] > pos - self.recent, INF)
            else:
                keep = grp.state["score"]
            low, victim = keep.min(dim=-1)  # [B, heads]
        slot = victim[..., None]
        # The new token can never leave under H2O's recent window or LRU (it is the latest use).
        always_kept = (isinstance(p, H2O) and self.recent) or isinstance(p, LRU)
        drop_new = None if always_kept else new_keep < low  # the new token itself is the least worth keeping
        if drop_new is not None and not bool(drop_new.any()):
            drop_new = None
        s_in = new_state if drop_new is None or new_state is None else torch.where(
            drop_new, grp.state["score"].gather(2, slot)[..., 0], new_state)
        grp.store.put(victim, k, v, keep=drop_new)  # where the new token leaves, the victim's slot is untouched
        if s_in is not None and "score" in grp.state:
            grp.state["score"].scatter_(2, slot, s_in[..., None].to(grp.state["score"].dtype))
        if "pos" in grp.state:
            grp.state["pos"].scatter_(2, slot, torch.full_like(slot, pos, dtype=torch.int32))

    def _append_then_trim(self, layer, grp, k, v, probs, prob_new, pos, due: bool) -> None:
        """Below capacity, or compressing many at once: append, then keep the top `budget` by score."""
        p = self.policy
        new_keep, new_state = self._new_keep(layer, grp, k, prob_new, pos)
        if "score" in grp.state:
            grp.state["score"] = torch.cat([grp.state["score"], new_state[..., None].float()], -1)
        if "pos" in grp.state:
            grp.state["pos"] = torch.cat(
                [grp.state["pos"], torch.full_like(new_keep[..., None], pos, dtype=torch.int32)], -1)
        grp.store.append(k, v)
        if not due:
            return
        if isinstance(p, TOVA):
            keep = torch.cat([probs.mean(dim=(2, 3)), new_keep[..., None]], -1)
        elif isinstance(p, KeyNorm):
            keep = -grp.state["score"]
        elif isinstance(p, H2O) and self.recent:
            keep = grp.state["score"].masked_fill(grp.state["pos"] > pos - self.recent, INF)
        else:
            keep = grp.state["score"]
        idx = top_sorted(keep, self.budget)
        grp.store.take(idx)
        for name in ("score", "pos"):
            if name in grp.state:
                grp.state[name] = gather(grp.state[name], idx)


class KMeansRule(Rule):
    """Older tokens merged into `clusters` centroids (keys by k-means, values averaged, counts kept);
    the `recent` newest stay exact. Storage order: centroids first, then recent tokens in arrival order."""

    def __init__(self, policy: KMeans, prompt: int):
        self.policy, self.prompt = policy, prompt

    def bias(self, grp: Group) -> torch.Tensor | None:
        counts = grp.extra.get("counts")
        if counts is None:
            return None
        n = len(grp.store)
        rest = torch.zeros(*counts.shape[:2], n - counts.shape[-1], device=counts.device)
        return torch.cat([counts.log(), rest], -1)

    def compress(self, grp: Group) -> None:
        pol = self.policy
        k, v = grp.store.kv()
        n = k.shape[2]
        counts = grp.extra.get("counts")
        c_prev = 0 if counts is None else counts.shape[-1]
        old = n - pol.recent  # tokens (and old centroids) merged into new centroids
        w = torch.ones(*k.shape[:2], old, device=k.device)
        if counts is not None:
            w[..., :c_prev] = counts
        ck, cv, cnt = kmeans(k[:, :, :old].float(), v[:, :, :old].float(), w, pol.clusters, pol.iters)
        keep_k = torch.cat([ck.to(k.dtype), k[:, :, old:]], 2)
        keep_v = torch.cat([cv.to(v.dtype), v[:, :, old:]], 2)
        grp.store.clear()
        grp.store.append(keep_k, keep_v)
        grp.extra["counts"] = cnt.contiguous()

    def prefill(self, grp: Group, p: int) -> None:
        if p > self.policy.cap:
            self.compress(grp)

    def step(self, layer, grp, k, v, probs, prob_new, pos):
        grp.store.append(k, v)
        steps = pos + 1 - self.prompt
        pol = self.policy
        if pol.every and steps % pol.every == 0 and len(grp.store) > pol.cap:
            self.compress(grp)


def kmeans(k, v, w, c: int, iters: int):
    """Weighted Lloyd iterations per (batch, head) on keys: k [B, H, n, d], weights w [B, H, n]. Returns
    centroid keys, weighted mean values and total weights per centroid, [B, H, c, ...]."""
    n = k.shape[2]
    init = torch.linspace(0, n - 1, c, device=k.device).round().long()
    cent = k[:, :, init].clone()
    for _ in range(iters):
        assign = torch.cdist(k, cent).argmin(-1)  # [B, H, n]
        onehot = F.one_hot(assign, c).float() * w.unsqueeze(-1)  # [B, H, n, c]
        mass = onehot.sum(2)  # [B, H, c]
        upd = torch.einsum("bhnc,bhnd->bhcd", onehot, k) / mass.clamp_min(1e-9).unsqueeze(-1)
        cent = torch.where(mass.unsqueeze(-1) > 0, upd, cent)
    assign = torch.cdist(k, cent).argmin(-1)
    onehot = F.one_hot(assign, c).float() * w.unsqueeze(-1)
    mass = onehot.sum(2)
    vals = torch.einsum("bhnc,bhnd->bhcd", onehot, v) / mass.clamp_min(1e-9).unsqueeze(-1)
    return cent, vals, mass.clamp_min(1e-6)


class MixedRule(Rule):
    """Keep ceil(retain x tokens) by accumulated attention; the top `high` fraction raw, the rest low-bit.
    Storage: a raw store (high precision) and a quantized store; scores follow [raw..., low...]."""

    needs_probs = True

    def __init__(self, policy: MixedPrecision, prompt: int, low: Store):
        self.policy, self.prompt, self.low = policy, prompt, low

    def arrange(self, grp: Group, k, v, score, t: int) -> None:
        """Choose what stays among k/v [B, H, n, d] with `score`, for t tokens processed, and store it."""
        pol = self.policy
        kept = min(k.shape[2], math.ceil(pol.retain * t - 1e-9))
        hi = math.floor(pol.high * kept + 1e-9)
        order = torch.argsort(score, dim=-1, descending=True)[..., :kept]
        hi_idx, lo_idx = order[..., :hi].sort(-1).values, order[..., hi:].sort(-1).values
        grp.store.clear()
        grp.store.append(gather(k, hi_idx), gather(v, hi_idx))
        self.low.clear()
        self.low.append(gather(k, lo_idx), gather(v, lo_idx))
        grp.state["score"] = torch.cat([gather(score, hi_idx), gather(score, lo_idx)], -1).contiguous()

    def stores(self, grp: Group) -> list[Store]:
        return [grp.store, self.low]

    def kv(self, grp: Group):
        hk, hv = grp.store.kv()
        if len(self.low) == 0:
            return hk, hv
        lk, lv = self.low.kv()
        if hk is None or hk.shape[2] == 0:
            return lk, lv
        return torch.cat([hk, lk], 2), torch.cat([hv, lv], 2)

    def step(self, layer, grp, k, v, probs, prob_new, pos):
        pol = self.policy
        if "score" not in grp.state:  # every=0: decided once at the prefill; place new tokens by count
            n = len(grp.store) + len(self.low) + 1
            (grp.store if len(grp.store) + 1 <= math.floor(pol.high * n + 1e-9) else self.low).append(k, v)
            return
        score = grp.state["score"] + (probs.sum(dim=(2, 3)) if probs is not None else 0)
        score = torch.cat([score, prob_new.sum(dim=(2, 3)).float()], -1)
        steps = pos + 1 - self.prompt
        if pol.every and steps % pol.every == 0:
            kk, vv = self.kv(grp)
            kk, vv = torch.cat([kk, k], 2), torch.cat([vv, v], 2)
            self.arrange(grp, kk, vv, score, pos + 1)
            return
        # between re-decisions: the new token joins the raw store while that keeps floor(high x n) raw
        n = len(grp.store) + len(self.low) + 1
        n_hi = len(grp.store)
        if n_hi + 1 <= math.floor(pol.high * n + 1e-9):
            grp.store.append(k, v)
            grp.state["score"] = torch.cat([score[..., :n_hi], score[..., -1:], score[..., n_hi:-1]], -1)
        else:
            self.low.append(k, v)
            grp.state["score"] = score


# ------------------------------------------------------------------------------------------ quest pages
class Pages:
    """Quest's per-page channel-wise min and max keys over pages of `page` consecutive stored tokens, each a
    Paged [B, heads, pages, D]: a decode step rewrites the last summary in place or appends a new one."""

    def __init__(self, page: int, budget: int):
        self.page, self.budget = page, budget
        self.kmin, self.kmax = Paged(), Paged()

    def tensors(self):
        return self.kmin.pages + self.kmax.pages

    def _summaries(self, k: torch.Tensor):
        """(min, max) over each page of keys k [B, H, m, D] that start on a page boundary (the last page may be
        partial: its padding repeats its last key)."""
        m = k.shape[2]
        pages = -(-m // self.page)
        pad = pages * self.page - m
        if pad:
            k = torch.cat([k, k[:, :, -1:].expand(-1, -1, pad, -1)], 2)
        k = k.reshape(k.shape[0], k.shape[1], pages, self.page, k.shape[-1])
        return k.amin(3), k.amax(3)

    def refresh(self, store: Store, full: bool = False) -> None:
        n = len(store)
        pages = -(-n // self.page)
        have = len(self.kmin)
        if full or not have or have > pages:
            lo, hi = self._summaries(store.keys(0))
            self.kmin.replace(lo.contiguous())
            self.kmax.replace(hi.contiguous())
            return
        start = have - 1  # the last summarised page may have grown; any after it are new
        lo, hi = self._summaries(store.keys(start * self.page))  # decodes only the pages that hold them
        self.kmin.set_last(lo[:, :, :1])
        self.kmax.set_last(hi[:, :, :1])
        if lo.shape[2] > 1:
            self.kmin.append(lo[:, :, 1:])
            self.kmax.append(hi[:, :, 1:])

    def select(self, q: torch.Tensor, n: int) -> torch.Tensor | None:
        """Token indices [B, heads, m] to read for grouped queries q [B, heads, G, D] (None: read all):
        the best budget/page - 1 pages by the bound q.k <= sum_d max(q_d min_d, q_d max_d), plus the page
        being filled, which is always read (and may be partial)."""
        if n <= self.budget:
            return None
        qf = q.float()
        pos, neg = qf.clamp_min(0), qf.clamp_max(0)  # max(q min, q max) = q+ max + q- min, as two matmuls
        bound = torch.cat([(torch.matmul(pos, hi.float().transpose(-1, -2)) +
                            torch.matmul(neg, lo.float().transpose(-1, -2))).sum(2)
                           for lo, hi in zip(self.kmin.pages, self.kmax.pages)], -1)  # [B, H, pages]
        pages = bound.shape[-1]
        bound[..., -1] = INF
        chosen = torch.topk(bound, self.budget // self.page, dim=-1).indices.sort(-1).values
        idx = (chosen.unsqueeze(-1) * self.page + torch.arange(self.page, device=q.device)).flatten(2)
        last = n - (pages - 1) * self.page  # tokens in the current page
        return idx[..., : idx.shape[-1] - (self.page - last)]


# ---------------------------------------------------------------------------------------------- planners
@dataclass
class Prompt:
    """What a planner sees of one layer's prompt."""

    q: torch.Tensor  # [B, H, p, D]
    k: torch.Tensor  # [B, Hkv, p, D]
    v: torch.Tensor
    scale: float
    span: int
    softcap: float | None

    @property
    def p(self) -> int:
        return self.k.shape[2]


def snap_votes(pr: Prompt, pol: SnapKV) -> torch.Tensor:
    """SnapKV's pooled votes [B, Hkv, p]; the observation window itself scores +inf (always kept)."""
    votes = window_votes(pr.q, pr.k, pr.scale, pol.window, pr.span, pr.softcap)
    w = min(pol.window, pr.p)
    body = votes[..., :pr.p - w]
    if body.shape[-1] and pol.kernel > 1:
        flat = body.reshape(-1, 1, body.shape[-1])
        pad = pol.kernel // 2
        if pol.pooling == "max":
            pooled = F.max_pool1d(flat, pol.kernel, 1, pad)
        else:
            pooled = F.avg_pool1d(flat, pol.kernel, 1, pad, count_include_pad=False)
        body = pooled.reshape(body.shape)
    return torch.cat([body, torch.full_like(votes[..., pr.p - w:], INF)], -1)


def prefill_scores(pr: Prompt, pol: ScoredEviction, layer) -> torch.Tensor:
    """Each prompt token's score under a score-based policy [B, Hkv, p] (higher is kept)."""
    if isinstance(pol, H2O):
        return column_sums(pr.q, pr.k, pr.scale, pr.span, pr.softcap)
    if isinstance(pol, (TOVA, LRU)):
        last = window_votes(pr.q, pr.k, pr.scale, 1, pr.span, pr.softcap)
        if isinstance(pol, TOVA):
            return last
        pos = torch.arange(pr.p, device=pr.k.device, dtype=torch.float32).expand_as(last)
        return torch.where(last >= 1.0 / pr.p, torch.full_like(pos, pr.p - 1), pos)
    if isinstance(pol, KeyNorm):
        return pr.k.float().norm(dim=-1)
    if isinstance(pol, Learned):
        return layer.scorer(pr.k)
    raise TypeError(type(pol).__name__)


def plan_scored(layer, pr: Prompt, pol: ScoredEviction, budget: int) -> list[Group]:
    raw = prefill_scores(pr, pol, layer)
    keep = -raw if isinstance(pol, KeyNorm) else raw.clone()
    if isinstance(pol, H2O) and pol.recent:
        keep[..., max(0, pr.p - pol.recent):] = INF
    idx = top_sorted(keep, budget)
    grp = layer.new_group(None, pr.k.shape[1])
    grp.store.append(gather(pr.k, idx), gather(pr.v, idx))
    if pol.every:
        grp.rule = ScoreRule(pol, budget, pr.p, layer)
        if isinstance(pol, (H2O, LRU, KeyNorm, Learned)):
            grp.state["score"] = gather(raw.float(), idx).contiguous()
        if isinstance(pol, H2O) and pol.recent:
            pos = torch.arange(pr.p, device=pr.k.device, dtype=torch.int32).expand_as(raw)
            grp.state["pos"] = gather(pos, idx).contiguous()
    return [grp]


def plan_adakv(layer, pr: Prompt, pol: AdaKV) -> list[Group]:
    votes = snap_votes(pr, pol)
    heads = pr.k.shape[1]
    if pr.p <= pol.budget:
        grp = layer.new_group(None, heads)
        grp.store.append(pr.k, pr.v)
        return [grp]
    per_head = allocate_heads(votes, pol, pr.p)
    groups = []
    for h, b_h in enumerate(per_head):
        sel = torch.tensor([h], device=pr.k.device)
        idx = top_sorted(votes[:, h:h + 1], b_h)
        grp = layer.new_group(sel, 1)
        grp.store.append(gather(pr.k[:, h:h + 1], idx), gather(pr.v[:, h:h + 1], idx))
        groups.append(grp)
    return groups


def allocate_heads(votes: torch.Tensor, pol: AdaKV, p: int) -> list[int]:
    """AdaKV's split of heads x budget across heads: a guaranteed floor per head, the rest to the heads
    holding the largest votes (summed over the batch), in multiples of `quantum`, each at most p."""
    heads = votes.shape[1]
    q = pol.quantum
    total_units = heads * pol.budget // q
    cap_units = p // q
    floor_units = min(int(pol.floor * pol.budget) // q, cap_units)
    v = votes.float().clamp_max(1e9).sum(0)  # [H, p]
    srt = v.sort(-1, descending=True).values
    extra_tokens = (total_units - heads * floor_units) * q
    rest = srt[:, floor_units * q:]
    if extra_tokens > 0 and rest.numel():
        top = torch.topk(rest.flatten(), min(extra_tokens, rest.numel())).indices // rest.shape[1]
        extra = torch.bincount(top, minlength=heads).float() / q
    else:
        extra = torch.zeros(heads)
    units = [floor_units + int(x) for x in extra.floor().tolist()]
    frac = (extra - extra.floor()).tolist()
    left = total_units - sum(units)
    for h in sorted(range(heads), key=lambda i: -frac[i]) * 2:
        if left <= 0:
            break
        if units[h] < cap_units:
            units[h] += 1
            left -= 1
    for h in range(heads):  # anything over the cap moves to heads with room
        while units[h] > cap_units:
            units[h] -= 1
            j = min((i for i in range(heads) if units[i] < cap_units), key=lambda i: units[i])
            units[j] += 1
    return [u * q for u in units]


def plan_duo(layer, pr: Prompt, pol: DuoAttention) -> list[Group]:
    heads = pr.k.shape[1]
    n_r = pol.retrieval_heads(layer.ctx)
    votes = window_votes(pr.q, pr.k, pr.scale, min(32, pr.p), pr.span, pr.softcap)  # [B, H, p]
    mid = votes[..., pol.sinks:max(pol.sinks, pr.p - pol.window)].sum(-1).sum(0)  # mass outside sink+window
    order = torch.argsort(mid, descending=True)
    groups = []
    ring = Ring(pol.sinks, pol.window)
    for sel, rule in ((order[:n_r].sort().values, Rule()), (order[n_r:].sort().values, ring)):
        if sel.numel() == 0:
            continue
        grp = layer.new_group(None if sel.numel() == heads else sel, sel.numel())
        grp.rule = rule
        k, v = pr.k[:, sel], pr.v[:, sel]
        if isinstance(rule, Ring):
            keep = rule.prefill_keep(pr.p, k.device)
            k, v = k[:, :, keep], v[:, :, keep]
        grp.store.append(k, v)
        groups.append(grp)
    return groups


def plan(layer, pr: Prompt) -> list[Group]:
    """A layer's groups after the prompt, per its policy and architecture."""
    pol = layer.policy
    sel = pol.select
    heads = pr.k.shape[1]
    ctx = layer.ctx
    if ctx.rank < 0 or isinstance(sel, (Window, StreamingLLM)):  # architecture window or recency policy
        if ctx.rank < 0:
            ring = Ring(0, ctx.layout.keep_cap)
        else:
            ring = Ring(getattr(sel, "sinks", 0), sel.size if isinstance(sel, Window) else sel.window)
        grp = layer.new_group(None, heads)
        grp.rule = ring
        keep = ring.prefill_keep(pr.p, pr.k.device)
        grp.store.append(pr.k[:, :, keep], pr.v[:, :, keep])
        if pr.p > ring.cap:
            ring.ptr = 0
        return [grp]
    if isinstance(sel, Full):
        grp = layer.new_group(None, heads)
        grp.store.append(pr.k, pr.v)
        return [grp]
    if isinstance(sel, ScoredEviction):
        return plan_scored(layer, pr, sel, sel.layer_budget(ctx))
    if isinstance(sel, AdaKV):
        return plan_adakv(layer, pr, sel)
    if isinstance(sel, DynamicKV):  # keep everything until cache.finish_prefill() splits the budget
        grp = layer.new_group(None, heads)
        grp.store.append(pr.k, pr.v)
        grp.extra["votes"] = snap_votes(pr, sel)
        return [grp]
    if isinstance(sel, SnapKV):  # SnapKV, PyramidKV, RocketKV's first stage
        idx = top_sorted(snap_votes(pr, sel), sel.layer_budget(ctx))
        grp = layer.new_group(None, heads)
        grp.store.append(gather(pr.k, idx), gather(pr.v, idx))
        return [grp]
    if isinstance(sel, DuoAttention):
        return plan_duo(layer, pr, sel)
    if isinstance(sel, KMeans):
        grp = layer.new_group(None, heads)
        grp.rule = KMeansRule(sel, pr.p)
        grp.store.append(pr.k, pr.v)
        grp.rule.prefill(grp, pr.p)
        return [grp]
    if isinstance(sel, MixedPrecision):
        low = sel.low()
        grp = layer.new_group(None, heads)
        lo_store = TokenQuantStore(low.bits, low.vb, low.group, low.kind, low.scale_bits, pr.k.dtype,
                                   pr.k.shape[-1], pr.v.shape[-1])
        grp.rule = MixedRule(sel, pr.p, lo_store)
        score = column_sums(pr.q, pr.k, pr.scale, pr.span, pr.softcap)
        grp.rule.arrange(grp, pr.k, pr.v, score, pr.p)
        if not sel.every:
            grp.state.pop("score")
        grp.extra["low"] = lo_store
        return [grp]
    raise TypeError(f"the harness has no executor for {type(sel).__name__}")


def split_layer_budgets(votes: list[torch.Tensor], budget: int, window: int, quantum: int, p: int) -> list[int]:
    """DynamicKV: split len(votes) x budget tokens across layers, more to layers whose votes are spread out
    (the top `budget` capture less of their mass). Multiples of `quantum`, each in [window+1, p]."""
    n = len(votes)
    weights = []
    for vt in votes:
        v = vt.float().clamp_max(1e9)
        finite = v[..., : p - window] if p > window else v
        mass = finite.sum(-1).clamp_min(1e-9)
        top = torch.topk(finite, min(budget - window, finite.shape[-1]), dim=-1).values.sum(-1) if finite.shape[-1] \
            else mass
        weights.append(float((1 - top / mass).mean()) + 1e-3)
    lo = -(-(window + 1) // quantum)
    hi = p // quantum
    total = n * budget // quantum
    units = [lo] * n
    left = total - lo * n
    share = sum(weights)
    for i in sorted(range(n), key=lambda j: -weights[j]):
        add = min(hi - units[i], int(left * weights[i] / share) if share else 0)
        units[i] += add
    left = total - sum(units)
    i = 0
    order = sorted(range(n), key=lambda j: -weights[j])
    while left > 0:
        j = order[i % n]
        if units[j] < hi:
            units[j] += 1
            left -= 1
        i += 1
    return [u * quantum for u in units]
