"""Bytes and FLOP per phase, and roofline time.

Accounting follows LLM-Viewer's per-operator analysis at the granularity of operation classes, per layer:
  gemm         weight matmuls: FLOP = 2 x active parameters x tokens; bytes = weights read
  attention    FLOP = scores and weighted values over the tokens read; bytes = KV read + KV written
  elementwise  activation traffic (norms, residuals, activations, rope): each intermediate written once and
               read once
  policy       the KV policy's own work (scoring, selection, dequantisation, page metadata)
  comm         tensor-parallel all-reduces over the interconnect
  host         offloaded KV streamed over the host link
Each class's time in a layer is max(FLOP / achieved compute, bytes / achieved bandwidth) (plus the share of the
shorter one a profile does not overlap: Profile.compute_memory_overlap); layers add up;
fixed overheads from the profile are added per step, per layer and per prompt token. With offload and
overlap, a step takes the larger of device time and host-link time.

All functions take numpy arrays for the prompt length, generated tokens and batch, and broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import KvsimError
from .hardware import HardwareSpec
from . import kernels
from .model import MLA, MLP, Attention, Layer, LinearAttention, Mamba, ModelSpec, MoE, touched_experts
from .parallel import check_model as check_tensor_parallel
from .parallel import kv_heads_per_device
from .policies.base import LayerCtx
from .policies.compose import Compose
from .policies.quant import dequant_ops
from .profile import Profile
from .units import DTYPE_BITS, canonical_dtype
from .weights import on_device as weights_on_device
from .weights import resolve as resolve_weights


# An unfused Mamba-1 scan (transformers' mamba_selective_scan) steps each prompt token with a multiply, an add
# and a matmul with C.
SCAN_STEP_KERNELS = 3
# The gated delta rule's torch prefill walks its chunks in a Python loop: kernels launched per chunk (the chunk's
# decayed state read, its correction, the output and the state's update), counted as layer_kernels' are.
DELTA_CHUNK_KERNELS = 9
# Bytes per element of an unfused recurrent path's temporaries: transformers' torch SSD, delta-rule and scan
# paths upcast to fp32 (`.float()`) whatever the model's dtype.
UNFUSED_TEMP_BYTES = 4


@dataclass(frozen=True)
class Group:
    """Identical layers evaluated once: `count` layers like `layer`, seen by the policy through `ctx`."""

    members: tuple[int, ...]  # indices of the layers in the group
    layer: Layer
    ctx: LayerCtx | None  # None for layers without a per-token cache of their own
    source: LayerCtx | None  # for layers that read another layer's cache (CLA/YOCO)
    on_host: bool

    @property
    def count(self) -> int:
        return len(self.members)


def layer_contexts(model: ModelSpec, kv_bits: int) -> list[LayerCtx | None]:
    """The policy view of each layer; None for layers with no per-token cache of their own."""
    layouts = [l.mixer.kv_layout() if l.has_kv else None for l in model.layers]
    # ranks by a running count, not list.index: linear in the layer count (index made 100k layers hang)
    n_evict = sum(1 for lay in layouts if lay is not None and lay.evictable)
    n_own = sum(1 for lay in layouts if lay is not None)
    ctxs: list[LayerCtx | None] = []
    seen_evict = seen_own = 0
    for i, lay in enumerate(layouts):
        if lay is None:
            ctxs.append(None)
            continue
        rank = seen_evict if lay.evictable else -1
        ctxs.append(LayerCtx(i, lay, rank, n_evict, seen_own, n_own, kv_bits))
        seen_evict += bool(lay.evictable)
        seen_own += 1
    return ctxs


def _policy_key(policy: Compose, ctx: LayerCtx | None) -> tuple:
    """What makes a layer's policy behaviour differ from its neighbours'."""
    if ctx is None:
        return ()
    key: list = [ctx.rank < 0, policy.on_host(ctx), ctx.layout]
    sel = policy.select
    if ctx.rank >= 0 and hasattr(sel, "layer_budget"):
        key.append(sel.layer_budget(ctx))
    if policy.merge is not None:
        key.append(policy.merge.pair_position(ctx))
    return tuple(key)


def group_layers(model: ModelSpec, policy: Compose, kv_bits: int) -> list[Group]:
    ctxs = layer_contexts(model, kv_bits)
    groups: dict[tuple, list] = {}
    for i, layer in enumerate(model.layers):
        ctx = ctxs[i]
        src = None
        if isinstance(layer.mixer, Attention) and layer.mixer.shares_kv_with >= 0:
            src = ctxs[layer.mixer.shares_kv_with]
        key = (layer, _policy_key(policy, ctx), _policy_key(policy, src))
        if key in groups:
            groups[key][0].append(i)
        else:
            groups[key] = [[i], ctx, src]
    return [Group(tuple(members), layer, ctx, src, ctx is not None and policy.on_host(ctx))
            for (layer, _, _), (members, ctx, src) in groups.items()]


def causal_pairs(p: np.ndarray, span) -> np.ndarray:
    """Query-key pairs in a causal prefill of p tokens when each query sees at most `span` keys (0: all);
    span may be an array. float64: a count of FLOP grows with the square of the prompt and passes 2**63
    where no byte count does."""
    p = np.asarray(p, dtype=np.float64)
    full = p * (p + 1) / 2
    if not np.any(span):
        return full
    return np.where((span > 0) & (p > span), span * (span + 1) / 2 + (p - span) * span, full)


def expected_experts(moe: MoE, tokens: np.ndarray) -> np.ndarray:
    """Experts whose weights a batch of `tokens` routed tokens touches, with uniform independent routing."""
    return touched_experts(moe.n_experts, moe.top_k, tokens)


def prefill_dims(layer: Layer, ctx: LayerCtx) -> tuple[int, int]:
    """(score, value) widths per query head of a prompt's attention. A latent MLA cache is attended per head
    at the prefill (the prompt's K and V are decompressed, as vLLM and SGLang do) and absorbed only in decode
    steps, whose widths are the layout's."""
    if isinstance(layer.mixer, MLA):
        return layer.mixer.prefill_dims()
    return ctx.layout.score_dim, ctx.layout.value_dim


def scan_launches(mixer, tokens) -> np.ndarray:
    """Launches of an unfused prefill's scan that grow with the prompt, for the whole batch: a stepped Mamba-1
    scan's SCAN_STEP_KERNELS per token, the delta rule's chunk loop's DELTA_CHUNK_KERNELS per chunk (SSD has no
    loop; layer_kernels counts every mixer's fixed set)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    if isinstance(mixer, Mamba) and mixer.version == 1:
        return SCAN_STEP_KERNELS * tokens
    if isinstance(mixer, LinearAttention):
        return DELTA_CHUNK_KERNELS * mixer.chunks(tokens)
    return 0.0 * tokens


def unfused_attention(layer: Layer) -> bool:
    """Whether an eager torch executor runs this layer's prompt attention unfused: the fused CPU kernel
    behind scaled_dot_product_attention (flash) takes one head width for q, k and v and no sink logits, so
    MLA (score width qk_nope + qk_rope against value width v_head_dim) falls back to its math path, and
    sink logits (gpt-oss) need an explicit softmax. GPU engines run both fused (FlashMLA, FlashAttention-3
    with sinks); their profiles leave unfused_attention_s at 0."""
    mixer = layer.mixer
    if isinstance(mixer, MLA):
        score, value = mixer.prefill_dims()
        return score != value
    return isinstance(mixer, Attention) and (mixer.sinks or mixer.dv != mixer.head_dim)


def _add_executor_time(ph: "Phase", label: str, t, totals: bool) -> None:
    """An executor term priced per element (no FLOP or bytes of its own): its time, and with `totals` its
    breakdown row."""
    ph.time_s = ph.time_s + t
    if totals:
        row = ph.parts.setdefault(label, [0.0] * 5)
        row[4] = row[4] + t


def _mlp_weight_bytes(model: ModelSpec, layer: Layer, tokens: np.ndarray, wbytes: float) -> np.ndarray:
    mlp = layer.mlp
    if mlp is None:
        return np.zeros_like(tokens, dtype=np.float64)
    if isinstance(mlp, MoE):
        h = model.hidden
        dense = mlp.active_params(h) - mlp.top_k * mlp.expert_params(h)
        return (dense + expected_experts(mlp, tokens) * mlp.expert_params(h)) * wbytes
    return np.full(np.shape(tokens), mlp.params(model.hidden) * wbytes, dtype=np.float64)


def _activation_width(model: ModelSpec, layer: Layer) -> tuple[int, int]:
    """(sum of per-token intermediate widths written in one layer, widest live set) in elements."""
    h = model.hidden
    mixer = layer.mixer
    if isinstance(mixer, Attention):
        mix = mixer.n_heads * mixer.head_dim + mixer.n_kv_heads * (mixer.head_dim + mixer.dv) + mixer.n_heads * mixer.dv
        mix += mixer.n_heads * mixer.head_dim if mixer.out_gate else 0
    elif isinstance(mixer, MLA):
        mix = (mixer.n_heads * (mixer.qk_nope_head_dim + mixer.qk_rope_head_dim) + mixer.kv_lora_rank
               + mixer.n_heads * (mixer.qk_nope_head_dim + 2 * mixer.v_head_dim))
    elif isinstance(mixer, Mamba):
        mix = 3 * mixer.d_inner + mixer.conv_channels
    else:
        mix = 3 * mixer.n_heads * mixer.key_dim + 2 * mixer.n_heads * mixer.value_dim
    inter = layer.mlp.active_intermediate() if layer.mlp is not None else 0
    # an activation written as a formula (GPT-2's gelu_new) writes an intermediate-wide tensor per operation
    formula = layer.mlp.act_kernels - 1 if isinstance(layer.mlp, MLP) else 0
    written = 5 * h + mix + (3 + formula) * inter  # norm outs, o-proj out, residual adds, mlp outs
    live = 2 * h + max(mix, 3 * inter)
    return written, live


def _matmuls(layer: Layer) -> int:
    """Weight-matmul kernels of one layer as engines launch them: fused QKV and output projections, fused
    gate-up and down projections (an MoE adds its router), MLA's down- and up-projections."""
    mixer = layer.mixer
    n = 5 if isinstance(mixer, MLA) else 2
    if isinstance(layer.mlp, MoE):
        n += 3
    elif layer.mlp is not None:
        n += 2
    return n


class Roofline:
    """One operation class's achieved peak and bandwidth: (flops, bytes) -> (compute time, memory time), and
    the class's time from the two. The datasheet roofline hides the shorter under the longer (their max);
    where one core issues both the loads and the arithmetic (a CPU), only `overlap` of the shorter is hidden,
    down to their sum at 0 (Profile.compute_memory_overlap)."""

    __slots__ = ("peak", "bw", "serial")

    def __init__(self, peak, bw, overlap: float = 1.0):
        self.peak, self.bw, self.serial = peak, bw, 1.0 - overlap

    def __call__(self, flops, bytes_):
        return flops / self.peak, bytes_ / self.bw

    def time(self, c, m):
        t = np.maximum(c, m)
        return t + self.serial * np.minimum(c, m) if self.serial else t


def _weight_matmuls(layer: Layer, hidden: int, tp: int, kv_heads: int) -> list[tuple[float, float]]:
    """(n, k) of each weight matmul one tensor-parallel device runs in a layer, routed experts aside: fused QKV
    (its `kv_heads` KV heads) and output projections, gate-up and down projections (an MoE's router and shared
    experts). Mixers whose projections kvsim does not list (MLA, Mamba, linear attention) run as one matmul of
    their parameters over the hidden width."""
    mixer, mlp, h = layer.mixer, layer.mlp, hidden
    if isinstance(mixer, Attention):
        q = mixer.n_heads // tp
        kv = 0 if mixer.shares_kv_with >= 0 else kv_heads * (mixer.head_dim + mixer.dv)
        out = [(q * mixer.head_dim + kv, h), (h, q * mixer.dv)]
    else:
        out = [(mixer.params(h) / (h * tp), h)]
    if isinstance(mlp, MoE):
        out.append((mlp.n_experts, h))
        if mlp.n_shared:
            inter = mlp.n_shared * (mlp.shared_intermediate or mlp.expert_intermediate)
            out += [((2 if mlp.gated else 1) * inter / tp, h), (h, inter / tp)]
    elif isinstance(mlp, MLP):
        out += [((2 if mlp.gated else 1) * mlp.intermediate / tp, h), (h, mlp.intermediate / tp)]
    return out



@dataclass
class Phase:
    """Sums over layers for one forward pass of the whole batch, on one device. Fields start as scalar 0
    and grow to the broadcast shape of what is added, so step-independent work stays small. `flops` and
    `bytes` are per device for the whole batch."""

    compute_s: object = 0.0
    memory_s: object = 0.0
    time_s: object = 0.0  # roofline time of the device work, overheads excluded
    host_s: object = 0.0
    comm_s: object = 0.0
    flops: object = 0.0
    bytes: object = 0.0
    policy_layers: int = 0
    # per operation class (label -> [flops, bytes, compute_s, memory_s, time_s]): what `kvsim predict
    # --breakdown` prints; the same numbers as the totals, split by where they were added
    parts: dict = field(default_factory=dict, compare=False)

    def add(self, n: int, flops, bytes_, timer: "Roofline", totals: bool = True, label: str = "other") -> None:
        """Add `n` layers' worth of one operation class; `timer(flops, bytes)` gives its two times."""
        c, m = timer(flops, bytes_)
        t = timer.time(c, m)
        self.add_times(n, flops, bytes_, c, m, t, totals, label)

    def add_times(self, n: int, flops, bytes_, c, m, t, totals: bool = True, label: str = "other") -> None:
        """Add `n` layers' worth of one operation class that takes `t`, its roofline sides being `c` and `m`
        (a kernel's time from kvsim/kernels.py need not be their max)."""
        self.time_s = self.time_s + n * t
        if totals:
            row = self.parts.setdefault(label, [0.0] * 5)
            for i, v in enumerate((flops, bytes_, c, m, t)):
                row[i] = row[i] + n * v
            self.compute_s = self.compute_s + n * c
            self.memory_s = self.memory_s + n * m
            self.flops = self.flops + n * flops
            self.bytes = self.bytes + n * bytes_

    def __add__(self, other: "Phase") -> "Phase":
        parts = {k: list(v) for k, v in self.parts.items()}
        for k, v in other.parts.items():
            parts[k] = [a + b for a, b in zip(parts.get(k, [0.0] * 5), v)]
        return Phase(*(getattr(self, f) + getattr(other, f) for f in
                       ("compute_s", "memory_s", "time_s", "host_s", "comm_s", "flops", "bytes", "policy_layers")),
                     parts=parts)


class CostModel:
    """Bytes, FLOP and time for one (model, hardware, policy, dtypes, parallelism, profile)."""

    def __init__(self, model: ModelSpec, hardware: HardwareSpec, policy: Compose, *, kv_dtype: str | None,
                 weight_dtype: str | None, tp: int, pp: int, profile: Profile, state_dtype: str | None = None):
        if tp < 1 or pp < 1:
            raise KvsimError("tensor and pipeline parallel degrees must be positive")
        if pp > model.n_layers:
            raise KvsimError(f"pipeline degree {pp} exceeds the model's {model.n_layers} layers")
        self.model, self.hw, self.policy, self.profile = model, hardware, policy, profile
        self.tp, self.pp = tp, pp
        check_tensor_parallel(model, tp)
        # Weight format (weights.py): stored bits, and the dtypes activations and matmuls run in on this device.
        self.weights = resolve_weights(weight_dtype, model.weight_dtype)
        self.weight_dtype = self.weights.spec
        self.act_dtype, self.gemm_dtype, self.notes = weights_on_device(self.weights, hardware)
        self.wbytes = float(self.weights.bits) / 8  # per linear-layer weight
        self.head_wbytes = float(self.weights.head_bits) / 8  # per output-head weight
        self.abytes = DTYPE_BITS[self.act_dtype] // 8
        self.kv_dtype = canonical_dtype(kv_dtype or self.act_dtype)
        self.kv_bits = DTYPE_BITS[self.kv_dtype]
        if self.kv_bits % 8:
            raise KvsimError("the KV dtype must be at least a byte wide; use a quantization policy for fewer bits")
        # Recurrent (SSM, linear-attention) state matrices: float32 unless asked (transformers keeps them in
        # float32 whatever the model dtype: measured); conv windows hold activations, at the activation dtype.
        self.state_dtype = canonical_dtype(state_dtype or "fp32")
        self.state_bits = DTYPE_BITS[self.state_dtype]
        if self.state_bits % 8:
            raise KvsimError("the state dtype must be at least a byte wide; use quant:state=true for fewer bits")
        self.groups = group_layers(model, policy, self.kv_bits)
        bw = profile.memory_bandwidth or hardware.memory_bandwidth
        peak = profile.peak_flops or hardware.peak_flops(self.act_dtype)
        self.raw_bw, self.raw_peak = bw, peak
        # W8A8 weight matmuls run on the 8-bit units: the datasheet ratio scales a measured peak as well.
        self.raw_gemm_peak = peak * hardware.peak_flops(self.gemm_dtype) / hardware.peak_flops(self.act_dtype)
        self.bw = bw * profile.mem_efficiency
        self.peak = peak * profile.compute_efficiency
        self.kernels, self.prefill_kernels = model.kernels(), model.kernels(prefill=True)
        # Norms, residuals, activations and rope; off only to compare with tables that time matmuls and
        # attention alone (calibrate/kernels/compose.py).
        self.elementwise = True
        self._weight_bytes = None
        # Graph-replayed kernels still have a floor each: weight matmuls and attention kernels per pass.
        self.matmuls = sum(_matmuls(l) for l in model.layers)
        if self.gemm_dtype != self.act_dtype:  # W8A8: a kernel quantises each matmul's activations first
            self.matmuls *= 2
        self.matmuls += 1  # the logits
        self.attention_kernels = sum(isinstance(l.mixer, (Attention, MLA)) for l in model.layers)
        self.policy_active = [g.ctx is not None and g.ctx.rank >= 0 and self._policy_works(g.ctx)
                              for g in self.groups]
        if tp > 1 and policy.data_dependent:
            self.notes.append(f"{policy.select.name} splits its budget across heads or layers at run time: per-device "
                              "KV under tensor parallelism is the average; the busiest device can hold more")

    def _policy_works(self, ctx: LayerCtx) -> bool:
        pol = self.policy
        return pol.select.name != "full" or pol.reader is not None or pol.quant is not None or \
            pol.lowrank is not None or pol.merge is not None

    # ----- helpers -----
    def kv_share(self, ctx: LayerCtx) -> float:
        """Fraction of a layer's KV heads one device holds (exact: tp splits them evenly or replicates)."""
        return self.heads_on_device(ctx) / ctx.layout.n_kv_heads

    def _on_device(self, ctx: LayerCtx, nbytes):
        """One device's integer share of `nbytes` spread evenly over a layer's KV heads."""
        h, n = self.heads_on_device(ctx), ctx.layout.n_kv_heads
        # nbytes * h // n without forming nbytes * h, which overflows int64 for wide layers (h ~ n ~ 8,000)
        return (nbytes // n) * h + (nbytes % n) * h // n

    def heads_on_device(self, ctx: LayerCtx) -> int:
        """KV heads of this layer one tensor-parallel device holds (parallel.py: split, or replicated when the
        degree exceeds the KV heads; MQA and MLA latents on every device)."""
        return kv_heads_per_device(ctx.layout.n_q_heads, ctx.layout.n_kv_heads, self.tp)

    def _timer(self, tokens, policy: bool = False, kv: bool = False, gemm: bool = False, seq_tokens=None,
               units=None, moe: bool = False):
        """Roofline of one operation class in one layer: flops, bytes -> (compute time, memory time).
        Matrix work over `tokens` rows runs at the profile's size-dependent efficiency; attention (when
        `seq_tokens`, the tokens per sequence, is given) at its own ramp; the policy's own elementwise
        arithmetic at policy_efficiency; KV traffic at the KV dtype's fraction of the bandwidth (spread over
        `units` (sequence, KV head) pairs in a decode step, when given). Weight
        matmuls (gemm) run at the weight format's matmul peak, everything else at the activation dtype's."""
        prof = self.profile
        raw = self.raw_gemm_peak if gemm else self.raw_peak
        if policy:
            peak = raw * prof.policy_efficiency
        elif seq_tokens is not None:
            peak = self.raw_peak * prof.attention_fraction(seq_tokens, tokens)
        else:
            peak = raw * prof.matmul_fraction(tokens, self.gemm_dtype if gemm else self.act_dtype)
            if moe:
                peak = peak * prof.moe_efficiency
        bw = self.raw_bw * prof.kv_fraction(self.kv_dtype, units) if kv else self.bw
        return Roofline(peak, bw, prof.compute_memory_overlap)

    # ----- KV bytes -----
    def kv_stored(self, p, g, *, peak: bool = False, per_device: bool = False, place: str = "all",
                  prefill: bool = False, state: bool = True) -> np.ndarray:
        """Per-sequence KV bytes over all layers (payload, metadata and policy state, not shared parts).
        place: "all", "device" (layers kept on the device) or "host" (offloaded layers); prefill: what is
        resident at the end of the prefill (g ignored); state=False: the cache alone, without policy state
        (not with peak or prefill)."""
        total = 0
        for grp in self.groups:
            if grp.ctx is None or (place == "device" and grp.on_host) or (place == "host" and not grp.on_host):
                continue
            if per_device:  # the busiest device's share
                b = self.policy.device_bytes(grp.ctx, p, g, self.heads_on_device(grp.ctx), peak=peak,
                                             prefill=prefill, state=state)
            elif not state:
                b = self.policy.stored_bytes(grp.ctx, p, g) - self.policy.policy_state_bytes(grp.ctx, p, g)
            elif prefill:
                b = self.policy.prefill_bytes(grp.ctx, p)
            else:
                b = self.policy.peak_bytes(grp.ctx, p, g) if peak else self.policy.stored_bytes(grp.ctx, p, g)
            total = total + grp.count * b
        return np.asarray(total, dtype=np.int64)

    def policy_state(self, p, g, place: str = "all") -> np.ndarray:
        """Per-sequence policy state over all layers (scores, positions, counts, page summaries)."""
        total = 0
        for grp in self.groups:
            if grp.ctx is None or (place == "device" and grp.on_host) or (place == "host" and not grp.on_host):
                continue
            total = total + grp.count * self.policy.policy_state_bytes(grp.ctx, p, g)
        return np.asarray(total, dtype=np.int64)

    def kv_layer_stored(self, p, g) -> list[tuple[int, np.ndarray]]:
        """(layer index, per-sequence cache bytes, policy state excluded) for every layer with a cache of its own."""
        out = []
        for grp in self.groups:
            if grp.ctx is None:
                continue
            b = self.policy.stored_bytes(grp.ctx, p, g) - self.policy.policy_state_bytes(grp.ctx, p, g)
            out.extend((i, b) for i in grp.members)
        return sorted(out, key=lambda t: t[0])

    def shared_bytes(self, per_device: bool = False) -> int:
        total = 0
        for grp in self.groups:
            if grp.ctx is not None:
                heads = self.heads_on_device(grp.ctx) if per_device else None
                total += grp.count * self.policy.shared_bytes(grp.ctx, heads)
        return int(total)

    def layer_state_bytes(self, mixer) -> int:
        """Per-sequence recurrent state of one layer (0 for attention layers)."""
        if not isinstance(mixer, (Mamba, LinearAttention)):
            return 0
        return self.policy.recurrent_bytes(mixer.state_parts(self.model.hidden), 8 * self.abytes, self.state_bits)

    def state_bytes(self) -> int:
        """Per-sequence recurrent state of SSM and linear-attention layers."""
        return int(sum(grp.count * self.layer_state_bytes(grp.layer.mixer) for grp in self.groups))

    # ----- weights -----
    def weight_bytes(self) -> int:
        if self._weight_bytes is None:  # a walk over every layer's parameters: asked for several times a call
            self._weight_bytes = self.weights.weight_bytes(self.model)
        return self._weight_bytes

    # ----- phases -----
    def _attention(self, grp: Group, p, s, prefill: bool):
        """(FLOP over all devices, bytes on the busiest device, host-link bytes of that device) of one layer's
        attention or state work, per sequence. Attention FLOP split evenly: query heads divide by tp."""
        mixer, pol = grp.layer.mixer, self.policy
        if isinstance(mixer, (Mamba, LinearAttention)):
            state = self.layer_state_bytes(mixer)
            flops = mixer.prefill_flops(p) if prefill else np.float64(mixer.step_flops())
            if pol.quantizes_state:  # the pass dequantises the state it reads and quantises what it writes
                elements = sum(part.elements for part in mixer.state_parts(self.model.hidden))
                flops = flops + 2.0 * dequant_ops(pol.quant.bits, pol.quant.kind) * elements
            return flops, 2.0 * state / self.tp, 0.0
        ctx = grp.ctx if grp.ctx is not None else grp.source
        heads = self.heads_on_device(ctx)
        if prefill:
            span = ctx.layout.span
            edge = (self.profile.for_prefill() if self.profile.tiled else self.profile).window_edge_tokens
            pairs = causal_pairs(p, span + edge if span else 0)
            sd, vd = prefill_dims(grp.layer, ctx)
            flops = pairs * ctx.layout.n_q_heads * (2 * sd + 2 * vd + 5)
            written = pol.device_bytes(grp.ctx, p, 0, heads) if grp.ctx is not None else 0
            return flops, written, (written if grp.on_host else 0)
        segs = pol.read_segments(ctx, p, s)
        flops = pol.attn_flops(ctx, pol.tokens_of(segs))
        read = pol.device_read(ctx, p, s, heads)[0]
        span = ctx.layout.span
        edge = float(self.profile.window_edge(prefill_dims(grp.layer, ctx)[0], self.kv_dtype or ""))
        if span and edge:  # a window that binds is read with the tiles at its edge
            resident = p + s + 1
            read = read * (np.minimum(resident, span + edge) / np.minimum(resident, span))
        moved = read + (pol.write_bytes(ctx, heads) if grp.ctx is not None else 0)
        return flops, moved, (moved if grp.on_host else 0)

    def fixed_phase(self, p, b, prefill: bool) -> Phase:
        """The part of a forward pass that does not depend on how full the cache is: weight matmuls,
        activation traffic, embeddings and logits, all-reduces."""
        tokens = np.multiply(b, p, dtype=np.float64) if prefill else np.asarray(b, dtype=np.float64)
        return self.pass_phase(tokens, b)

    def pass_phase(self, tokens, b) -> Phase:
        """fixed_phase of one forward pass over `tokens` rows from `b` sequences (one logit row each): a
        serving step mixing prefill chunks and decode tokens is one such pass."""
        return self._kernel_pass_phase(tokens, b) if self.profile.tiled else self._roofline_pass_phase(tokens, b)

    def _roofline_pass_phase(self, tokens, b) -> Phase:
        """pass_phase as the per-layer roofline prices it."""
        model, tp, h = self.model, self.tp, self.model.hidden
        tokens = np.asarray(tokens, dtype=np.float64)
        ph = Phase()
        matrix = self._timer(tokens)
        weight_matmul = self._timer(tokens, gemm=True)
        for grp in self.groups:
            layer, n = grp.layer, grp.count
            active = layer.mixer.params(h) + (layer.mlp.active_params(h) if layer.mlp else 0)
            w_bytes = layer.mixer.params(h) * self.wbytes + _mlp_weight_bytes(model, layer, tokens, self.wbytes)
            if isinstance(layer.mlp, MoE):  # routed experts: their own kernels, each over its share of rows
                moe, ep = layer.mlp, layer.mlp.expert_params(h)
                touched = expected_experts(moe, tokens)
                r_bytes = touched * ep * self.wbytes
                ph.add(n, 2.0 * moe.top_k * ep * tokens / tp, r_bytes / tp,
                       self._timer(tokens * moe.top_k / touched, gemm=True, moe=True), label="MoE experts")
                active, w_bytes = active - moe.top_k * ep, w_bytes - r_bytes
            ph.add(n, 2.0 * active * tokens / tp, w_bytes / tp, weight_matmul, label="weight matmuls")
            if self.elementwise:
                written, _ = _activation_width(model, layer)
                ph.add(n, 0.0, 2.0 * tokens * written * self.abytes / tp, matrix, label="activations")
            self._comm(ph, n, tokens)
        head_flops = 2.0 * model.vocab * h * b / tp  # logits for the last position of each sequence
        head_bytes = (model.vocab * h * self.head_wbytes + tokens * h * self.abytes * 3) / tp
        ph.add(1, head_flops, head_bytes, self._timer(b), label="LM head")
        return ph

    def _matmul(self, m, n, k, gemm: bool = True, **kw):
        """kernels.matmul of one weight matmul: the weight format's (gemm) or the activations' peak."""
        w8a8 = gemm and self.gemm_dtype != self.act_dtype
        return kernels.matmul(self.profile, self.hw, m, n, k, peak=self.raw_gemm_peak if gemm else self.raw_peak,
                              bw=self.raw_bw, wbytes=self.wbytes if gemm else self.head_wbytes,
                              abytes=DTYPE_BITS[self.gemm_dtype] / 8 if w8a8 else self.abytes,
                              dtype=self.gemm_dtype if gemm else self.act_dtype, quantised=w8a8, **kw)

    def _comm(self, ph: Phase, n: int, tokens) -> None:
        if self.tp > 1:
            if not self.hw.interconnect_bandwidth:
                raise KvsimError(f"{self.hw.name} has no interconnect for tensor parallelism")
            tp, prof = self.tp, self.profile
            volume = 2 * tokens * self.model.hidden * self.abytes * 2 * (tp - 1) / tp  # two all-reduces per layer
            ph.comm_s = ph.comm_s + n * (volume / (self.hw.interconnect_bandwidth * prof.comm_efficiency)
                                         + 2 * prof.allreduce_overhead_s)

    def _kernel_pass_phase(self, tokens, b) -> Phase:
        """pass_phase with every weight matmul priced as one kernel (kernels.matmul): the same FLOP and bytes,
        each matmul's own tiles, waves and split-K."""
        model, tp, h = self.model, self.tp, self.model.hidden
        tokens = np.asarray(tokens, dtype=np.float64)
        ph = Phase()
        matrix = self._timer(tokens)
        for grp in self.groups:
            layer, n = grp.layer, grp.count
            kv_heads = self.heads_on_device(grp.ctx or grp.source) if isinstance(layer.mixer, Attention) else 0
            for mm_n, mm_k in _weight_matmuls(layer, h, tp, kv_heads):
                c, m, t = self._matmul(tokens, mm_n, mm_k)
                ph.add_times(n, 2.0 * tokens * mm_n * mm_k, mm_n * mm_k * self.wbytes, c, m, t,
                             label="weight matmuls")
            if isinstance(layer.mlp, MoE):  # routed experts: one grouped GEMM each for gate-up and down
                moe = layer.mlp
                touched = expected_experts(moe, tokens)
                rows = tokens * moe.top_k / touched
                inter = moe.expert_intermediate / tp
                for mm_n, mm_k in (((2 if moe.gated else 1) * inter, h), (h, inter)):
                    c, m, t = self._matmul(rows, mm_n, mm_k, groups=touched, moe=True)
                    ph.add_times(n, 2.0 * tokens * moe.top_k * mm_n * mm_k, touched * mm_n * mm_k * self.wbytes,
                                 c, m, t, label="MoE experts")
            if self.elementwise:
                written, _ = _activation_width(model, layer)
                ph.add(n, 0.0, 2.0 * tokens * written * self.abytes / tp, matrix, label="activations")
            self._comm(ph, n, tokens)
        c, m, t = self._matmul(b, model.vocab / tp, h, gemm=False)  # logits for the last position of each sequence
        ph.add_times(1, 2.0 * model.vocab * h * b / tp, model.vocab * h * self.head_wbytes / tp, c, m, t,
                     label="LM head")
        if self.elementwise:  # the final norm over every row
            ph.add(1, 0.0, tokens * h * self.abytes * 3 / tp, matrix, label="activations")
        return ph

    def _kernel_attention(self, ph: Phase, grp: Group, n: int, a_flops, a_bytes, p, s, b, prefill: bool,
                          totals: bool) -> None:
        """One layer group's attention kernels priced by kernels.attention (per batch, busiest device)."""
        kv_ctx = grp.ctx or grp.source
        heads = self.heads_on_device(kv_ctx)
        units = b * heads
        if prefill:
            seq = np.asarray(p, dtype=np.float64)
            tokens = None
        else:  # tokens each (sequence, KV head) reads
            seq = np.maximum(np.asarray(self.policy.device_read(kv_ctx, p, s, heads)[1], dtype=np.float64) / heads,
                             1.0)
            tokens = seq
        c, m, t = kernels.attention(self.profile, self.hw, flops=a_flops * b, kv_bytes=a_bytes * b,
                                    kv_dtype=self.kv_dtype, seq_tokens=seq, units=units,
                                    head_dim=kv_ctx.layout.k_dim, decode=not prefill, tokens=tokens, seqs=b,
                                    peak=self.raw_peak, bw=self.raw_bw,
                                    group=kv_ctx.layout.n_q_heads / kv_ctx.layout.n_kv_heads)
        ph.add_times(n, a_flops * b, a_bytes * b, c, m, t, totals=totals, label="attention (KV read/write)")

    def cache_phase(self, p, b, s, prefill: bool, totals: bool = True) -> Phase:
        """The part that depends on the cache: attention (or SSM state) and the KV policy's own work, for
        the prefill or for decode step s+1. Per-sequence work is summed at the shape of (p, s) and scaled by
        the batch once; only each class's roofline max needs the full shape. With totals=False the
        compute/memory split is skipped (times, FLOP and bytes are still summed)."""
        tp = self.tp
        ph = Phase()
        host = flops = traffic = 0.0
        attention = self._timer(np.multiply(b, p, dtype=np.float64) if prefill else b, kv=True, seq_tokens=p)
        per_seq_s = self.profile.attention_seq_overhead_s
        b = np.asarray(b, dtype=np.float64)  # batch-scaled work in float64 (limits.py)
        policy_timer = self._timer(0, policy=True)
        for grp, active in zip(self.groups, self.policy_active):
            n = grp.count
            a_flops, a_bytes, a_host = self._attention(grp, p, s, prefill)  # a_bytes: the busiest device's
            a_flops, a_bytes = a_flops / tp, np.asarray(a_bytes, dtype=np.float64)
            kv_ctx = grp.ctx or grp.source
            if self.profile.tiled and kv_ctx is not None:
                self._kernel_attention(ph, grp, n, a_flops, a_bytes, p, s, b, prefill, totals)
            else:
                timer = attention
                if not prefill and self.profile.kv_half_units and kv_ctx is not None:
                    units = self.profile.decode_units(b * self.heads_on_device(kv_ctx), p + s + 1)
                    timer = self._timer(b, kv=True, seq_tokens=p, units=units)
                ph.add(n, a_flops * b, a_bytes * b, timer, totals=totals, label="attention (KV read/write)")
                if per_seq_s and kv_ctx is not None:
                    ph.time_s = ph.time_s + n * b * self.heads_on_device(kv_ctx) * per_seq_s
                if not prefill and kv_ctx is not None and self.profile.decode_seq_overhead_s:
                    ph.time_s = ph.time_s + n * self.profile.decode_seq_s(b)
            flops, traffic = flops + n * a_flops, traffic + n * a_bytes
            if not prefill and grp.ctx is not None and self.profile.materialised_reads:
                self._add_copy(ph, grp, p, s, b * n, attention, totals)
            if prefill:
                self.add_unfused_prefill(ph, grp, p, p, b, totals)
            elif self.profile.unfused_state_s and isinstance(grp.layer.mixer, (Mamba, LinearAttention)):
                self._add_unfused_state(ph, grp, b, totals)
            if grp.on_host:
                host = host + n * a_host
            if grp.ctx is not None and grp.ctx.rank >= 0 and active:
                pf, pb = self.policy.prefill_cost(grp.ctx, p) if prefill else self.policy.step_cost(grp.ctx, p, s)
                pf, pb = np.asarray(pf, dtype=np.float64) / tp, np.asarray(pb, dtype=np.float64) / tp
                ph.add(n, pf * b, pb * b, policy_timer, totals=totals, label="KV policy work")
                flops, traffic = flops + n * pf, traffic + n * pb
                ph.policy_layers += n
        if not totals:
            ph.flops, ph.bytes = flops, traffic  # per sequence: the caller averages, then scales by batch
        if self.hw.host_bandwidth:
            ph.host_s = host * b / self.hw.host_bandwidth
        elif np.any(host):
            raise KvsimError(f"{self.hw.name} lists no host link bandwidth for offload")
        return ph

    def full_width_read_bytes(self, ctx, p, g, per_device: bool = False) -> np.ndarray:
        """Per-sequence bytes of decode step g+1's reads at the full KV dtype: the size of a dequantised,
        gathered or grown copy of them (all heads, or the busiest device's)."""
        lay = ctx.layout
        tokens = self.policy.device_read(ctx, p, g, self.heads_on_device(ctx))[1] if per_device else \
            self.policy.read_tokens(ctx, p, g)
        return tokens * (lay.k_dim + lay.v_dim) * self.kv_bits // 8

    def _add_copy(self, ph: Phase, grp: Group, p, s, scale, timer, totals: bool) -> None:
        """Time (not counted as the policy's bytes) of an unfused executor writing a dequantised or gathered
        copy of the step's reads and reading it back; attention reads a plain cache as stored."""
        if self.policy.quant is None and self.policy.reader is None:
            return
        moved = 2.0 * self.profile.materialised_reads * self.full_width_read_bytes(grp.ctx, p, s, True) * scale
        _, m = timer(0.0, moved)
        ph.time_s = ph.time_s + m
        if totals:
            ph.memory_s = ph.memory_s + m
            row = ph.parts.setdefault("unfused KV copy", [0.0] * 5)
            for i, v in ((1, moved), (3, m), (4, m)):
                row[i] = row[i] + v

    def add_unfused_prefill(self, ph: Phase, grp: Group, q_tokens, k_tokens, b, totals: bool) -> None:
        """The executor terms of an unfused prefill pass in which each of b sequences runs q_tokens prompt
        tokens against k_tokens keys (the whole prompt, or a chunk after earlier ones): a stepped Mamba-1 scan,
        a chunked scan's L x L tensors, an attention's materialised scores. Each is 0 in profiles of fused
        executors."""
        prof, mixer = self.profile, grp.layer.mixer
        if prof.unfused_scan_s and isinstance(mixer, Mamba) and mixer.version == 1:
            self._add_unfused_scan(ph, grp, q_tokens, b, totals)
        if isinstance(mixer, (Mamba, LinearAttention)) and mixer.chunked and self._chunk_cost(mixer):
            self._add_unfused_chunks(ph, grp, q_tokens, b, totals)
        if prof.unfused_attention_s and unfused_attention(grp.layer):
            self._add_unfused_attention(ph, grp, q_tokens, k_tokens, b, totals)

    def _add_unfused_attention(self, ph: Phase, grp: Group, q_tokens, k_tokens, b, totals: bool) -> None:
        """An attention the executor cannot fuse (unfused_attention) materialises every query head's
        q_tokens x k_tokens scores, masked entries included, and passes over them several times (scale,
        mask, softmax, the cast back): unfused_attention_s seconds per element, beyond the FLOP that
        attention's roofline already charges."""
        ctx = grp.ctx if grp.ctx is not None else grp.source
        heads = ctx.layout.n_q_heads / self.tp
        elements = heads * np.asarray(q_tokens, dtype=np.float64) * np.asarray(k_tokens, dtype=np.float64) * \
            np.asarray(b, dtype=np.float64)
        mixer = grp.layer.mixer
        per = self.profile.unfused_attention_s + (self.profile.unfused_sink_s if getattr(mixer, "sinks", False)
                                                  else 0.0)
        _add_executor_time(ph, "unfused attention scores",
                           grp.count * self._spilled(per, elements * self.abytes) * elements, totals)

    def _add_unfused_state(self, ph: Phase, grp: Group, b, totals: bool) -> None:
        """An unfused recurrent decode step (transformers' torch paths) builds state-sized temporaries (the
        discretised decay, B x input, their product and sum; the delta rule's decayed state, its read and
        correction) and passes over them elementwise: unfused_state_s seconds per recurrent state element
        (not the conv window), beyond the state's own read and write that the roofline charges. A fused
        kernel updates the state in place in one pass (0)."""
        mixer = grp.layer.mixer
        elements = sum(part.elements for part in mixer.state_parts(self.model.hidden) if part.kind == "ssm") * \
            np.asarray(b, dtype=np.float64) / self.tp
        per = self._spilled(self.profile.unfused_state_s, elements * UNFUSED_TEMP_BYTES)
        _add_executor_time(ph, "unfused state update", grp.count * per * elements, totals)

    def _add_unfused_scan(self, ph: Phase, grp: Group, p, b, totals: bool) -> None:
        """An unfused Mamba-1 selective scan over the prompt (transformers' torch path; fused kernels keep it
        on chip and step it in one launch): the state's d_inner x d_state elements are discretised (an exp each)
        and stepped through for every prompt token, unfused_scan_s seconds per element and token (elementwise
        work over strided slices, far from the roofline), and each token's step launches SCAN_STEP_KERNELS
        kernels for the whole batch."""
        m = grp.layer.mixer
        tokens = np.asarray(p, dtype=np.float64)
        step = m.d_inner * m.d_state * np.asarray(b, dtype=np.float64) / self.tp  # one token's temporaries
        elementwise = self._spilled(self.profile.unfused_scan_s, step * UNFUSED_TEMP_BYTES) * step * tokens
        launches = scan_launches(m, tokens) * self.profile.kernel_overhead_s
        _add_executor_time(ph, "unfused SSM scan", grp.count * (elementwise + launches), totals)

    def _chunk_cost(self, mixer) -> float:
        """Seconds per L x L element of `mixer`'s unfused chunked prefill: Mamba-2's SSD (unfused_chunk_s) or the
        gated delta rule (unfused_delta_s), whose torch paths materialise and pass over different tensors."""
        return self.profile.unfused_delta_s if isinstance(mixer, LinearAttention) else self.profile.unfused_chunk_s

    def _add_unfused_chunks(self, ph: Phase, grp: Group, p, b, totals: bool) -> None:
        """An unfused chunked prefill (transformers' torch paths of Mamba-2's SSD and the gated delta rule): per
        chunk and head it materialises L x L tensors (SSD: decay segment sums, their exponentials and masks, C.B^T
        with B and C repeated to every head; the delta rule: decay and score matrices, triangular solves and a
        sequential scan over chunks) in many passes, _chunk_cost seconds per element; fused kernels keep them on
        chip (their FLOP are in the mixer's prefill_flops). The whole batch's chunks are one tensor."""
        mixer = grp.layer.mixer
        elements = mixer.chunk_elements(p) * np.asarray(b, dtype=np.float64) / self.tp
        per = self._spilled(self._chunk_cost(mixer), elements * UNFUSED_TEMP_BYTES)
        launches = scan_launches(mixer, p) * self.profile.kernel_overhead_s
        _add_executor_time(ph, "unfused chunked scan", grp.count * (per * elements + launches), totals)

    def _spilled(self, per_element_s: float, nbytes) -> np.ndarray:
        """`per_element_s` of an unfused temporary of `nbytes`: the share of it beyond the last-level cache
        streams through DRAM on each of its passes, unfused_spill times dearer (0 without a cache size)."""
        prof = self.profile
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if not (prof.unfused_spill and prof.cache_bytes):
            return per_element_s + 0.0 * nbytes
        beyond = np.clip(1.0 - prof.cache_bytes / np.maximum(nbytes, 1.0), 0.0, None)
        return per_element_s * (1.0 + prof.unfused_spill * beyond)

    def phase(self, p, b, s, prefill: bool) -> Phase:
        """One whole forward pass: the prefill of p tokens (s ignored) or decode step s+1."""
        return self.fixed_phase(p, b, prefill) + self.cache_phase(p, b, s, prefill)

    def phase_time(self, ph: Phase, p, b, prefill: bool) -> np.ndarray:
        """Time of phase() of p prompt tokens per sequence and b sequences: a prefill pays the per-token
        overhead for every prompt token of the batch, as a serving step does for every token it schedules."""
        p, b = np.asarray(p, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return self.step_time(ph, p * b if prefill else 0, 0 if prefill else ph.policy_layers)

    def step_time(self, ph: Phase, prompt_tokens, policy_layers) -> np.ndarray:
        """Time of one forward pass: `ph` plus the profile's fixed overheads, with `prompt_tokens` prompt
        tokens in the pass and a KV policy working in `policy_layers` layers of its decode tokens."""
        prof = self.profile
        attn_floor = prof.attention_overhead_s
        if prof.tiled and prof.prefill_attention:  # a pass with prompt tokens runs the prefill kernels
            attn_floor = np.where(np.asarray(prompt_tokens) > 0, prof.for_prefill().attention_overhead_s, attn_floor)
        kernels = np.where(np.asarray(prompt_tokens) > 0, self.prefill_kernels, self.kernels)
        device = (ph.time_s + ph.comm_s + prof.step_overhead_s + prof.layer_overhead_s * self.model.n_layers
                  + prof.kernel_overhead_s * kernels + prof.matmul_overhead_s * self.matmuls
                  + attn_floor * self.attention_kernels)
        device = device + prof.prefill_token_overhead_s * prompt_tokens + prof.policy_layer_overhead_s * policy_layers
        overlap = self.policy.place is not None and self.policy.place.overlap
        return np.maximum(device, ph.host_s) if overlap else device + ph.host_s

    @staticmethod
    def bound(ph: Phase, total: np.ndarray) -> np.ndarray:
        """Which resource limits the phase: the largest of compute, memory, host link, interconnect and
        fixed overheads."""
        overhead = total - np.maximum(ph.time_s, ph.host_s) - ph.comm_s
        terms = np.stack(np.broadcast_arrays(ph.compute_s, ph.memory_s, ph.host_s, ph.comm_s, overhead))
        names = np.array(["compute", "memory", "host-link", "interconnect", "overhead"])
        return names[np.argmax(terms, axis=0)]

    # ----- memory -----
    def activation_live_elements(self) -> int:
        """Widest live activation set of any layer, in elements per token."""
        return max(_activation_width(self.model, g.layer)[1] for g in self.groups)

    def activation_peak(self, p, b, prefill: bool) -> np.ndarray:
        """Largest live activation set: one layer's intermediates for the whole batch, plus fp32 logits
        (float64 holding whole bytes, per device)."""
        b = np.asarray(b, dtype=np.float64)
        tokens = b * p if prefill else b
        live = self.activation_live_elements()
        return -(-(tokens * (live * self.abytes) + b * (self.model.vocab * 4)) // self.tp)

    def decode_workspace(self, p, g) -> np.ndarray:
        """Per-sequence transient KV during a decode step, per device: one layer's grown copy of a
        concatenated cache or dequantised copy of a compressed one (the largest layer), plus two layers of
        device buffers for offloaded layers (the one in use and the one being fetched)."""
        worst = 0
        fetched = 0
        for grp in self.groups:
            if grp.ctx is None:
                continue
            worst = np.maximum(worst, self.full_width_read_bytes(grp.ctx, p, g, per_device=True))
            if grp.on_host:
                heads = self.heads_on_device(grp.ctx)
                fetched = np.maximum(fetched, 2 * self.policy.device_read(grp.ctx, p, g, heads)[0])
        return np.asarray(worst + fetched, dtype=np.int64)
