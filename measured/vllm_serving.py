"""Drive a real vLLM engine (the CPU build) with timed arrivals and record per-request latencies.

This is the ground truth for `kvsim simulate`: one engine replica, continuous batching, chunked prefill and a
paged KV pool, exactly as vLLM schedules them. It runs in a virtual environment of its own (vLLM pins its own
torch and transformers; see measured/results/vllm-cpu/collect.sh) and imports nothing from kvsim.

The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the loop is the engine's own:
admit every request whose arrival time has passed, run one engine step, stamp the tokens it produced. A
request's arrival is its scheduled time, not when the loop noticed it, so a long step delays admission the way
it delays a real server's. Weights are random (`load_format="dummy"`): latency does not depend on their values.

Every step is logged too (its start and end on the same clock, and vLLM's own iteration details: prefill
requests and tokens, decode requests; with the decode requests' cached tokens, running and waiting requests, KV-cache usage, preemptions), which is what a step-time
model is fitted to.

Each request's row also counts its preemptions (vLLM V1 recomputes a preempted request: its next prefill covers
the prompt and every token generated before it, logged as such).

Usage (inside the vLLM venv), one engine for several request files run one after another (start-up costs a
minute on 2 cores):
  python measured/vllm_serving.py --config DIR --out-dir OUT --kv-cache-gib 1 rate0.5.csv rate1.csv ...
each requests file has columns request,arrival_s,prompt_tokens,output_tokens; each gives OUT/<stem>.csv (one
row per request) and OUT/<stem>.steps.csv (one row per engine step), and OUT/meta.json records the engine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def read_requests(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        out.append({"request": r["request"], "arrival_s": float(r["arrival_s"]),
                    "prompt_tokens": int(r["prompt_tokens"]), "output_tokens": int(r["output_tokens"])})
    return sorted(out, key=lambda r: r["arrival_s"])


def write_atomic(path: str, header: list[str], rows: list[list]) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    umask = os.umask(0)  # mkstemp makes 0600 files; give the result the mode a plain open() would
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def watch_schedule(engine, batches: list, preemptions: dict) -> None:
    """Record what every step scheduled, per request: decodes as prompt:steps (tokens already decoded), prefill
    chunks as input:done:chunk, where input is what the (re)prefill covers: the prompt, or after a preemption
    the prompt and every token generated before it (vLLM recomputes them all). vLLM advances
    num_computed_tokens inside schedule(), so "before" is the value after it minus what was scheduled. Each
    scheduled request's preemption count so far goes into `preemptions`."""
    sched = engine.engine_core.engine_core.scheduler
    original = sched.schedule

    def schedule(*args, **kwargs):
        out = original(*args, **kwargs)
        dec, pre = [], []
        for rid, n in out.num_scheduled_tokens.items():
            req = sched.requests[rid]
            p, before = req.num_prompt_tokens, req.num_computed_tokens - n
            if before >= p and n == 1:
                dec.append(f"{p}:{before - p}")
            else:
                pre.append(f"{req.num_tokens}:{before}:{n}")
            preemptions[rid.rsplit("-", 1)[0]] = req.num_preemptions  # the core's id is "<ours>-<8 hex>"
        batches.append((" ".join(dec), " ".join(pre)))
        return out

    sched.schedule = schedule


def run(engine, reqs: list[dict], prompt, params, steps_log: list, batches: list,
        preemptions: dict) -> tuple[list[list], list[list], float]:
    """Replay one request file against a drained engine; return request rows, step rows and wall time."""
    pending = list(reqs)
    state: dict[str, dict] = {}
    step_rows = []
    t0 = time.perf_counter()
    while pending or engine.has_unfinished_requests():
        now = time.perf_counter() - t0
        while pending and pending[0]["arrival_s"] <= now:
            r = pending.pop(0)
            engine.add_request(r["request"], prompt(len(state), r["prompt_tokens"]), params(r["output_tokens"]))
            state[r["request"]] = dict(r, admitted_s=now, times=[])
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[0]["arrival_s"] - (time.perf_counter() - t0)))
            continue
        steps_log.clear()
        batches.clear()
        t_start = time.perf_counter() - t0
        outs = engine.step()
        t = time.perf_counter() - t0
        decode_ctx = 0
        for o in outs:
            s = state[o.request_id]
            n = len(o.outputs[0].token_ids)
            if s["times"] and n > len(s["times"]):
                decode_ctx += s["prompt_tokens"] + len(s["times"])  # tokens already cached when it decoded
            s["times"].extend([t] * (n - len(s["times"])))
        if len(batches) != 1:
            raise SystemExit(f"an engine step scheduled {len(batches)} batches; expected one")
        for sched, it in steps_log:
            d = sched.iteration_details
            if d is None or d.is_dummy:
                continue
            step_rows.append([f"{t_start:.6f}", f"{t:.6f}", d.num_ctx_requests,
                              d.num_ctx_tokens, d.num_generation_requests, d.num_generation_tokens, decode_ctx,
                              sched.num_running_reqs, sched.num_waiting_reqs, f"{sched.kv_cache_usage:.6f}",
                              it.num_preempted_reqs if it is not None else 0, *batches[0]])
    wall = time.perf_counter() - t0

    rows = []
    for s in state.values():
        ts = s["times"]
        if len(ts) != s["output_tokens"]:
            raise SystemExit(f"request {s['request']}: {len(ts)} tokens, expected {s['output_tokens']}")
        itl = [b - a for a, b in zip(ts, ts[1:])]
        tpot = f"{(ts[-1] - ts[0]) / (len(ts) - 1):.6f}" if len(ts) > 1 else ""
        rows.append([s["request"], f"{s['arrival_s']:.6f}", s["prompt_tokens"], s["output_tokens"],
                     f"{s['admitted_s']:.6f}", f"{ts[0]:.6f}", f"{ts[-1]:.6f}", f"{ts[0] - s['arrival_s']:.6f}",
                     tpot, f"{ts[-1] - s['arrival_s']:.6f}", f"{max(itl) if itl else 0.0:.6f}",
                     preemptions.get(s["request"], 0)])
    return rows, step_rows, wall


REQUEST_HEADER = ["request", "arrival_s", "prompt_tokens", "output_tokens", "admitted_s", "first_token_s",
                  "finish_s", "ttft_s", "tpot_s", "e2e_s", "max_itl_s", "preemptions"]
STEP_HEADER = ["start_s", "end_s", "prefill_requests", "prefill_tokens", "decode_requests",
               "decode_tokens", "decode_context_tokens", "running", "waiting", "kv_usage", "preempted", "decodes", "prefills"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("requests", nargs="+", help="request CSV files, run one after another")
    ap.add_argument("--config", required=True, help="folder holding only a config.json")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE (whole GiB)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--warmup", type=int, default=4, help="requests run (and discarded) before each clock starts")
    a = ap.parse_args()

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(a.kv_cache_gib)
    import torch
    import vllm
    from vllm import EngineArgs, LLMEngine, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.v1.metrics.loggers import StatLoggerBase

    steps_log: list = []

    class StepLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                steps_log.append((scheduler_stats, iteration_stats))

        def log_engine_initialized(self):
            pass

    kw = dict(model=a.config, load_format="dummy", skip_tokenizer_init=True, dtype=a.dtype,
              max_model_len=a.max_model_len, max_num_seqs=a.max_num_seqs, enable_prefix_caching=False,
              seed=0, disable_log_stats=False, enable_logging_iteration_details=True)
    if a.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = a.max_num_batched_tokens
    engine = LLMEngine.from_engine_args(EngineArgs(**kw), stat_loggers=[StepLogger])
    sched = engine.vllm_config.scheduler_config
    cache = engine.vllm_config.cache_config
    batches: list = []
    preemptions: dict = {}
    watch_schedule(engine, batches, preemptions)
    vocab = 1000  # token ids only index the embedding; any valid id costs the same

    def prompt(i: int, n: int):
        return TokensPrompt(prompt_token_ids=[(i * 7919 + j * 31) % vocab + 1 for j in range(n)])

    def params(n: int):
        return SamplingParams(max_tokens=n, ignore_eos=True, detokenize=False, temperature=0.0)

    os.makedirs(a.out_dir, exist_ok=True)
    meta = {
        "vllm": vllm.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "dtype": a.dtype, "kv_cache_gib": a.kv_cache_gib, "block_size": cache.block_size,
        "num_blocks": cache.num_gpu_blocks, "max_num_seqs": sched.max_num_seqs,
        "max_num_batched_tokens": sched.max_num_batched_tokens, "chunked_prefill": sched.enable_chunked_prefill,
        "prefix_caching": False, "reserve_full_input": bool(getattr(sched, "scheduler_reserve_full_isl", False)),
        "runs": {},
    }
    for path in a.requests:
        # Warm-up: first steps compile and allocate; a server would have done this before its first user.
        for i in range(a.warmup):
            engine.add_request(f"warm{i}", prompt(10_000 + i, 64), params(8))
        while engine.has_unfinished_requests():
            engine.step()
        steps_log.clear()
        batches.clear()
        stem = os.path.splitext(os.path.basename(path))[0]
        preemptions.clear()
        rows, step_rows, wall = run(engine, read_requests(path), prompt, params, steps_log, batches, preemptions)
        write_atomic(os.path.join(a.out_dir, stem + ".csv"), REQUEST_HEADER, rows)
        write_atomic(os.path.join(a.out_dir, stem + ".steps.csv"), STEP_HEADER, step_rows)
        meta["runs"][stem] = {"requests": len(rows), "steps": len(step_rows), "wall_s": round(wall, 3),
                              "preemptions": int(sum(r[-1] for r in rows)),
                              "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        print(f"{stem}: {len(rows)} requests, {len(step_rows)} steps, {meta['runs'][stem]['preemptions']} "
              f"preemptions, {wall:.1f} s", file=sys.stderr, flush=True)
    tmp = os.path.join(a.out_dir, ".meta.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(a.out_dir, "meta.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
