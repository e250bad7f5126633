"""The serving model: an engine's KV pool, paged (block-rounded) requests and chunked prefill.

An `Engine` is the frozen set of knobs a serving engine exposes (presets per engine and version live in
presets/engines/*.toml, each default with its source). `Serving` joins one with a CostModel and answers:

Pool. The engine may use `memory_fraction` of the device. What is left for the KV pool depends on what the
fraction covers (`fraction_of`):
  total   vLLM's gpu_memory_utilization: capacity x f - weights - one token-budget forward pass's
          activation peak - runtime and CUDA-graph reservations
  static  SGLang's mem_fraction_static: capacity x f - weights - runtime (activations and graphs live in the
          remaining 1 - f)
  free    TensorRT-LLM's free_gpu_memory_fraction: f x (capacity - weights - activations - reservations)
The pool is cut into blocks of `block_size` tokens across every layer the device holds
(blocks = usable // bytes per block), as vLLM's kv_cache_utils.get_num_blocks does.

Requests. Every request and layer rounds up to whole pages, and each layer group has its own page size: a
block of `block_size` tokens at the KV dtype, before any policy. A policy's bytes (evicted, quantized, low-rank
or offloaded tokens) are what occupies pages, so a policy frees blocks in proportion to its bytes. A layer that
slides over a window holds only its window's pages, plus one when the window does not start on a page
boundary. Between steps a request holds its largest resident set over its generation; while one request
prefills it holds more (the whole prompt until a prompt-level eviction such as SnapKV runs, a window plus a
chunk in sliding layers): that surplus is counted once, for one request prefilling at a time. Requests that
share a prefix of P tokens store its whole blocks once (vLLM's prefix caching shares full blocks only), in
layers that keep every token.

max_concurrency = (pool - prefill surplus - shared prefix) / bytes per request: vLLM's "Maximum concurrency
for N tokens per request" (num_blocks / blocks per request) for a plain full-attention model; 0 when the pool
cannot hold one request (vLLM then refuses to start).

Chunked prefill. With a token budget C per forward pass, a batch of b prompts is prefilled in steps of
max(1, C // b) tokens per request; each chunk attends to every earlier token of its request (a window's
worth in sliding layers) and reads their KV. TTFT sums every chunk: exactly for up to 2 x CHUNK_NODES full
chunks, beyond that by a rule exact for chunk costs linear in the chunk index. On the roofline chunking is never
faster than one whole-prompt pass: the FLOP are the same, the weights are read once per chunk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .cost import CostModel, Phase, causal_pairs, prefill_dims
from .errors import KvsimError
from .limits import token_limit
from .model import LinearAttention, Mamba
from .policies.base import Segment

FRACTION_OF = ("total", "static", "free")
CHUNK_NODES = 8  # segments of the chunk-index rule (two evaluations each) beyond 2 x CHUNK_NODES full chunks
INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Engine:
    """A serving engine's knobs. `hf` (the default) is whole-prompt prefill with no pool of its own."""

    name: str = "custom"
    version: str = ""
    memory_fraction: float = 1.0  # gpu_memory_utilization / mem_fraction_static / free_gpu_memory_fraction
    fraction_of: str = "total"  # what memory_fraction is a share of (see the module docstring)
    batching: str = "continuous"  # "static": the batch is prefilled and decoded together (hf); "continuous": a pool
    block_size: int = 1  # tokens per KV block (page)
    max_num_batched_tokens: int = 0  # tokens per forward pass (chunked prefill); 0: the whole prompt at once
    max_num_seqs: int = 0  # requests scheduled together (vLLM max_num_seqs); 0: as many as the pool holds
    # A waiting request is admitted only when the pages of its whole input (prompt, or prompt + generated
    # tokens after a recompute) are free, not only its first chunk's (vLLM's scheduler_reserve_full_isl).
    admit_full_input: bool = False
    reserved_blocks: int = 0  # blocks of the pool no request is given (vLLM V1's null block, a block table's padding)
    display: str = field(default="", compare=False)
    source: str = field(default="", compare=False)
    notes: str = field(default="", compare=False)
    sources: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        f = self.memory_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise KvsimError(f"engine {self.name}: the memory fraction (--gpu-memory-utilization) must be in (0, 1], "
                             f"got {f!r}")
        if self.fraction_of not in FRACTION_OF:
            raise KvsimError(f"engine {self.name}: fraction_of must be one of {', '.join(FRACTION_OF)}")
        if self.batching not in ("static", "continuous"):
            raise KvsimError(f"engine {self.name}: batching must be static or continuous")
        if not isinstance(self.admit_full_input, bool):
            raise KvsimError(f"engine {self.name}: admit_full_input must be true or false, got {self.admit_full_input!r}")
        for name, lo in (("block_size", 1), ("max_num_batched_tokens", 0), ("max_num_seqs", 0), ("reserved_blocks", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or v > 2**31:
                flag = "--" + name.replace("_", "-")
                raise KvsimError(f"engine {self.name}: {flag} must be a whole number "
                                 f"{'>= 1' if lo else '>= 0'}, got {v!r}")

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}" if self.version else self.name

    @property
    def chunked(self) -> bool:
        return self.max_num_batched_tokens > 0

    def with_(self, **knobs) -> "Engine":
        """This engine with the knobs that are not None replaced (command-line overrides)."""
        return dataclasses.replace(self, **{k: v for k, v in knobs.items() if v is not None})


HF = Engine(name="hf", batching="static")  # equals presets/engines/hf.toml


def _cdiv(a, b):
    return -(-a // b)


def checked_mul(a, b, what: str) -> np.ndarray:
    """a x b in int64, refusing a product that would not fit."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if np.any((a > 0) & (b > 0) & (a > INT64_MAX // np.maximum(b, 1))):
        raise KvsimError(f"{what} exceeds 2^63 bytes; use smaller sizes")
    return a * b


class Serving:
    """One engine's pool and requests for one cost model (model, hardware, policy, dtypes, parallelism)."""

    def __init__(self, cost: CostModel, engine: Engine, capacity: int):
        self.cost, self.engine, self.capacity = cost, engine, int(capacity)
        pol = cost.policy
        bs = engine.block_size
        # Per layer group held on this device: (group, page bytes on one device). Offloaded layers hold no pages.
        self.paged = []
        for grp in cost.groups:
            if grp.ctx is None or grp.on_host:
                continue
            lay = grp.ctx.layout
            page = grp.ctx.heads * bs * (lay.k_dim + lay.v_dim) * grp.ctx.elem_bits // 8
            self.paged.append((grp, int(cost._on_device(grp.ctx, page))))
        pp = cost.pp
        self.block_bytes = _cdiv(sum(g.count * page for g, page in self.paged), pp)
        self.state = _cdiv(cost.state_bytes(), cost.tp * pp)
        # prefix sharing needs every token kept: no eviction, no merging
        self.shares_prefix = pol.select.name == "full" and pol.merge is None

    # ----- pool -----
    def activation_tokens(self, p):
        c = self.engine.max_num_batched_tokens
        return np.asarray(p, dtype=np.int64) if c == 0 else np.asarray(c, dtype=np.int64)

    def usable(self, p) -> tuple[np.ndarray, np.ndarray]:
        """(bytes the engine leaves for the KV pool, activation peak of one token-budget pass), per device."""
        c, eng, prof = self.cost, self.engine, self.cost.profile
        weights = _cdiv(c.weight_bytes(), c.tp * c.pp) + _cdiv(c.shared_bytes(per_device=True), c.pp)
        act = c.activation_peak(self.activation_tokens(p), 1, True)
        runtime, graphs = int(prof.runtime_bytes), int(prof.cudagraph_bytes)
        if eng.fraction_of == "total":
            room = int(self.capacity * eng.memory_fraction) - weights - act - runtime - graphs
        elif eng.fraction_of == "static":
            room = np.broadcast_to(int(self.capacity * eng.memory_fraction) - weights - runtime, np.shape(act))
        else:
            free = self.capacity - weights - act - runtime - graphs
            room = np.floor(np.maximum(free, 0) * eng.memory_fraction).astype(np.int64)
        return np.maximum(np.asarray(room, dtype=np.int64), 0), np.asarray(act, dtype=np.int64)

    def pool(self, p) -> dict[str, np.ndarray]:
        usable, act = self.usable(p)
        if self.block_bytes:
            blocks = usable // self.block_bytes
            pool = blocks * self.block_bytes
        else:  # no paged KV on this device (SSM state, everything offloaded): the pool is plain bytes
            blocks, pool = np.zeros_like(usable), usable
        return {"usable": usable, "activation": act, "blocks": blocks, "bytes": pool,
                "tokens": blocks * self.engine.block_size}

    # ----- requests -----
    def chunk(self, p, b) -> np.ndarray:
        """Prompt tokens each request advances per forward pass (the whole prompt without chunking)."""
        p = np.asarray(p, dtype=np.int64)
        c = self.engine.max_num_batched_tokens
        if c == 0:
            return p
        return np.minimum(np.maximum(c // np.asarray(b, dtype=np.int64), 1), p)

    def _blocks(self, grp, page, nbytes, tokens) -> np.ndarray:
        """Pages one request holds in one layer of `grp` for `nbytes` (device bytes) of `tokens` tokens."""
        blocks = _cdiv(np.asarray(nbytes, dtype=np.int64), page)
        keep = grp.ctx.layout.keep_cap
        if keep and self.engine.block_size > 1:  # a window that slid need not start on a page boundary
            blocks = blocks + (np.asarray(tokens) > keep)
        return blocks

    def request(self, p, gen, b=1, shared_prefix=0) -> dict[str, np.ndarray]:
        """Per-request device bytes in whole pages: between steps (`steady`, the largest over the generation,
        shared prefix excluded), the surplus of one request prefilling (`surplus`) and the prefix stored once
        (`shared`)."""
        c, pol, bs = self.cost, self.cost.policy, self.engine.block_size
        p = np.asarray(p, dtype=np.int64)
        steps = np.maximum(np.asarray(gen, dtype=np.int64) - 1, 0)
        chunk = self.chunk(p, b)
        chunked = chunk < p
        share_tokens = (np.minimum(np.asarray(shared_prefix, dtype=np.int64), p) // bs) * bs
        steady = surplus = shared = 0
        for grp, page in self.paged:
            ctx = grp.ctx
            keep = ctx.layout.keep_cap
            held = c._on_device(ctx, pol.peak_bytes(ctx, p, steps))
            tokens = p + steps
            s_blocks = self._blocks(grp, page, held, tokens)
            # what one request holds at the end of its prefill, before a prompt-level compression
            if keep:
                pre_tokens = np.where(chunked, np.minimum(p, keep + chunk), np.minimum(p, keep))
                pre = c._on_device(ctx, pol.bytes_of(ctx, [Segment(ctx.heads, pre_tokens)]))
            else:
                whole = pol.prefill_bytes(ctx, p)
                pre = c._on_device(ctx, np.where(chunked, np.maximum(
                    pol.bytes_of(ctx, [Segment(ctx.heads, p)]), whole), whole))
                pre_tokens = p
            p_blocks = self._blocks(grp, page, pre, pre_tokens)
            if self.shares_prefix and not keep:
                sh = c._on_device(ctx, pol.bytes_of(ctx, [Segment(ctx.heads, share_tokens)])) // page
                sh = np.minimum(sh, s_blocks)
            else:
                sh = 0
            steady = steady + grp.count * page * (s_blocks - sh)
            surplus = surplus + grp.count * page * (p_blocks - s_blocks)
            shared = shared + grp.count * page * sh
        pp = c.pp
        steady = _cdiv(np.asarray(steady, dtype=np.int64), pp) + self.state
        return {"steady": steady, "surplus": np.maximum(_cdiv(np.asarray(surplus, dtype=np.int64), pp), 0),
                "shared": _cdiv(np.asarray(shared, dtype=np.int64), pp)}

    def held(self, p, g) -> np.ndarray:
        """Device bytes, in whole pages, one request with prompt p holds after g decode steps: its largest
        resident set so far (the policy's peak_bytes), recurrent state included. held(p, gen - 1) is
        request(p, gen)["steady"] without a shared prefix; the simulator grows each request's pages by it."""
        c, pol = self.cost, self.cost.policy
        p, g = np.asarray(p, dtype=np.int64), np.asarray(g, dtype=np.int64)
        total = 0
        for grp, page in self.paged:
            held = c._on_device(grp.ctx, pol.peak_bytes(grp.ctx, p, g))
            total = total + grp.count * page * self._blocks(grp, page, held, p + g)
        return _cdiv(np.asarray(total, dtype=np.int64), c.pp) + self.state

    def prefill_held(self, p, done, c_tok) -> np.ndarray:
        """Device bytes in whole pages of a request prefilling tokens done..done + c_tok of its p-token prompt,
        as request() counts them: every prompt token so far (a window plus the chunk in sliding layers); with
        the last chunk the whole prompt before a prompt-level compression, and what a whole-prompt pass
        keeps (prefill_bytes) when the prompt is one pass."""
        cost, pol = self.cost, self.cost.policy
        p, done, c_tok = (np.asarray(x, dtype=np.int64) for x in (p, done, c_tok))
        t = done + c_tok
        whole_pass = (done == 0) & (c_tok >= p)
        total = 0
        for grp, page in self.paged:
            ctx = grp.ctx
            keep = ctx.layout.keep_cap
            if keep:
                tokens = np.where(whole_pass, np.minimum(p, keep), np.minimum(t, keep + c_tok))
                pre = pol.bytes_of(ctx, [Segment(ctx.heads, tokens)])
            else:
                tokens = t
                so_far = pol.bytes_of(ctx, [Segment(ctx.heads, t)])
                whole = pol.prefill_bytes(ctx, p)
                pre = np.where(whole_pass, whole, np.where(t >= p, np.maximum(so_far, whole), so_far))
            total = total + grp.count * page * self._blocks(grp, page, cost._on_device(ctx, pre), tokens)
        return _cdiv(np.asarray(total, dtype=np.int64), cost.pp) + self.state

    def concurrency(self, p, gen, b=1, shared_prefix=0) -> dict[str, np.ndarray]:
        pool = self.pool(p)
        req = self.request(p, gen, b, shared_prefix)
        room = pool["bytes"] - req["surplus"] - req["shared"]
        steady = req["steady"]
        # Below one request the pool serves none (vLLM refuses to start): 0, not a fraction.
        conc = np.where(steady > 0, np.where(room >= steady, np.maximum(room, 0) / np.maximum(steady, 1), 0.0),
                        np.where(room >= 0, np.inf, 0.0))
        whole = np.where(steady > 0, np.maximum(room, 0) // np.maximum(steady, 1), np.where(room >= 0, INT64_MAX, 0))
        return {**{f"pool_{k}": v for k, v in pool.items()}, **req, "room": room, "max_concurrency": conc,
                "max_requests": whole.astype(np.int64)}

    def fits(self, p, gen, b, shared_prefix=0) -> np.ndarray:
        """Whether b such requests fit in the pool together (no product is formed, so nothing overflows)."""
        info = self.concurrency(p, gen, b, shared_prefix)
        b = np.asarray(b, dtype=np.int64)
        return (info["room"] >= 0) & (b <= info["max_requests"])

    def longest(self, gen, b, shared_prefix=0, shape=()) -> np.ndarray:
        """Largest prompt for which b requests (with this gen) fit in the pool; int64 max when unbounded."""
        # Probe no prompt beyond what the model's int64 sizes hold exactly (limits.token_limit): a wide model at
        # 2**36 tokens overflowed, "fitted", and was reported unbounded. Unbounded means fitting at 2**36.
        top = int(min(2**36, max(token_limit(self.cost.model) - int(np.max(gen)), 1)))
        lo = np.zeros(shape, dtype=np.int64)
        hi = np.full(shape, top, dtype=np.int64)

        def ok(p):
            return self.fits(np.maximum(p, 1), gen, b, np.minimum(shared_prefix, np.maximum(p, 1)))
        unbounded = ok(hi) & (top == 2**36)
        for _ in range(37):
            mid = (lo + hi + 1) // 2
            good = ok(mid)
            lo = np.where(good, mid, lo)
            hi = np.where(good, hi, mid - 1)
        lo = np.where(ok(np.ones_like(lo)), lo, 0)
        return np.where(unbounded, INT64_MAX, lo)

    # ----- chunked prefill -----
    def chunk_phase(self, c_tok, b, s, policy_work) -> Phase:
        """One forward pass of b requests each advancing c_tok prompt tokens after s earlier ones: each chunk
        attends to its request's earlier tokens (a window's worth in sliding layers) and reads their KV at the
        stored encoding; a prompt-level policy's own work runs with the last chunk (`policy_work`, a bool or
        an array of them)."""
        c_tok, b = np.asarray(c_tok, dtype=np.int64), np.asarray(b, dtype=np.int64)
        return self.cost.fixed_phase(c_tok, b, prefill=True) + self.chunk_cache_phase(c_tok, b, s, policy_work)

    def chunk_cache_phase(self, c_tok, b, s, policy_work) -> Phase:
        """The cache-dependent part of chunk_phase (attention over earlier chunks, the policy's prompt work)."""
        cost, pol = self.cost, self.cost.policy
        tp = cost.tp
        c_tok, b, s = (np.asarray(x, dtype=np.int64) for x in (c_tok, b, s))
        work = np.asarray(policy_work, dtype=bool)
        ph = Phase()
        attention = cost._timer(b * c_tok, kv=True)
        policy_timer = cost._timer(0, policy=True)
        host = 0.0
        for grp, active in zip(cost.groups, cost.policy_active):
            n, mixer = grp.count, grp.layer.mixer
            if isinstance(mixer, (Mamba, LinearAttention)):
                flops = mixer.prefill_flops(c_tok)  # prompt tokens: the mixer's chunked prefill
                moved, share, on_host = 2.0 * cost.layer_state_bytes(mixer), 1.0 / tp, False
            else:
                ctx = grp.ctx if grp.ctx is not None else grp.source
                lay = ctx.layout
                pairs = causal_pairs(s + c_tok, lay.span) - causal_pairs(s, lay.span)
                sd, vd = prefill_dims(grp.layer, ctx)
                flops = pairs * lay.n_q_heads * (2 * sd + 2 * vd + 5)
                prior = np.minimum(s, lay.span - 1) if lay.span else s
                moved = pol.bytes_of(ctx, [Segment(ctx.heads, prior)])
                if grp.ctx is not None:
                    moved = moved + pol.bytes_of(ctx, [Segment(ctx.heads, c_tok)])
                share, on_host = cost.kv_share(ctx), grp.on_host
            ph.add(n, flops / tp * b, moved * share * b, attention)
            cost.add_unfused_prefill(ph, grp, c_tok, s + c_tok, b, totals=False)
            if on_host:
                host = host + n * moved
            if np.any(work) and grp.ctx is not None and grp.ctx.rank >= 0 and active:
                pf, pb = pol.prefill_cost(grp.ctx, s + c_tok)
                ph.add(n, pf / tp * b * work, pb / tp * b * work, policy_timer)
                ph.policy_layers += n
        if np.any(host):
            if not cost.hw.host_bandwidth:
                raise KvsimError(f"{cost.hw.name} lists no host link bandwidth for offload")
            ph.host_s = host * b / cost.hw.host_bandwidth
        return ph

    def prefill(self, p, b) -> tuple[np.ndarray, Phase]:
        """(TTFT, a Phase whose times, FLOP and bytes are summed over every forward pass of the prefill)."""
        cost = self.cost
        p, b = np.asarray(p, dtype=np.int64), np.asarray(b, dtype=np.int64)
        whole = cost.phase(p, b, np.zeros_like(p), prefill=True)
        whole_t = cost.phase_time(whole, p, b, prefill=True)
        chunk = self.chunk(p, b)
        if not np.any(chunk < p):
            return whole_t, whole
        n_full = _cdiv(p, chunk) - 1  # full chunks before the last one
        last = p - n_full * chunk
        ndim = len(np.broadcast_shapes(p.shape, b.shape))
        idx, w = chunk_nodes(n_full, CHUNK_NODES, ndim)
        body = self.chunk_phase(chunk, b, idx * chunk, False)
        body_t = cost.phase_time(body, chunk, b, prefill=True)
        tail = self.chunk_phase(last, b, n_full * chunk, True)
        tail_t = cost.phase_time(tail, last, b, prefill=True)
        ttft = np.sum(body_t * w, axis=0) + tail_t
        fields_ = ("compute_s", "memory_s", "time_s", "host_s", "comm_s", "flops", "bytes")
        summed = Phase(*(np.sum(np.asarray(getattr(body, f)) * w, axis=0) + getattr(tail, f) for f in fields_),
                       tail.policy_layers)
        use = chunk < p
        ttft = np.where(use, ttft, whole_t)
        summed = Phase(*(np.where(use, getattr(summed, f), getattr(whole, f)) for f in fields_), tail.policy_layers)
        return ttft, summed


def chunk_nodes(n: np.ndarray, k: int, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk indices and weights with sum(w * f(idx)) == sum(f(i) for i < n): every index when n <= 2k, else
    k equal segments each evaluated at the two integers around its mean index (exact for f linear in i).
    Shapes: (2k,) + n's shape, padded to `ndim` trailing dimensions."""
    n = np.asarray(n, dtype=np.int64)
    n = n.reshape((1,) * (ndim - n.ndim) + n.shape)
    j = np.arange(2 * k).reshape((2 * k,) + (1,) * ndim)
    small = n <= 2 * k
    every_idx = np.minimum(j, np.maximum(n - 1, 0))
    every_w = (j < n).astype(np.float64)
    seg = j // 2
    a = seg * n // k
    e = (seg + 1) * n // k
    lo = (a + e - 1) // 2
    node = lo + (j % 2) * ((a + e - 1) % 2)
    seg_w = (e - a) / 2.0
    return np.where(small, every_idx, node), np.where(small, every_w, seg_w)
