"""Model architecture as data: a ModelSpec is a tuple of per-layer specs.

A layer is a token mixer (attention of any shape, MLA, an SSM or a linear-attention state) plus an MLP
(dense or mixture of experts). MHA, GQA and MQA are values of `n_kv_heads`; sliding-window, block-sparse
and cross-layer-shared attention are values of `Attention`'s fields, so hybrids need no extra code.

Cache semantics (what the harness in measured/ holds, byte for byte):
- full attention keeps every processed token;
- a sliding window of span W (each query sees itself and the W-1 tokens before it) keeps min(t, W-1)
  tokens between steps, as transformers' DynamicSlidingWindowLayer does;
- block-sparse attention with random blocks keeps everything (any past block may be drawn); without
  random blocks it keeps the global tokens plus the local span;
- a layer that shares another layer's KV (CLA/YOCO) keeps nothing of its own;
- MLA keeps the compressed latent plus the decoupled RoPE key (one "head" shared by all query heads);
- SSM and linear-attention layers keep a state whose size does not depend on the sequence length.
"""

from __future__ import annotations

import numpy as np

from dataclasses import dataclass, field, fields, replace

from .errors import KvsimError
from .limits import check_layers
from .weights import canonical as canonical_weights


def _positive(obj, *names: str, allow_zero: tuple[str, ...] = ()) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise KvsimError(f"{type(obj).__name__}.{name} must be an integer, got {value!r}")
        if value < 0 or (value == 0 and name not in allow_zero):
            raise KvsimError(f"{type(obj).__name__}.{name} must be positive, got {value}")


@dataclass(frozen=True)
class KVLayout:
    """How one layer's per-token cache looks: what policies see.

    `k_dim`/`v_dim` are stored elements per token per KV head; `score_dim`/`value_dim` are the widths the
    attention arithmetic runs over per query head (they differ for MLA, whose values come from the latent)."""

    n_kv_heads: int
    k_dim: int
    v_dim: int
    n_q_heads: int
    score_dim: int
    value_dim: int
    span: int  # attention span in tokens, including the query itself; 0 means unbounded
    keep_cap: int  # tokens kept between steps by the architecture itself; 0 means unbounded
    evictable: bool  # the cache grows without bound, so eviction policies apply

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_q_heads // self.n_kv_heads


@dataclass(frozen=True)
class Attention:
    n_heads: int
    n_kv_heads: int
    head_dim: int
    v_head_dim: int = 0  # 0: same as head_dim
    window: int = 0  # attention span W (query + W-1 previous tokens); 0: full attention
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k (Gemma-3, Qwen3)
    fused_qkv: bool = False  # one projection for q, k and v (GPT-2's c_attn): fewer kernels, same weights
    # Learned per-head sink logits in the softmax denominator (gpt-oss): n_heads weights and no cached token,
    # so they change parameter bytes but not KV bytes; their one extra logit per head is left out of FLOPs.
    sinks: bool = False
    # A sigmoid gate on each head's output, computed by a query projection twice as wide (Qwen3-Next).
    out_gate: bool = False
    rope: bool = True  # rotary embedding on q and k (False: Jamba's attention has no positional encoding)
    # Block-sparse attention (Longformer/BigBird): each query sees `local_blocks` blocks around it,
    # `global_blocks` blocks at the start of the sequence and `random_blocks` random earlier blocks.
    block: int = 0
    local_blocks: int = 0
    global_blocks: int = 0
    random_blocks: int = 0
    shares_kv_with: int = -1  # index of the layer whose cache this layer reads (CLA/YOCO); -1: own cache

    def __post_init__(self):
        _positive(self, "n_heads", "n_kv_heads", "head_dim")
        _positive(self, "v_head_dim", "window", "block", "local_blocks", "global_blocks", "random_blocks",
                  allow_zero=("v_head_dim", "window", "block", "local_blocks", "global_blocks", "random_blocks"))
        if self.n_heads % self.n_kv_heads:
            raise KvsimError(f"heads ({self.n_heads}) must be a multiple of KV heads ({self.n_kv_heads})")
        if self.window == 1:
            raise KvsimError("a sliding window must span at least 2 tokens")
        if self.block and not (self.local_blocks or self.global_blocks):
            raise KvsimError("block-sparse attention needs local_blocks or global_blocks")

    @property
    def dv(self) -> int:
        return self.v_head_dim or self.head_dim

    @property
    def sparse(self) -> bool:
        return self.block > 0

    def params(self, hidden: int) -> int:
        q = self.n_heads * self.head_dim * (2 if self.out_gate else 1)
        kv = self.n_kv_heads * (self.head_dim + self.dv)
        o = self.n_heads * self.dv
        n = hidden * (q + kv) + o * hidden
        if self.qkv_bias:
            n += q + kv
        if self.o_bias:
            n += hidden
        if self.qk_norm:
            n += 2 * self.head_dim
        if self.sinks:
            n += self.n_heads
        return n

    def kv_layout(self) -> KVLayout:
        if self.sparse:
            glob = self.global_blocks * self.block
            local = self.local_blocks * self.block
            span = glob + local + self.random_blocks * self.block
            keep = 0 if self.random_blocks else glob + local - 1
        else:
            span = self.window
            keep = self.window - 1 if self.window else 0
        return KVLayout(self.n_kv_heads, self.head_dim, self.dv, self.n_heads, self.head_dim, self.dv,
                        span=span, keep_cap=keep, evictable=keep == 0)


@dataclass(frozen=True)
class MLA:
    """Multi-head latent attention (DeepSeek-V2/V3)."""

    n_heads: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int = 0  # 0: queries projected directly from the hidden state
    cache: str = "latent"  # "latent": as DeepSeek caches it; "decompressed": per-head K and V
    complex_rope: bool = False  # rotary embedding as a complex product (DeepSeek-V2's code; V3 rotates halves)

    def __post_init__(self):
        _positive(self, "n_heads", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
        _positive(self, "q_lora_rank", allow_zero=("q_lora_rank",))
        if self.cache not in ("latent", "decompressed"):
            raise KvsimError(f"MLA cache must be 'latent' or 'decompressed', got {self.cache!r}")

    def params(self, hidden: int) -> int:
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank:
            q = hidden * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.n_heads * qk
        else:
            q = hidden * self.n_heads * qk
        kv_a = hidden * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
        kv_b = self.kv_lora_rank * self.n_heads * (self.qk_nope_head_dim + self.v_head_dim)
        o = self.n_heads * self.v_head_dim * hidden
        return q + kv_a + kv_b + o

    def prefill_dims(self) -> tuple[int, int]:
        """(score, value) widths per query head of the prefill's attention: engines that cache the latent
        (vLLM, SGLang) still decompress the prompt's K and V and attend per head; only decode steps absorb."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim, self.v_head_dim

    def kv_layout(self) -> KVLayout:
        if self.cache == "latent":
            # Weight absorption: scores run over latent + rope dims, values over the latent.
            c, r = self.kv_lora_rank, self.qk_rope_head_dim
            return KVLayout(1, c + r, 0, self.n_heads, c + r, c, span=0, keep_cap=0, evictable=True)
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        return KVLayout(self.n_heads, qk, self.v_head_dim, self.n_heads, qk, self.v_head_dim,
                        span=0, keep_cap=0, evictable=True)


@dataclass(frozen=True)
class StatePart:
    """One tensor of a recurrent layer's per-sequence state, as `rows` rows of `width` elements (the unit a
    quantization group runs along). kind "conv": the convolution's window of recent inputs, held at the
    activation dtype; "ssm": the recurrent state itself, held at the state dtype (float32 in transformers)."""

    rows: int
    width: int
    kind: str

    @property
    def elements(self) -> int:
        return self.rows * self.width


@dataclass(frozen=True)
class Mamba:
    """Selective state-space layer: Mamba-1 (version=1) or Mamba-2 (version=2, with heads and groups)."""

    d_inner: int
    d_state: int
    d_conv: int = 4
    version: int = 1
    n_heads: int = 0  # Mamba-2 only
    n_groups: int = 1  # Mamba-2 only
    dt_rank: int = 0  # Mamba-1 only
    conv_bias: bool = True
    proj_bias: bool = False
    bc_norms: bool = False  # RMSNorms on the time step, B and C (Jamba's Mamba layers)
    chunk: int = 0  # Mamba-2: tokens per chunk of its prefill's state-space dual (SSD) algorithm (0: 256)

    def __post_init__(self):
        _positive(self, "d_inner", "d_state", "d_conv", "n_groups")
        if self.version not in (1, 2):
            raise KvsimError(f"Mamba version must be 1 or 2, got {self.version}")
        if self.version == 1 and self.dt_rank <= 0:
            raise KvsimError("Mamba-1 needs dt_rank > 0")
        if self.version == 2 and (self.n_heads <= 0 or self.d_inner % self.n_heads):
            raise KvsimError("Mamba-2 needs n_heads > 0 dividing d_inner")

    @property
    def conv_channels(self) -> int:
        return self.d_inner if self.version == 1 else self.d_inner + 2 * self.n_groups * self.d_state

    def state_parts(self, hidden: int) -> tuple[StatePart, ...]:
        """The conv window (the last d_conv inputs of every conv channel; transformers keeps d_conv columns)
        and the SSM state (d_inner x d_state: Mamba-2's heads x head_dim rows of d_state)."""
        return (StatePart(self.d_conv, self.conv_channels, "conv"), StatePart(self.d_inner, self.d_state, "ssm"))

    def state_elements(self) -> int:
        """Conv window plus SSM state, per sequence: constant in sequence length."""
        return sum(part.elements for part in self.state_parts(0))

    def params(self, hidden: int) -> int:
        conv = self.conv_channels * self.d_conv + (self.conv_channels if self.conv_bias else 0)
        if self.version == 1:
            in_proj = hidden * 2 * self.d_inner
            x_proj = self.d_inner * (self.dt_rank + 2 * self.d_state)
            dt_proj = self.dt_rank * self.d_inner + self.d_inner
            a_d = self.d_inner * self.d_state + self.d_inner
            n = in_proj + conv + x_proj + dt_proj + a_d
            if self.bc_norms:
                n += self.dt_rank + 2 * self.d_state
        else:
            in_proj = hidden * (2 * self.d_inner + 2 * self.n_groups * self.d_state + self.n_heads)
            n = in_proj + conv + 3 * self.n_heads + self.d_inner  # dt_bias, A_log, D, gated norm
        n += self.d_inner * hidden  # out_proj
        if self.proj_bias:
            n += (2 * self.d_inner if self.version == 1 else 2 * self.d_inner + 2 * self.n_groups * self.d_state
                  + self.n_heads) + hidden
        return n

    def step_flops(self) -> int:
        """Per token, outside the projections: conv, discretisation, state update, readout."""
        return 2 * self.conv_channels * self.d_conv + 6 * self.d_inner * self.d_state

    @property
    def ssd_chunk(self) -> int:
        return (self.chunk or SSD_CHUNK) if self.version == 2 else 0

    @property
    def chunked(self) -> bool:
        """Whether its prefill runs a chunked algorithm (Mamba-2's SSD; Mamba-1 scans token by token)."""
        return self.version == 2

    def prefill_flops(self, tokens) -> np.ndarray:
        """A sequence's prefill of `tokens` outside the projections. Mamba-1 steps its state token by token
        (step_flops each); Mamba-2 runs the chunked SSD algorithm its kernels (and transformers' torch path) run:
        per chunk of L tokens, C.B^T per group (2 L^2 N), its masked product with the chunk's inputs per head
        (2 L^2 P), and the chunk's state in and out per head (4 L N P). Charged per token at the full-chunk rate:
        engines cut chunks from the batch's token stream, so a prompt split across scheduler steps costs what it
        costs whole."""
        tokens = np.asarray(tokens, dtype=np.float64)
        if self.version == 1:
            return tokens * self.step_flops()
        L, n, p = self.ssd_chunk, self.d_state, self.d_inner // self.n_heads
        per_token = 2.0 * L * n * self.n_groups + self.n_heads * (2.0 * L * p + 4.0 * n * p)
        return tokens * (2.0 * self.conv_channels * self.d_conv + per_token)

    def chunk_elements(self, tokens) -> np.ndarray:
        """Elements of the L x L per-head tensors an unfused chunked prefill materialises per sequence (0 for
        Mamba-1, which has no chunks)."""
        L = self.ssd_chunk
        return np.ceil(np.asarray(tokens, dtype=np.float64) / L) * self.n_heads * L * L if L else \
            0.0 * np.asarray(tokens, dtype=np.float64)


@dataclass(frozen=True)
class LinearAttention:
    """Linear attention with a recurrent state of n_heads x key_dim x value_dim per sequence: plain linear
    attention / RWKV-style (token-shift vectors), or a gated delta rule (Qwen3-Next's Gated DeltaNet:
    fewer key heads than value heads, a causal conv over q, k and v, per-head decay and write gates)."""

    n_heads: int  # value heads: the state has one key_dim x value_dim matrix per value head
    key_dim: int
    value_dim: int
    shift_states: int = 0  # vectors of size `hidden` kept per sequence (RWKV's token shift: 2)
    gate: bool = True  # an output gate projection (z) as wide as the values
    n_key_heads: int = 0  # query/key heads (0: n_heads); each is shared by n_heads / n_key_heads value heads
    conv: int = 0  # kernel of a depthwise causal conv over the q, k and v channels (0: none); its window is state
    head_gates: int = 0  # per-head scalars projected from the hidden state (DeltaNet: write strength and decay)
    head_params: int = 0  # learned per-head scalars (DeltaNet: dt bias and A_log)
    out_norm: bool = False  # a gated RMSNorm over each head's output (value_dim weights shared by the heads)
    delta_rule: bool = False  # the state is corrected by the delta rule (read, subtract, write) each token

    def __post_init__(self):
        _positive(self, "n_heads", "key_dim", "value_dim")
        _positive(self, "shift_states", "n_key_heads", "conv", "head_gates", "head_params",
                  allow_zero=("shift_states", "n_key_heads", "conv", "head_gates", "head_params"))
        if self.n_heads % self.key_heads:
            raise KvsimError(f"linear attention: value heads ({self.n_heads}) must be a multiple of key heads "
                             f"({self.key_heads})")

    @property
    def key_heads(self) -> int:
        return self.n_key_heads or self.n_heads

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_heads * self.key_dim + self.n_heads * self.value_dim

    def state_parts(self, hidden: int) -> tuple[StatePart, ...]:
        parts = [StatePart(self.n_heads * self.key_dim, self.value_dim, "ssm")]
        if self.conv:
            parts.append(StatePart(self.conv, self.conv_channels, "conv"))
        if self.shift_states:
            parts.append(StatePart(self.shift_states, hidden, "conv"))
        return tuple(parts)

    def state_elements(self, hidden: int) -> int:
        return sum(part.elements for part in self.state_parts(hidden))

    def params(self, hidden: int) -> int:
        qk = 2 * hidden * self.key_heads * self.key_dim
        v = hidden * self.n_heads * self.value_dim * (2 if self.gate else 1)
        n = qk + v + self.n_heads * self.value_dim * hidden
        n += hidden * self.n_heads * self.head_gates + self.n_heads * self.head_params
        n += self.conv_channels * self.conv + (self.value_dim if self.out_norm else 0)
        return n

    def step_flops(self) -> int:
        """Per token, outside the projections: the state update and readout (the delta rule also reads the
        state with the key and decays it: 7 instead of 4 FLOP per state element), and the conv."""
        per = 7 if self.delta_rule else 4
        return per * self.n_heads * self.key_dim * self.value_dim + 2 * self.conv_channels * self.conv

    def prefill_flops(self, tokens) -> np.ndarray:
        """A sequence's prefill of `tokens` outside the projections: step_flops per token."""
        return np.asarray(tokens, dtype=np.float64) * self.step_flops()

    def chunk_elements(self, tokens) -> np.ndarray:
        """Elements of the L x L per-head tensors an unfused chunked prefill materialises per sequence: the gated
        delta rule's torch path runs chunks of GDN_CHUNK tokens (its kernels too); plain linear attention none."""
        return self.chunks(tokens) * self.n_heads * GDN_CHUNK * GDN_CHUNK

    @property
    def chunked(self) -> bool:
        """Whether its prefill runs a chunked algorithm (the gated delta rule's; plain linear attention none)."""
        return self.delta_rule

    def chunks(self, tokens) -> np.ndarray:
        """Chunks of GDN_CHUNK tokens a gated delta rule's chunked prefill of `tokens` runs (0 without one)."""
        t = np.asarray(tokens, dtype=np.float64)
        return np.ceil(t / GDN_CHUNK) if self.chunked else 0.0 * t


@dataclass(frozen=True)
class MLP:
    intermediate: int
    gated: bool = True  # SwiGLU/GeGLU: gate, up and down projections
    bias: bool = False
    act_kernels: int = 1  # kernels of the activation in eager execution (GPT-2's gelu_new formula: 8)

    def __post_init__(self):
        _positive(self, "intermediate")

    def params(self, hidden: int) -> int:
        n = (3 if self.gated else 2) * hidden * self.intermediate
        if self.bias:
            n += (2 if self.gated else 1) * self.intermediate + hidden
        return n

    def active_params(self, hidden: int) -> int:
        return self.params(hidden)

    def active_intermediate(self) -> int:
        return self.intermediate


@dataclass(frozen=True)
class MoE:
    n_experts: int
    top_k: int
    expert_intermediate: int
    n_shared: int = 0
    shared_intermediate: int = 0  # per shared expert; 0: expert_intermediate
    gated: bool = True
    router_bias: bool = False  # a bias per expert on the router (DeepSeek-V3's score correction, gpt-oss)
    bias: bool = False  # biases on every expert's projections (gpt-oss)
    shared_gate: bool = False  # a sigmoid gate (hidden -> 1) on the shared experts' output (Qwen3-Next)
    group_routing: bool = False  # experts chosen within the best-scoring groups (DeepSeek-V3, V2's group-limited)

    def __post_init__(self):
        _positive(self, "n_experts", "top_k", "expert_intermediate")
        _positive(self, "n_shared", "shared_intermediate", allow_zero=("n_shared", "shared_intermediate"))
        if self.top_k > self.n_experts:
            raise KvsimError(f"top_k ({self.top_k}) exceeds n_experts ({self.n_experts})")

    def _expert(self, hidden: int, inter: int) -> int:
        n = (3 if self.gated else 2) * hidden * inter
        if self.bias:
            n += (2 if self.gated else 1) * inter + hidden
        return n

    def _shared(self, hidden: int) -> int:
        n = self.n_shared * self._expert(hidden, self.shared_intermediate or self.expert_intermediate)
        return n + (hidden if self.shared_gate and self.n_shared else 0)

    def params(self, hidden: int) -> int:
        router = hidden * self.n_experts + (self.n_experts if self.router_bias else 0)
        return router + self.n_experts * self._expert(hidden, self.expert_intermediate) + self._shared(hidden)

    def active_params(self, hidden: int) -> int:
        """Parameters one token multiplies with: router, top-k experts, shared experts."""
        return hidden * self.n_experts + self.top_k * self._expert(hidden, self.expert_intermediate) + \
            self._shared(hidden)

    def expert_params(self, hidden: int) -> int:
        return self._expert(hidden, self.expert_intermediate)

    def active_intermediate(self) -> int:
        return self.top_k * self.expert_intermediate + self.n_shared * (self.shared_intermediate
                                                                        or self.expert_intermediate)


Mixer = Attention | MLA | Mamba | LinearAttention

# Kernels one layer launches per forward pass in eager execution (each has a fixed dispatch cost).
_NORM_KERNELS = {True: 1, False: 6}  # LayerNorm is one fused kernel; RMSNorm is cast, pow, mean, rsqrt, 2 muls
_ROPE_KERNELS = 10  # rotate-half and multiply-add, for q and k
# Attention itself: the cache's K and V writes, one attention kernel (torch's SDPA in transformers' default path,
# the harness's native decode attention) and its output (eager softmax-by-parts would be eight more).
_ATTENTION_KERNELS = 4
# Chunk lengths of the chunked prefill algorithms: Mamba-2's SSD (its configs' chunk_size default; mamba_ssm and
# transformers) and the gated delta rule's (fla's chunk_gated_delta_rule and transformers' torch path: 64).
SSD_CHUNK = 256
GDN_CHUNK = 64
# A MoE block's routed experts as transformers 5 runs them by default ("grouped_mm", and the harness's native
# grouped experts): the (token, expert) pairs sorted by expert, gathered, counted and offset, both projections one
# grouped matmul each with the gate between, the router weights applied and the rows put back and summed per token:
# a fixed set of launches whatever experts the pass's tokens hit (transformers' "eager" loop instead launches
# about nine per hit expert; no engine kvsim models runs it by default).
_MOE_GROUPED_KERNELS = 16
_GROUP_ROUTING_KERNELS = 13  # group scores (top-2 sum per group), the groups' top-k, their mask, a masked top-k
_SINK_KERNELS = 25  # the sink logits' merge into the softmax (max, exp, denominators, rescale) and their rope
_WINDOW_KERNELS = 5  # a window's ring buffer: the slot (subtract, clamp), two scatters and the positions' fill
# MLA beyond its projections and norms, by cache form: the latent one absorbs the up-projections into the query
# and output (two einsums) and writes latent and RoPE key; the decompressed one projects K and V per head.
_MLA_KERNELS = {"latent": 14, "decompressed": 9}
_COMPLEX_ROPE_KERNELS = 2  # DeepSeek-V2's rotary embedding: one complex multiplication each for q and k
# Kernels of a recurrent mixer per pass as transformers 5.25's torch paths run it (mamba_ssm's and fla's fused
# kernels need a GPU): (decode step, prefill). Decode: projections, the conv window's shift and conv, softplus of
# the time step, the decay's exps, the state's decay-and-add, its read-out, the skip and the gate (the delta
# rule adds l2 norms of q and k, its read-correct-write and a gated RMSNorm). Prefill: the same projections and
# conv over the prompt with the scan's own setup; per-token and per-chunk launches are priced where the scan is
# (cost.CostModel._add_unfused_scan, _add_unfused_chunks). tests/harness/test_kernel_counts.py holds these to the
# ops the harness dispatches.
_MAMBA1_KERNELS = (29, 28)
_BC_NORM_KERNELS = 16  # Jamba's RMSNorms on the time step, B and C (in place of Mamba-1's plain casts)
_MAMBA2_KERNELS = (35, 73)
_DELTA_RULE_KERNELS = (49, 69)
_LINEAR_ATTENTION_KERNELS = 10  # plain linear attention: projections, feature map, state update and read-out


def touched_experts(n_experts, top_k, tokens) -> np.ndarray:
    """Experts whose weights `tokens` routed tokens touch, with uniform independent routing (vectorised over
    expert counts, top-k and tokens)."""
    n_experts = np.asarray(n_experts, dtype=np.float64)
    miss = (1.0 - np.asarray(top_k) / n_experts) ** np.asarray(tokens, dtype=np.float64)
    return n_experts * (1.0 - miss)


def layer_kernels(layer: "Layer", layer_norm: bool, rope: bool, prefill: bool = False) -> int:
    """Kernels a layer launches per forward pass (a decode step, or a prefill's fixed set) in eager execution."""
    norm = _NORM_KERNELS[layer_norm]
    n = layer.norms * norm + 2  # two residual adds
    mixer = layer.mixer
    if isinstance(mixer, Attention):
        n += (1 if mixer.fused_qkv else 3) + 1 + _ATTENTION_KERNELS + (_ROPE_KERNELS if rope and mixer.rope else 0)
        n += 2 * norm if mixer.qk_norm else 0
        n += 2 if mixer.out_gate else 0  # sigmoid, multiply
        n += _SINK_KERNELS if mixer.sinks else 0
        n += _WINDOW_KERNELS if mixer.window else 0
    elif isinstance(mixer, MLA):
        n += (4 + norm if mixer.q_lora_rank else 3) + norm  # q (or q_a, its norm, q_b), kv_a, o; the latent's norm
        n += _MLA_KERNELS[mixer.cache] + (_COMPLEX_ROPE_KERNELS if mixer.complex_rope else _ROPE_KERNELS)
    elif isinstance(mixer, Mamba):
        n += (_MAMBA1_KERNELS if mixer.version == 1 else _MAMBA2_KERNELS)[prefill]
        n += _BC_NORM_KERNELS if mixer.bc_norms else 0
    elif mixer.delta_rule:
        n += _DELTA_RULE_KERNELS[prefill]
    else:
        n += _LINEAR_ATTENTION_KERNELS
    mlp = layer.mlp
    if isinstance(mlp, MoE):
        # router (gemm, softmax, top-k, gather), routed experts, and the shared experts as one MLP as wide as all
        n += 4 + _MOE_GROUPED_KERNELS + (5 if mlp.n_shared else 0)
        n += 3 if mlp.shared_gate and mlp.n_shared else 0  # gate gemm, sigmoid, multiply
        n += _GROUP_ROUTING_KERNELS if mlp.group_routing else 0
    elif mlp is not None:
        n += (4 if mlp.gated else 2) + mlp.act_kernels  # gate, up, mul, down | up, down; and the activation
    return n


@dataclass(frozen=True)
class Layer:
    mixer: Mixer
    mlp: MLP | MoE | None = None
    norms: int = 2  # normalisation modules in the layer (Gemma-2/3 have four)

    @property
    def has_kv(self) -> bool:
        """Whether the layer keeps a per-token cache of its own."""
        if isinstance(self.mixer, Attention):
            return self.mixer.shares_kv_with < 0
        return isinstance(self.mixer, MLA)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    vocab: int
    layers: tuple[Layer, ...]
    tied_embeddings: bool = False
    weight_dtype: str = "bf16"  # a weight format spec (weights.py): "bf16", "fp8:block=128", "int4:group=128"
    learned_positions: int = 0  # rows of a learned position table (GPT-2's wpe)
    lm_head_bias: bool = False  # a bias on the output projection (GPT-J, Phi-1/2)
    norm_bias: bool = False  # LayerNorm with a bias (GPT-2) rather than RMSNorm
    final_norm: bool = True
    max_context: int = 0  # trained context limit; 0 when unknown
    source: str = ""
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        _positive(self, "hidden", "vocab")
        check_layers(len(self.layers), f"{self.name}: layers")
        object.__setattr__(self, "weight_dtype", canonical_weights(self.weight_dtype))
        for i, layer in enumerate(self.layers):
            mixer = layer.mixer
            if isinstance(mixer, Attention) and mixer.shares_kv_with >= 0:
                src = mixer.shares_kv_with
                if src >= i:
                    raise KvsimError(f"layer {i} shares KV with layer {src}, which is not an earlier layer")
                if not self.layers[src].has_kv:
                    raise KvsimError(f"layer {i} shares KV with layer {src}, which keeps no cache of its own")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def _norm_params(self) -> int:
        return self.hidden * (2 if self.norm_bias else 1)

    def layer_params(self, i: int) -> int:
        layer = self.layers[i]
        n = layer.mixer.params(self.hidden) + layer.norms * self._norm_params()
        if layer.mlp is not None:
            n += layer.mlp.params(self.hidden)
        return n

    def embedding_params(self) -> int:
        n = self.vocab * self.hidden + self.learned_positions * self.hidden
        if not self.tied_embeddings:
            n += self.vocab * self.hidden
        return n + (self.vocab if self.lm_head_bias else 0)

    def n_params(self) -> int:
        n = self.embedding_params() + sum(self.layer_params(i) for i in range(self.n_layers))
        return n + (self._norm_params() if self.final_norm else 0)

    def kernels(self, prefill: bool = False) -> int:
        """Kernels one forward pass (a decode step, or a prefill's fixed set) launches in eager execution: every
        layer, plus embedding, final norm and logits."""
        rope = self.learned_positions == 0
        per = sum(layer_kernels(layer, self.norm_bias, rope, prefill) for layer in self.layers)
        return per + 2 + (_NORM_KERNELS[self.norm_bias] if self.final_norm else 0) + 1

    def with_(self, **changes) -> "ModelSpec":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ModelSpec(**values)

    def with_mla_cache(self, form: str) -> "ModelSpec":
        """The same model with every MLA layer cached as `form` ("latent" or "decompressed")."""
        if not any(isinstance(layer.mixer, MLA) for layer in self.layers):
            raise KvsimError(f"{self.name} has no MLA layers: an MLA cache form does not apply to it")
        layers = tuple(replace(layer, mixer=replace(layer.mixer, cache=form)) if isinstance(layer.mixer, MLA)
                       else layer for layer in self.layers)
        return self.with_(layers=layers)


def uniform(name: str, *, n_layers: int, hidden: int, vocab: int, n_heads: int, n_kv_heads: int,
            head_dim: int, intermediate: int, window: int = 0, weight_dtype: str = "bf16",
            tied_embeddings: bool = False, gated: bool = True) -> ModelSpec:
    """A decoder of identical attention + MLP layers: the shape the CLI builds from size flags."""
    check_layers(n_layers)
    layer = Layer(Attention(n_heads, n_kv_heads, head_dim, window=window), MLP(intermediate, gated=gated))
    return ModelSpec(name, hidden, vocab, (layer,) * n_layers, tied_embeddings=tied_embeddings,
                     weight_dtype=weight_dtype)
