"""A discrete-event simulation of one engine replica, scheduled like vLLM's V1 scheduler.

Each iteration is one engine step (one forward pass):
1. Running requests are scheduled in order, decode tokens first (one each), then the chunks of prompts still
   prefilling, within the step's token budget (max_num_batched_tokens; 0: unlimited, whole prompts).
2. Every scheduled request grows to the pages it needs after the step (Serving.held for a decode step,
   Serving.prefill_held for a chunk: the same policy objects predict counts). If the running requests no
   longer fit in the pool, the newest ones are preempted until they do (vLLM's order): by recompute (its KV
   is dropped; it re-prefills prompt + generated tokens when readmitted) or by swap (its KV goes to host
   memory over the host link and comes back on readmission; both transfers block the step).
3. If nothing was preempted, waiting requests are admitted first come first served while seats
   (max_num_seqs), token budget and pool pages last; the first that does not fit stops admission. An engine
   that admits on the full input (vLLM's scheduler_reserve_full_isl) needs the pages of a request's whole
   (re)prefill free, not only those of its first chunk. Blocks the engine keeps for itself (vLLM's null
   block) are never given to a request.
4. The step takes StepCost.time of its mixed batch (plus swap transfers); tokens are emitted at its end.
The engine idles until the next arrival when nothing is running or waiting. Request state lives in numpy
arrays and each step is a handful of vectorised operations, so time is spent per step, not per token.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..errors import KvsimError
from ..serving import Serving
from .step import StepCost
from .workload import Requests

PREEMPTION = ("recompute", "swap")


@dataclass
class SimResult:
    """Per-request times (seconds from time 0), every inter-token gap, and per-step time series."""

    arrival_s: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    preemptions: np.ndarray  # times each request was preempted
    itl_s: np.ndarray  # every gap between consecutive tokens of a request
    series: dict = field(default_factory=dict)  # per step: t_s, step_s, running, waiting, pool_used_bytes, preemptions
    pool_bytes: float = math.inf
    steps: int = 0

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """Mean time per generated token after the first; NaN for requests of one token (no decode)."""
        n = self.output - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, (self.finish_s - self.first_token_s) / np.maximum(n, 1), np.nan)


class Simulator:
    def __init__(self, serving: Serving, pool_bytes: float | None = None, preemption: str = "recompute"):
        if preemption not in PREEMPTION:
            raise KvsimError(f"--preemption must be one of {', '.join(PREEMPTION)}, got {preemption!r}")
        self.serving, self.cost, self.engine = serving, serving.cost, serving.engine
        self.step_cost = StepCost(serving)
        if pool_bytes is None:
            pool_bytes = float(serving.pool(np.int64(1))["bytes"])
        if not (pool_bytes >= 0):
            raise KvsimError("the KV pool size must be a number >= 0")
        # what requests may hold: the pool less the blocks the engine keeps for itself
        self.pool = max(float(pool_bytes) - self.engine.reserved_blocks * serving.block_bytes, 0.0)
        self.preemption = preemption
        if preemption == "swap" and not self.cost.hw.host_bandwidth:
            raise KvsimError(f"{self.cost.hw.name} lists no host link bandwidth to swap over")
        self.budget = self.engine.max_num_batched_tokens or math.inf
        self.seats = self.engine.max_num_seqs or math.inf

    # ----- one request alone -----
    def check(self, reqs: Requests) -> None:
        """Refuse requests the model cannot take or the pool could never hold even alone."""
        from ..limits import check_tokens

        model = self.cost.model
        total = reqs.prompt + reqs.output
        check_tokens(model, total)
        if model.max_context and np.any(total > model.max_context):
            i = int(np.argmax(total))
            raise KvsimError(f"request {i}: prompt {reqs.prompt[i]:,} + output {reqs.output[i]:,} tokens exceeds "
                             f"{model.name}'s {model.max_context:,}-token context")
        if not math.isfinite(self.pool):
            return
        p, g = reqs.prompt, reqs.output - 1
        need = np.maximum(self.serving.held(p, g), self.input_pages(p))
        if np.any(need > self.pool):
            i = int(np.argmax(need))
            raise KvsimError(f"request {i} (prompt {p[i]:,}, output {reqs.output[i]:,} tokens) needs "
                             f"{need[i] / 2**30:.3g} GiB of KV pages alone; the pool holds {self.pool / 2**30:.3g} GiB")

    def input_pages(self, p) -> np.ndarray:
        """Pages a p-token (re)prefill holds once it is done, prefilled in chunks of the token budget: the
        most it holds before its first decode."""
        p = np.asarray(p, dtype=np.int64)
        c = np.minimum(p, self.budget if math.isfinite(self.budget) else p).astype(np.int64)
        last = p - (p - 1) // np.maximum(c, 1) * c
        return self.serving.prefill_held(p, p - last, last)

    # ----- the loop -----
    def run(self, reqs: Requests, progress=None) -> SimResult:
        self.check(reqs)
        sv, cost = self.serving, self.step_cost
        n = len(reqs)
        p0, out = reqs.prompt, reqs.output
        arrival = reqs.arrival_s.copy()
        released = n
        if reqs.closed:
            released = min(reqs.closed, n)
            arrival[:] = np.inf
            arrival[:released] = 0.0
        eff_p = p0.copy()  # the prompt of the current (re)prefill: prompt + tokens generated before a recompute
        done = np.zeros(n, dtype=np.int64)  # tokens of eff_p computed
        steps = np.zeros(n, dtype=np.int64)  # decode steps since that prefill
        k = np.zeros(n, dtype=np.int64)  # tokens generated
        held = np.zeros(n, dtype=np.int64)  # device bytes in whole pages (on host while swapped)
        swapped = np.zeros(n, dtype=bool)
        first = np.full(n, np.nan)
        last = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        npre = np.zeros(n, dtype=np.int64)
        itl = np.empty(int(np.sum(out - 1)), dtype=np.float64)
        n_itl = 0
        run = np.zeros(0, dtype=np.int64)  # running requests, oldest admission first
        waiting: deque[int] = deque()
        ptr = finished = preempted_total = 0
        t = 0.0
        series = {key: [] for key in ("t_s", "step_s", "running", "waiting", "pool_used_bytes", "preemptions")}
        pool, budget, seats = self.pool, self.budget, self.seats
        swap_bw = self.cost.hw.host_bandwidth
        while finished < n:
            while ptr < n and arrival[ptr] <= t:
                waiting.append(ptr)
                ptr += 1
            if not len(run) and not waiting:
                t = float(arrival[ptr])
                if not math.isfinite(t):  # cannot happen: a closed loop releases a request at each finish
                    raise RuntimeError("simulator: no request can arrive")
                continue
            swap_bytes = 0
            preempted_now = False
            while True:  # schedule the running requests; preempt the newest until they fit
                dec = done[run] >= eff_p[run]
                need = np.where(dec, 1, eff_p[run] - done[run])
                order = np.concatenate([np.flatnonzero(dec), np.flatnonzero(~dec)])
                tok = np.zeros(len(run), dtype=np.int64)
                nd = need[order]
                tok[order] = np.clip(budget - (np.cumsum(nd) - nd), 0, nd) if math.isfinite(budget) else nd
                new = held[run].copy()
                sd, sp = np.flatnonzero(dec & (tok > 0)), np.flatnonzero(~dec & (tok > 0))
                if len(sd):
                    new[sd] = sv.held(eff_p[run[sd]], steps[run[sd]] + 1)
                if len(sp):
                    new[sp] = sv.prefill_held(eff_p[run[sp]], done[run[sp]], tok[sp])
                cum = np.cumsum(new)
                if not len(run) or cum[-1] <= pool:
                    break
                keep = int(np.searchsorted(cum, pool, side="right"))
                if keep == 0:
                    i = int(run[0])
                    raise KvsimError(f"request {i} alone no longer fits in the KV pool after {k[i]:,} tokens "
                                     "(its policy's pages grew past the pool)")
                out_ = run[keep:]
                for j in out_[::-1].tolist():  # newest first, each to the front: the oldest ends up first
                    if self.preemption == "swap":
                        swapped[j] = True
                        swap_bytes += int(held[j])
                    else:
                        held[j] = 0
                        eff_p[j], done[j], steps[j] = p0[j] + k[j], 0, 0
                    waiting.appendleft(j)
                npre[out_] += 1
                preempted_total += len(out_)
                preempted_now = True
                run = run[:keep]
            used = int(cum[-1]) if len(run) else 0
            left = budget - int(tok.sum())
            if not preempted_now and waiting and left > 0 and len(run) < seats:
                adm, adm_tok, adm_new, swap_in = self._admit(waiting, pool - used, left, seats - len(run),
                                                             eff_p, done, steps, held, swapped)
                if len(adm):
                    swap_bytes += swap_in
                    swapped[adm] = False
                    run = np.concatenate([run, adm])
                    tok = np.concatenate([tok, adm_tok])
                    new = np.concatenate([new, adm_new])
                    used += int(adm_new.sum())
            if not len(run) or not tok.any():
                raise RuntimeError("simulator: a step with nothing scheduled")
            sched = tok > 0
            dec = done[run] >= eff_p[run]
            d_idx, p_idx = run[sched & dec], run[sched & ~dec]
            p_tok = tok[sched & ~dec]
            dt = cost.time(eff_p[d_idx], steps[d_idx], eff_p[p_idx], done[p_idx], p_tok)
            if swap_bytes:
                dt += swap_bytes / swap_bw
            t_end = t + dt
            held[run] = new
            # decode tokens
            if len(d_idx):
                gaps = t_end - last[d_idx]
                itl[n_itl:n_itl + len(gaps)] = gaps
                n_itl += len(gaps)
                last[d_idx] = t_end
                steps[d_idx] += 1
                k[d_idx] += 1
            # prefill chunks; a finished prefill emits a token
            if len(p_idx):
                done[p_idx] += p_tok
                fin = p_idx[done[p_idx] >= eff_p[p_idx]]
                if len(fin):
                    again = fin[~np.isnan(first[fin])]  # re-prefilled after a recompute
                    if len(again):
                        gaps = t_end - last[again]
                        itl[n_itl:n_itl + len(gaps)] = gaps
                        n_itl += len(gaps)
                    first[fin] = np.where(np.isnan(first[fin]), t_end, first[fin])
                    last[fin] = t_end
                    steps[fin] = 0
                    k[fin] += 1
            gone = k[run] >= out[run]
            if gone.any():
                ended = run[gone]
                finish[ended] = t_end
                held[ended] = 0
                run = run[~gone]
                finished += len(ended)
                if reqs.closed:
                    nxt = min(released + len(ended), n)
                    arrival[released:nxt] = t_end
                    released = nxt
            series["t_s"].append(t_end)
            series["step_s"].append(dt)
            series["running"].append(len(run))
            series["waiting"].append(len(waiting))
            series["pool_used_bytes"].append(int(held[run].sum()))
            series["preemptions"].append(preempted_total)
            t = t_end
            if progress is not None:
                progress(finished)
        return SimResult(arrival_s=arrival, prompt=p0, output=out, first_token_s=first, finish_s=finish,
                         preemptions=npre, itl_s=itl[:n_itl],
                         series={key: np.asarray(v) for key, v in series.items()}, pool_bytes=pool,
                         steps=len(series["t_s"]))

    def _admit(self, waiting: deque, free: float, budget: float, seats: float, eff_p, done, steps, held, swapped):
        """Admit from the front of `waiting` (FCFS, stopping at the first that does not fit): indices, tokens
        scheduled, pages held after the step, bytes swapped back in."""
        sv = self.serving
        adm, toks, news = [], [], []
        swap_in = 0
        window = 64
        while waiting and budget > 0 and seats > 0:
            m = int(min(window, len(waiting), seats, budget))
            cand = np.fromiter((waiting[i] for i in range(m)), dtype=np.int64, count=m)
            dec = done[cand] >= eff_p[cand]
            need = np.where(dec, 1, eff_p[cand] - done[cand])
            tok = np.clip(budget - (np.cumsum(need) - need), 0, need) if math.isfinite(budget) else need
            new = np.where(dec, sv.held(eff_p[cand], steps[cand] + 1), sv.prefill_held(eff_p[cand], done[cand], tok))
            gate = new  # pages that must be free to admit it
            if self.engine.admit_full_input:  # its whole (re)prefill input, not only this step's chunk
                part = np.flatnonzero(~dec & (tok > 0) & (done[cand] + tok < eff_p[cand]))
                if len(part):  # only a chunk cut short by the budget holds less than its whole input
                    gate = new.copy()
                    gate[part] = np.maximum(new[part], self.input_pages(eff_p[cand[part]]))
            ok = (tok > 0) & (np.cumsum(new) - new + gate <= free)
            take = m if ok.all() else int(np.argmin(ok))
            if take:
                c = cand[:take]
                adm.append(c)
                toks.append(tok[:take])
                news.append(new[:take])
                swap_in += int(held[c][swapped[c]].sum())
                for _ in range(take):
                    waiting.popleft()
                free -= float(new[:take].sum())
                budget -= float(tok[:take].sum())
                seats -= take
            if take < m:
                break
            window *= 2
        if not adm:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0
        return np.concatenate(adm), np.concatenate(toks), np.concatenate(news), swap_in
