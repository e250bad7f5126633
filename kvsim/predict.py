"""predict(model, hardware, policy, workload, profile) -> Prediction.

Every field of a Prediction is a numpy array broadcast over the workload's prompt, gen and batch arrays,
so one call evaluates a whole sweep. Memory figures are per device; KV and weight totals are also given
for the whole model. Times use the profile (the datasheet roofline unless a calibrated profile is given).

Conventions: `prompt` tokens are prefilled, which yields the first generated token; the remaining gen - 1
tokens take one decode step each. kv_cache_bytes is what is resident after the last step. TPOT is the mean
decode step time: exact for up to `quadrature` steps, a midpoint rule over `quadrature` points beyond.
With gen = 1 there is no decode step: the DECODE_KEYS figures then describe the first one that would follow,
`has_decode` is False there, and front ends report them as absent (the CLI prints none, JSON gives null);
`bound` is then the prefill's.

The engine (serving.py) decides how a prompt is prefilled (whole, or in chunks of its token budget) and how
memory is counted: under `static` batching (hf, the default) the batch is prefilled and decoded together and
max_batch / fits / peak memory are today's static-batch figures; under `continuous` batching (vllm, sglang,
trtllm) requests share a pool of KV blocks and max_batch is floor(max_concurrency), capped at the engine's
max_num_seqs (a batch above it does not fit: the scheduler never runs that many at once). The pool figures
(kv_pool_*, kv_request_bytes, max_concurrency) are given for every engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .cost import CostModel, layer_contexts
from .errors import KvsimError
from .hardware import HardwareSpec
from .model import LinearAttention, Mamba, ModelSpec
from .policies import Compose, Policy, compose
from .limits import INPUT_MAX, ceil_div, check_tokens, exact, token_limit
from .profile import DATASHEET, Profile, domain_notes
from .serving import HF, Engine, Serving, checked_mul


@dataclass(frozen=True)
class Workload:
    prompt: object = 1024  # prompt tokens (array-like)
    gen: object = 1  # generated tokens, >= 1 (array-like)
    batch: object = 1  # sequences decoded together (array-like)
    tp: int = 1
    pp: int = 1
    kv_dtype: str | None = None  # None: the activation dtype of the weight format (bf16 for a bf16 model)
    # SSM / linear-attention state matrices; None: fp32, as transformers keeps them (vLLM's default
    # mamba_ssm_cache_dtype=auto keeps the model dtype instead: pass "bf16")
    state_dtype: str | None = None
    weight_dtype: str | None = None  # weight format (weights.py: "fp16", "fp8:block=128", "int4"); None: the model's
    quadrature: int = 8  # decode steps evaluated for the mean TPOT
    shared_prefix: object = 0  # leading prompt tokens every request shares (a system prompt), stored once


def _as_int_array(name: str, x, minimum: int) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "O":  # Python integers beyond int64
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError, OverflowError):
            raise KvsimError(f"{name} must be numeric") from None
    if a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and not np.all(np.isfinite(a))):
        raise KvsimError(f"{name} must be numeric")
    if a.dtype.kind == "f" and np.any(a != np.floor(a)):
        raise KvsimError(f"{name} must be whole numbers")
    if np.any(a > INPUT_MAX):
        raise KvsimError(f"{name} must be at most 2**53 ({INPUT_MAX:,}), got {float(np.max(a)):.3g}")
    a = a.astype(np.int64)
    if np.any(a < minimum):
        raise KvsimError(f"{name} must be >= {minimum}, got {int(a.min())}")
    return a


# Figures of the decode steps; where gen = 1 there is none and they describe a step that does not happen.
DECODE_KEYS = ("decode_flops", "decode_bytes", "tpot_s", "tpot_first_s", "tpot_last_s", "decode_tokens_per_s",
               "bound_decode")


@dataclass
class Prediction:
    kv_cache_bytes: np.ndarray  # resident after the last step, whole model, whole batch, wherever it lives:
    #   keys and values with their quantization metadata; policy state is in policy_state_bytes
    policy_state_bytes: np.ndarray  # the policy's bookkeeping beside it (scores, positions, counts, page summaries)
    kv_cache_bytes_per_device: np.ndarray  # of kv_cache_bytes, what the busiest device holds (offloaded excluded)
    kv_peak_bytes: np.ndarray  # largest device-resident KV and policy state during the request, per device
    kv_shared_bytes: np.ndarray  # per-layer policy data shared by the batch (scorer weights, bases)
    kv_host_bytes: np.ndarray  # part of kv_cache_bytes kept in host memory (offload)
    state_bytes: np.ndarray  # SSM / linear-attention recurrent state, whole batch
    weights_bytes: np.ndarray
    weights_bytes_per_device: np.ndarray
    activation_peak_bytes: np.ndarray  # per device
    peak_memory_bytes: np.ndarray  # per device
    capacity_bytes: float
    fits: np.ndarray
    max_batch: np.ndarray  # at this prompt and gen
    prefill_flops: np.ndarray  # per device
    prefill_bytes: np.ndarray
    decode_flops: np.ndarray  # mean per decode step, per device
    decode_bytes: np.ndarray
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    tpot_first_s: np.ndarray
    tpot_last_s: np.ndarray
    e2e_s: np.ndarray
    decode_tokens_per_s: np.ndarray  # whole batch
    throughput_tokens_per_s: np.ndarray  # generated tokens of the batch over the whole request
    bound_prefill: np.ndarray
    bound_decode: np.ndarray
    kv_pool_bytes: np.ndarray  # the engine's KV pool on one device: whole blocks
    kv_pool_blocks: np.ndarray  # blocks of block_size tokens across every layer the device holds
    kv_pool_tokens: np.ndarray  # kv_pool_blocks x block_size
    kv_request_bytes: np.ndarray  # one request between steps, in whole pages, per device (shared prefix excluded)
    max_concurrency: np.ndarray  # requests of this prompt and gen the pool holds together (float; inf: unbounded)
    engine: str = "hf"
    notes: list[str] = field(default_factory=list)
    _engine: object = field(default=None, repr=False)

    @property
    def has_decode(self) -> np.ndarray:
        """Where the request has a decode step (gen > 1), at the workload's broadcast shape."""
        return np.broadcast_to(np.asarray(self._engine.gen) > 1, np.shape(self.bound_decode))

    @property
    def bound(self) -> np.ndarray:
        """What limits the request's token generation: the decode step's bound, the prefill's where gen = 1."""
        return np.where(self.has_decode, self.bound_decode, self.bound_prefill)

    def max_context(self) -> np.ndarray:
        """Largest prompt that fits in device memory at this batch and gen (bisection, per point; 0 when not
        even one token fits)."""
        return self._engine.max_context()

    def max_request_context(self) -> np.ndarray:
        """Largest prompt one request (at this gen) can have in the engine's KV pool; int64 max: unbounded."""
        return self._engine.max_request_context()

    def kv_bytes_per_layer(self) -> list[tuple[int, np.ndarray]]:
        """(layer index, bytes for the whole batch) after the last step, layers with a cache only."""
        return self._engine.per_layer()

    KEYS = ("kv_cache_bytes", "policy_state_bytes", "kv_cache_bytes_per_device", "kv_peak_bytes", "kv_shared_bytes",
            "kv_host_bytes",
            "state_bytes", "weights_bytes", "weights_bytes_per_device", "activation_peak_bytes",
            "peak_memory_bytes", "fits", "max_batch", "prefill_flops", "prefill_bytes", "decode_flops",
            "decode_bytes", "ttft_s", "tpot_s", "tpot_first_s", "tpot_last_s", "e2e_s", "decode_tokens_per_s",
            "throughput_tokens_per_s", "bound_prefill", "bound_decode", "bound", "kv_pool_bytes", "kv_pool_blocks",
            "kv_pool_tokens", "kv_request_bytes", "max_concurrency")

    def broadcast(self, fn) -> "Prediction":
        for k in self.KEYS:
            if k != "bound":
                setattr(self, k, fn(getattr(self, k)))
        return self

    def columns(self) -> dict[str, np.ndarray]:
        """Every output as a flat array of the broadcast shape."""
        shape = np.broadcast_shapes(*(np.shape(getattr(self, k)) for k in self.KEYS))
        return {k: np.broadcast_to(getattr(self, k), shape).ravel() for k in self.KEYS}


class _Engine:
    """Holds the cost model and workload arrays so max_context and per-layer bytes can be asked later."""

    def __init__(self, cost: CostModel, p, gen, b, capacity: float, serving: Serving | None = None, shared=0):
        self.cost, self.p, self.gen, self.b, self.capacity = cost, p, gen, b, capacity
        self.serving = serving or Serving(cost, HF, capacity)
        self.shared = shared
        prof = cost.profile
        self.reserve = int(prof.runtime_bytes) + int(prof.cudagraph_bytes)

    def peak_memory(self, p, gen, b) -> tuple[np.ndarray, ...]:
        """(peak bytes per device, weights, shared, per-sequence KV peak, activations). Per-sequence sizes are
        exact int64 (limits.token_limit bounds them); whatever the batch scales is float64, exact below 2**53
        (limits.exact turns a reported figure back to int64 or refuses)."""
        c = self.cost
        steps = gen - 1
        weights = ceil_div(c.weight_bytes(), c.tp * c.pp)
        shared = c.shared_bytes(per_device=True)
        state = ceil_div(c.state_bytes(), c.tp)
        kv_prefill = c.kv_stored(p, 0, per_device=True, place="device", prefill=True)
        kv_peak = c.kv_stored(p, steps, peak=True, per_device=True, place="device")
        bf = np.asarray(b, dtype=np.float64)
        act_pre = c.activation_peak(p, b, True)
        act_dec = c.activation_peak(p, b, False) + bf * c.decode_workspace(p, np.maximum(steps - 1, 0))
        pp = c.pp
        prefill = ceil_div(bf * (kv_prefill + state), pp) + act_pre
        decode = ceil_div(bf * (kv_peak + state), pp) + act_dec
        total = float(weights) + float(ceil_div(shared, pp)) + np.maximum(prefill, decode) + self.reserve
        return total, weights, shared, kv_peak, np.maximum(act_pre, act_dec)

    def _shape(self):
        return np.broadcast_shapes(np.shape(self.p), np.shape(self.gen), np.shape(self.b), np.shape(self.shared))

    def max_request_context(self) -> np.ndarray:
        return self.serving.longest(self.gen, 1, self.shared, self._shape())

    def max_context(self) -> np.ndarray:
        """Largest prompt that fits at this gen and batch (0 when even one token does not). The prefill's
        activations alone grow by batch x live width / tp bytes per prompt token, so a prompt beyond capacity
        over that cannot fit: the search is bounded by it (and by limits.token_limit) in every case."""
        if self.serving.engine.batching == "continuous":
            return self.serving.longest(self.gen, self.b, self.shared, self._shape())
        c = self.cost
        shape = np.broadcast_shapes(np.shape(self.p), np.shape(self.gen), np.shape(self.b))
        gen, b = np.broadcast_to(self.gen, shape), np.broadcast_to(self.b, shape)
        per_token = b * (c.activation_live_elements() * c.abytes / c.tp)  # float64, >= 1 / tp
        room = np.floor(self.capacity / per_token) + 1  # does not fit
        hi = np.minimum(room, float(token_limit(c.model)) - gen).astype(np.int64)
        hi = np.maximum(hi, 1)
        lo = np.zeros(shape, dtype=np.int64)  # fits (0 tokens: trivially, unless the weights do not)
        lo = np.where(self.peak_memory(hi, gen, b)[0] <= self.capacity, hi, lo)
        for _ in range(int(np.max(hi)).bit_length() + 1):
            mid = (lo + hi + 1) // 2
            ok = self.peak_memory(np.maximum(mid, 1), gen, b)[0] <= self.capacity
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid - 1)
        weights_fit = self.peak_memory(np.ones_like(lo), gen, b)[0] <= self.capacity
        return np.where(weights_fit, lo, 0)

    def per_layer(self):
        steps = self.gen - 1
        bf = np.asarray(self.b, dtype=np.float64)
        return [(i, exact(f"layer {i} KV", bf * b)) for i, b in self.cost.kv_layer_stored(self.p, steps)]


def _weights(steps: np.ndarray, k: int, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode steps (0-based resident index) to evaluate and their weights for the mean: every step when
    there are at most k, else the midpoints of k equal intervals. Shapes: (k,) + steps' shape, padded to
    `ndim` trailing dimensions so they broadcast against the workload."""
    steps = steps.reshape((1,) * (ndim - steps.ndim) + steps.shape)
    ks = np.arange(k).reshape((k,) + (1,) * ndim)
    small = steps <= k
    idx = np.where(small, np.minimum(ks, np.maximum(steps - 1, 0)), ((ks + 0.5) * steps / k).astype(np.int64))
    w = np.where(small, (ks < steps) / np.maximum(steps, 1), 1.0 / k)
    return idx, w


def predict(model: ModelSpec, hardware: HardwareSpec, policy: Compose | Policy | None = None,
            workload: Workload | None = None, profile: Profile | None = None,
            engine: Engine | str | None = None) -> Prediction:
    wl = workload or Workload()
    profile = profile or DATASHEET
    if engine is None:
        engine = HF
    elif isinstance(engine, str):
        from .presets import load_engine
        engine = load_engine(engine)
    if policy is None:
        policy = Compose(())
    elif isinstance(policy, Policy):
        policy = compose(policy)
    if wl.quadrature < 1:
        raise KvsimError("quadrature must be at least 1")
    p = _as_int_array("prompt", wl.prompt, 1)
    gen = _as_int_array("gen", wl.gen, 1)
    b = _as_int_array("batch", wl.batch, 1)
    shared_prefix = _as_int_array("shared_prefix", wl.shared_prefix, 0)
    if np.any(shared_prefix > p):
        raise KvsimError("the shared prefix must not be longer than the prompt")
    if engine.chunked and np.any(b > engine.max_num_batched_tokens):
        raise KvsimError(f"--max-num-batched-tokens {engine.max_num_batched_tokens} is smaller than the batch "
                         f"{int(np.max(b))}: every step needs at least one token per request")
    check_tokens(model, p + gen)
    cost = CostModel(model, hardware, policy, kv_dtype=wl.kv_dtype, weight_dtype=wl.weight_dtype, tp=wl.tp,
                     pp=wl.pp, profile=profile, state_dtype=wl.state_dtype)
    exact("the model's weights", cost.weight_bytes())
    capacity = int(hardware.memory_bytes - profile.reserved_bytes)
    serving = Serving(cost, engine, capacity)
    eng = _Engine(cost, p, gen, b, capacity, serving, shared_prefix)
    steps = gen - 1

    # prefill: the whole prompt in one pass, or chunks of the engine's token budget
    ttft, pre = serving.prefill(p, b)

    # decode: step s+1 reads what is resident after s steps. The weight and activation work is the same
    # every step; only the cache-dependent part is evaluated at each quadrature step.
    fixed = cost.fixed_phase(p, b, prefill=False)
    first = fixed + cost.cache_phase(p, b, np.zeros_like(p), prefill=False)
    last = fixed + cost.cache_phase(p, b, np.maximum(steps - 1, 0), prefill=False)
    tpot_first = cost.phase_time(first, p, b, prefill=False)
    tpot_last = cost.phase_time(last, p, b, prefill=False)
    k = int(min(wl.quadrature, max(1, int(np.max(steps)))))
    if k <= 2:  # every step is the first or the last one
        w_last = np.where(steps >= 2, 0.5, 0.0)
        tpot = (1 - w_last) * tpot_first + w_last * tpot_last
        decode_flops = (1 - w_last) * first.flops + w_last * last.flops
        decode_bytes = (1 - w_last) * first.bytes + w_last * last.bytes
    else:
        ndim = len(np.broadcast_shapes(p.shape, gen.shape, b.shape))
        idx, w = _weights(np.maximum(steps, 1), k, ndim)
        var = cost.cache_phase(p, b, idx, prefill=False, totals=False)
        step_t = cost.phase_time(fixed + var, p, b, prefill=False)
        tpot = np.sum(step_t * w, axis=0)
        decode_flops = fixed.flops + b * np.sum(var.flops * w, axis=0)
        decode_bytes = fixed.bytes + b * np.sum(var.bytes * w, axis=0)
    # the bound of the decode phase is taken at the mean-time step's shape: use the last step (largest cache)
    bound_decode = cost.bound(last, tpot_last)
    bound_prefill = cost.bound(pre, ttft)

    e2e = ttft + steps * tpot
    total, weights_dev, shared_dev, kv_peak_dev, act = eng.peak_memory(p, gen, b)
    total = exact("peak memory per device", total)
    fixed = weights_dev + ceil_div(shared_dev, cost.pp)
    per_seq = eng.peak_memory(p, gen, np.ones_like(b))[0] - fixed - eng.reserve
    room = capacity - fixed - eng.reserve
    max_batch = np.where(room > 0, np.floor(room / per_seq), 0).astype(np.int64)
    pool = serving.concurrency(p, gen, b, shared_prefix)
    fits = total <= capacity
    if engine.batching == "continuous":  # requests share the engine's pool of KV blocks
        act = pool["pool_activation"]
        used = checked_mul(b, pool["steady"], "the batch's KV") + pool["surplus"] + pool["shared"]
        total = fixed + act + eng.reserve + used
        fits = (pool["room"] >= 0) & (b <= pool["max_requests"])
        max_batch = pool["max_requests"]
        if np.any(pool["pool_usable"] == 0):
            notes_pool = [f"{engine.label}: weights, activations and reservations leave no room for a KV pool in "
                          f"{engine.memory_fraction:g} of the device"]
        else:
            notes_pool = []
        seats = engine.max_num_seqs  # the scheduler runs at most this many requests at once, whatever the pool holds
        if seats:
            if np.any(max_batch > seats):
                notes_pool.append(f"max batch is {engine.label}'s max_num_seqs, {seats:,}: the KV pool holds more "
                                  "requests than it schedules together")
            if np.any(b > seats):
                notes_pool.append(f"batch exceeds {engine.label}'s max_num_seqs ({seats:,}): it never runs that many "
                                  "requests at once")
            max_batch = np.minimum(max_batch, seats)
            fits = fits & (b <= seats)
    else:
        notes_pool = []

    bf = b.astype(np.float64)  # batch-scaled sizes in float64, exact below 2**53 (limits.py)
    kv_total = exact("KV cache", bf * cost.kv_stored(p, steps, state=False))
    kv_dev = exact("KV cache per device", ceil_div(bf * cost.kv_stored(p, steps, per_device=True, place="device",
                                                                       state=False), cost.pp))
    ctxs = [c for c in layer_contexts(model, cost.kv_bits) if c is not None]
    notes = policy.notes(p, [c for c in ctxs if c.rank >= 0]) + policy.idle_notes(model.name, ctxs, recurrent=any(
        isinstance(layer.mixer, (Mamba, LinearAttention)) for layer in model.layers)) + notes_pool
    shape = np.broadcast_shapes(p.shape, gen.shape, b.shape, shared_prefix.shape)
    if model.max_context and np.any(p + gen > model.max_context):
        notes.append(f"{model.name} was trained for {model.max_context} tokens; prompt + gen exceeds that")
    notes.extend(model.notes)
    fitted_on = (profile.meta or {}).get("hardware")
    if fitted_on and fitted_on != hardware.name:
        notes.append(f"profile {profile.name} was fitted on {fitted_on}, not {hardware.name}: its efficiencies may "
                     "not carry over")
    notes.extend(domain_notes(profile, model.n_params(), p, gen, b, (cost.weight_dtype, cost.kv_dtype)))
    notes.extend(cost.notes)

    def full(x):  # every field has the workload's broadcast shape, whatever it depends on
        return np.broadcast_to(np.asarray(x), shape)

    return Prediction(
        kv_cache_bytes=kv_total,
        policy_state_bytes=exact("policy state", bf * cost.policy_state(p, steps)),
        kv_cache_bytes_per_device=kv_dev,
        kv_peak_bytes=exact("KV peak per device", ceil_div(bf * kv_peak_dev, cost.pp)),
        kv_shared_bytes=exact("shared policy data", cost.shared_bytes()),
        kv_host_bytes=exact("offloaded KV", bf * cost.kv_stored(p, steps, place="host", state=False)),
        state_bytes=exact("recurrent state", bf * cost.state_bytes()),
        weights_bytes=exact("the model's weights", cost.weight_bytes()),
        weights_bytes_per_device=exact("weights per device", weights_dev),
        activation_peak_bytes=exact("activations", act),
        peak_memory_bytes=total,
        capacity_bytes=int(capacity),
        fits=fits,
        max_batch=max_batch,
        prefill_flops=pre.flops,
        prefill_bytes=pre.bytes,
        decode_flops=decode_flops,
        decode_bytes=decode_bytes,
        ttft_s=ttft,
        tpot_s=tpot,
        tpot_first_s=tpot_first,
        tpot_last_s=tpot_last,
        e2e_s=e2e,
        decode_tokens_per_s=b / tpot,
        throughput_tokens_per_s=bf * gen / e2e,
        bound_prefill=bound_prefill,
        bound_decode=bound_decode,
        kv_pool_bytes=pool["pool_bytes"],
        kv_pool_blocks=pool["pool_blocks"],
        kv_pool_tokens=pool["pool_tokens"],
        kv_request_bytes=pool["steady"],
        max_concurrency=pool["max_concurrency"],
        engine=engine.label,
        notes=notes,
        _engine=eng,
    ).broadcast(full)


def replace(wl: Workload, **changes) -> Workload:
    return dataclasses.replace(wl, **changes)
