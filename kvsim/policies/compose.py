"""Composition: any selection with any sparse read, cross-layer merge, encoding chain and placement.

A single policy is a composition of one. The cost model (cost.py) talks only to `Compose`: for one layer it
asks for stored bytes, bytes and tokens read per step, bytes written, and the policy's own FLOP and bytes.
Layers whose cache the architecture already bounds (sliding windows) keep their own rule: selection and
merging apply only to layers whose cache grows without bound; encodings and placement apply to all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import KvsimError
from .base import ENCODE, MERGE, PLACE, READ, ROLE_ORDER, SELECT, LayerCtx, Policy, Segment, i64
from .full import Full
from .lowrank import LowRank


@dataclass(frozen=True)
class Compose:
    parts: tuple[Policy, ...] = ()
    select: Policy = field(init=False, repr=False, compare=False)
    reader: Policy | None = field(init=False, repr=False, compare=False)
    merge: Policy | None = field(init=False, repr=False, compare=False)
    lowrank: LowRank | None = field(init=False, repr=False, compare=False)
    quant: Policy | None = field(init=False, repr=False, compare=False)
    place: Policy | None = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        by_role: dict[str, list[Policy]] = {r: [] for r in ROLE_ORDER}
        for part in self.parts:
            if not isinstance(part, Policy):
                raise KvsimError(f"not a policy: {part!r}")
            by_role[part.role].append(part)
        for role in (SELECT, READ, MERGE, PLACE):
            if len(by_role[role]) > 1:
                names = " and ".join(p.name for p in by_role[role])
                raise KvsimError(f"cannot compose {names}: both are {role} policies")
        select = by_role[SELECT][0] if by_role[SELECT] else Full()
        reader = by_role[READ][0] if by_role[READ] else None
        own_reader = getattr(select, "reader", None)
        if own_reader is not None:
            if reader is not None:
                raise KvsimError(f"{select.name} already does sparse reads; drop {reader.name}")
            reader = own_reader()
        encoders = by_role[ENCODE]
        lows = [e for e in encoders if isinstance(e, LowRank)]
        quants = [e for e in encoders if not isinstance(e, LowRank)]
        if len(lows) > 1 or len(quants) > 1:
            raise KvsimError("compose at most one low-rank and one quantization policy")
        if lows and quants and encoders.index(quants[0]) < encoders.index(lows[0]):
            raise KvsimError("put lowrank before the quantization: it is the low-rank coordinates that are "
                             "quantized")
        merge = by_role[MERGE][0] if by_role[MERGE] else None
        if merge is not None and not isinstance(select, Full):
            raise KvsimError(f"{merge.name} merges the full cache; it does not compose with {select.name}")
        if select.name == "mixed" and encoders:
            raise KvsimError("mixed already chooses each token's precision; it does not compose with "
                             f"{encoders[0].name}")
        quant = quants[0] if quants else None
        if quant is not None and getattr(select, "data_dependent", False):
            gran = quant.granularity()
            quantum = getattr(select, "quantum", 1)
            if gran > 1 and (quantum % gran or select.budget % gran):
                raise KvsimError(f"{select.name} splits its budget at run time; with {quant.name} storing "
                                 f"{gran}-token groups, set quantum and budget to multiples of {gran}")
        set_ = object.__setattr__
        set_(self, "select", select)
        set_(self, "reader", reader)
        set_(self, "merge", merge)
        set_(self, "lowrank", lows[0] if lows else None)
        set_(self, "quant", quant)
        set_(self, "place", by_role[PLACE][0] if by_role[PLACE] else None)

    # ----- naming -----
    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.parts) or "full"

    def spec(self) -> str:
        return " + ".join(p.spec() for p in self.parts) or "full"

    def idle_notes(self, model_name: str, ctxs: list[LayerCtx], recurrent: bool = False) -> list[str]:
        """Parts that change nothing on this model, said once each: a selection or merge needs a layer whose
        cache grows with the sequence, an encoding or placement a layer with a per-token cache at all (an SSM
        has neither; a quantization with state=true also encodes `recurrent` layers' state), and a part may say
        why it is idle on these layers (`idle_reason`)."""
        out = []
        growing = [c for c in ctxs if c.rank >= 0]
        for part in self.parts:
            if part.name == "full":
                continue
            needs = ctxs if part.role in (ENCODE, PLACE) else growing
            if not needs and not (recurrent and getattr(part, "state", False)):
                what = "a per-token KV cache" if part.role in (ENCODE, PLACE) else "a KV cache that grows with the " \
                                                                                   "sequence"
                out.append(f"{part.name} changes nothing on {model_name}: no layer keeps {what}")
                continue
            reason = getattr(part, "idle_reason", None)
            why = reason(needs) if reason is not None else None
            if why:
                out.append(f"{part.name} changes nothing on {model_name}: {why}")
        return out

    def notes(self, p, ctxs: list[LayerCtx] | None = None) -> list[str]:
        """What a user should be told for these prompts. With `ctxs` (the model's layers whose cache grows
        without bound), policies whose behaviour differs by layer (`layer_notes`) speak per layer."""
        out: list[str] = []
        for part in self.parts:
            per_layer = getattr(part, "layer_notes", None)
            if per_layer is not None and ctxs is not None:
                out.extend(per_layer(np.asarray(p), ctxs))
            else:
                out.extend(part.notes(np.asarray(p)))
        return out

    @property
    def data_dependent(self) -> bool:
        return bool(getattr(self.select, "data_dependent", False))

    # ----- which tokens -----
    def _bounded(self, ctx: LayerCtx, p, g) -> list[Segment]:
        return [Segment(ctx.heads, np.minimum(i64(p) + g, ctx.layout.keep_cap))]

    def segments(self, ctx: LayerCtx, p, g) -> list[Segment]:
        """Resident segments after the prefill and g decode steps."""
        if ctx.rank < 0:
            return self._bounded(ctx, p, g)
        if self.merge is not None:
            merged = self.merge.segments(ctx, p, g, reading=False)
            if merged is not None:
                return merged
        return self.select.kept(ctx, i64(p), i64(g))

    def peak_segments(self, ctx: LayerCtx, p, gmax) -> list[Segment]:
        if ctx.rank < 0 or self.merge is not None:
            return self.segments(ctx, p, gmax)
        return self.select.peak(ctx, i64(p), i64(gmax))

    def read_segments(self, ctx: LayerCtx, p, g) -> list[Segment]:
        """What decode step g+1 reads (besides the token it appends)."""
        if ctx.rank < 0:
            segs = self._bounded(ctx, p, g)
        elif self.merge is not None and (m := self.merge.segments(ctx, p, g, reading=True)) is not None:
            segs = m
        else:
            segs = self.select.read(ctx, i64(p), i64(g))
        if self.reader is not None:
            segs = self.reader.read(ctx, segs)
        span = ctx.layout.span
        if span:
            segs = [Segment(s.heads, np.minimum(s.tokens, span - 1), s.encoding, s.extra_bits_per_token)
                    for s in segs]
        return segs

    # ----- bytes -----
    def dims(self, ctx: LayerCtx) -> tuple[int, int]:
        k, v = ctx.layout.k_dim, ctx.layout.v_dim
        return self.lowrank.ranks(k, v) if self.lowrank is not None else (k, v)

    def _head_bytes(self, ctx: LayerCtx, seg: Segment) -> np.ndarray:
        k, v = self.dims(ctx)
        enc = seg.encoding if seg.encoding is not None else self.quant
        n = i64(seg.tokens)
        if enc is None:
            b = n * (k + v) * ctx.elem_bits // 8
        else:
            b = enc.head_bytes(k, v, n, ctx.elem_bits)
        return b + n * seg.extra_bits_per_token // 8

    def _segments_bytes(self, ctx: LayerCtx, segs: list[Segment]) -> np.ndarray:
        total = 0
        for s in segs:
            if s.heads:
                total = total + s.heads * self._head_bytes(ctx, s)
        return i64(total)

    def _state_bytes(self, ctx: LayerCtx, p, g, kept: list[Segment]) -> np.ndarray:
        state = 0 if ctx.rank < 0 else self.select.state_bytes(ctx, i64(p), i64(g))
        if self.reader is not None:
            state = state + self.reader.state_bytes(ctx, kept)
        return i64(state)

    def stored_bytes(self, ctx: LayerCtx, p, g) -> np.ndarray:
        """Per-sequence bytes resident in this layer after the prefill and g steps, metadata and state included."""
        kept = self.segments(ctx, p, g)
        return self._segments_bytes(ctx, kept) + self._state_bytes(ctx, p, g, kept)

    def policy_state_bytes(self, ctx: LayerCtx, p, g) -> np.ndarray:
        """Per-sequence policy state in this layer after the prefill and g steps (scores, positions, counts, page
        summaries): the part of stored_bytes that is not the cache itself."""
        return self._state_bytes(ctx, p, g, self.segments(ctx, p, g))

    def prefill_bytes(self, ctx: LayerCtx, p) -> np.ndarray:
        """Per-sequence bytes resident at the end of the prefill, before a deferred compression."""
        if ctx.rank >= 0 and self.merge is None and getattr(self.select, "defers", False):
            return self._segments_bytes(ctx, [Segment(ctx.heads, i64(p))])
        return self.stored_bytes(ctx, p, 0)

    def peak_bytes(self, ctx: LayerCtx, p, gmax) -> np.ndarray:
        """Largest per-sequence stored bytes over steps 0..gmax."""
        kept = self.peak_segments(ctx, p, gmax)
        state = self._state_bytes(ctx, p, gmax, kept)
        return self._segments_bytes(ctx, kept) + state

    def read_bytes(self, ctx: LayerCtx, p, g) -> np.ndarray:
        return self._segments_bytes(ctx, self.read_segments(ctx, p, g))

    def read_tokens(self, ctx: LayerCtx, p, g) -> np.ndarray:
        """Head-tokens read by decode step g+1 (summed over KV heads), the appended token excluded."""
        return self.tokens_of(self.read_segments(ctx, p, g))

    @staticmethod
    def tokens_of(segs: list[Segment]) -> np.ndarray:
        """Head-tokens in a list of segments."""
        return i64(sum(s.heads * i64(s.tokens) for s in segs))

    def bytes_of(self, ctx: LayerCtx, segs: list[Segment]) -> np.ndarray:
        return self._segments_bytes(ctx, segs)

    def write_bytes(self, ctx: LayerCtx, heads: int | None = None) -> int:
        """Bytes one decode step writes for its new token: all heads of the layer, or `heads` of them."""
        k, v = self.dims(ctx)
        per_head = self.quant.write_bytes(k, v, ctx.elem_bits) if self.quant is not None else \
            (k + v) * ctx.elem_bits // 8
        return (ctx.heads if heads is None else heads) * per_head

    def shared_bytes(self, ctx: LayerCtx, heads: int | None = None) -> int:
        """Per-layer bytes shared by all sequences (scorer weights, low-rank bases); with `heads`, what a device
        holding that many KV heads needs (a scorer whole, the bases of its own heads)."""
        n = self.select.shared_bytes(ctx) if ctx.rank >= 0 else 0
        if self.lowrank is not None:
            n += self.lowrank.shared_bytes(ctx.layout.k_dim, ctx.layout.v_dim,
                                           ctx.heads if heads is None else heads, ctx.elem_bits)
        return n

    # ----- recurrent state (SSM, linear attention) -----
    @property
    def quantizes_state(self) -> bool:
        """Whether the quantization applies to recurrent state too (Quant's state=true); selection, merging,
        low rank and offload act on attention KV only."""
        return bool(getattr(self.quant, "state", False))

    def recurrent_bytes(self, parts, act_bits: int, state_bits: int) -> int:
        """Per-sequence bytes of one recurrent layer's state parts (kvsim.model.StatePart): conv windows at the
        activation dtype and state matrices at the state dtype, or every row quantized when the quantization
        applies to recurrent state."""
        total = 0
        for part in parts:
            if self.quantizes_state:
                total += part.rows * self.quant.row_bytes(part.width)
            else:
                total += part.elements * (act_bits if part.kind == "conv" else state_bits) // 8
        return total

    # ----- one tensor-parallel device, holding `heads` of the layer's KV heads -----
    def busiest(self, ctx: LayerCtx, segs: list[Segment], heads: int, per_head) -> np.ndarray:
        """Sum of `per_head(segment)` over the KV heads of the busiest device that holds `heads` of them.
        Segments either all cover every head (parts of each head: every device holds the same), or partition
        the heads (DuoAttention's retrieval and streaming heads: which heads are heavy is decided by the data,
        so the busiest device is the one that holds the heaviest). Never a floor of a proportional share."""
        live = [s for s in segs if s.heads]
        if not live:
            return i64(0)
        loads = [i64(per_head(s)) for s in live]
        if heads >= ctx.heads:
            return i64(sum(s.heads * x for s, x in zip(live, loads)))
        if all(s.heads == ctx.heads for s in live):
            return i64(heads * sum(loads))
        if sum(s.heads for s in live) != ctx.heads:  # no known layout: a proportional share, rounded up
            total = sum(s.heads * x for s, x in zip(live, loads))
            return i64(-(-total * heads // ctx.heads))
        stacked = np.stack(np.broadcast_arrays(*loads))
        counts = np.broadcast_to(np.array([s.heads for s in live]).reshape((-1,) + (1,) * (stacked.ndim - 1)),
                                 stacked.shape)
        order = np.argsort(-stacked, axis=0, kind="stable")
        stacked, counts = np.take_along_axis(stacked, order, 0), np.take_along_axis(counts, order, 0)
        before = np.cumsum(counts, axis=0) - counts
        return i64(np.sum(stacked * np.clip(heads - before, 0, counts), axis=0))

    def _head_load(self, ctx: LayerCtx):
        """Per-head bytes of a segment: its payload plus the sparse reader's per-head state (page summaries)."""
        if self.reader is None:
            return lambda s: self._head_bytes(ctx, s)
        return lambda s: self._head_bytes(ctx, s) + self.reader.state_bytes(ctx, [Segment(1, i64(s.tokens))])

    def device_bytes(self, ctx: LayerCtx, p, g, heads: int, *, peak: bool = False, prefill: bool = False,
                     state: bool = True) -> np.ndarray:
        """stored_bytes (or peak_bytes, or prefill_bytes) of the busiest device holding `heads` KV heads; with
        state=False the cache alone, policy state left out."""
        if not state:
            segs = self.segments(ctx, p, 0 if prefill else g)
            return self.busiest(ctx, segs, heads, lambda s: self._head_bytes(ctx, s))
        if heads >= ctx.heads:
            return self.prefill_bytes(ctx, p) if prefill else (
                self.peak_bytes(ctx, p, g) if peak else self.stored_bytes(ctx, p, g))
        if prefill and ctx.rank >= 0 and self.merge is None and getattr(self.select, "defers", False):
            return self.busiest(ctx, [Segment(ctx.heads, i64(p))], heads, lambda s: self._head_bytes(ctx, s))
        g = 0 if prefill else g
        segs = self.peak_segments(ctx, p, g) if peak else self.segments(ctx, p, g)
        state = 0 if ctx.rank < 0 else self.select.state_bytes(ctx, i64(p), i64(g))  # per head alike
        return self.busiest(ctx, segs, heads, self._head_load(ctx)) + i64(-(-i64(state) * heads // ctx.heads))

    def device_read(self, ctx: LayerCtx, p, g, heads: int) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, head-tokens) decode step g+1 reads on the busiest device holding `heads` KV heads."""
        segs = self.read_segments(ctx, p, g)
        return (self.busiest(ctx, segs, heads, lambda s: self._head_bytes(ctx, s)),
                self.busiest(ctx, segs, heads, lambda s: i64(s.tokens)))

    def on_host(self, ctx: LayerCtx) -> bool:
        return self.place is not None and self.place.offloaded(ctx.kv_rank, ctx.n_kv)

    # ----- arithmetic -----
    def attn_dims(self, ctx: LayerCtx) -> tuple[int, int]:
        """Widths that attention scores and values run over per query head."""
        if self.lowrank is None:
            return ctx.layout.score_dim, ctx.layout.value_dim
        return self.lowrank.ranks(ctx.layout.score_dim, ctx.layout.value_dim)

    def attn_flops(self, ctx: LayerCtx, tokens) -> np.ndarray:
        """Attention FLOP for `tokens` head-tokens read (plus the appended token per head), per sequence."""
        sd, vd = self.attn_dims(ctx)
        n = np.asarray(tokens, dtype=np.float64) + ctx.heads  # FLOP in float64 (limits.py)
        flops = n * ctx.layout.group * (2 * sd + 2 * vd + 5)
        if self.lowrank is not None:  # project the query down and lift the output back, per query head
            flops = flops + ctx.layout.n_q_heads * 2 * (ctx.layout.score_dim * sd + vd * ctx.layout.value_dim)
        return flops

    def step_cost(self, ctx: LayerCtx, p, g) -> tuple[np.ndarray, np.ndarray]:
        """Policy-only (FLOP, bytes) of decode step g+1, per sequence: scoring, selection, dequantisation.
        FLOP are float64 (the selector sees float64 p and g holding whole numbers), bytes int64."""
        p, g = i64(p), i64(g)
        pf, gf = p.astype(np.float64), g.astype(np.float64)
        flops, traffic = (self.select.step_cost(ctx, pf, gf) if ctx.rank >= 0 else (0, 0))
        if self.reader is not None:
            f, b = self.reader.step_cost(ctx, self.segments(ctx, p, g))
            flops, traffic = flops + f, traffic + b
        if self.quant is not None:
            k, v = self.dims(ctx)
            flops = flops + self.quant.dequant_flops(k, v, self.read_tokens(ctx, p, g).astype(np.float64))
        return np.asarray(flops, dtype=np.float64), i64(traffic)

    def prefill_cost(self, ctx: LayerCtx, p) -> tuple[np.ndarray, np.ndarray]:
        """Policy-only (FLOP, bytes) of the prefill, per sequence; FLOP in float64 as in step_cost."""
        p = i64(p).astype(np.float64)
        flops, traffic = (self.select.prefill_cost(ctx, p) if ctx.rank >= 0 else (0, 0))
        if self.merge is not None and ctx.rank >= 0:
            f, b = self.merge.prefill_cost(ctx, p)
            flops, traffic = flops + f, traffic + b
        if self.lowrank is not None:  # fitting the bases: a thin SVD of the prompt's keys and values per head
            k, v = ctx.layout.k_dim, ctx.layout.v_dim
            flops = flops + ctx.heads * 4 * p * (k * k + v * v)
        return np.asarray(flops, dtype=np.float64), i64(traffic)


def compose(*policies: Policy) -> Compose:
    return Compose(tuple(policies))
