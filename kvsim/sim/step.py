"""The time of one engine step: a forward pass over a mixed batch of decode tokens and prefill chunks.

Everything comes from the cost model, evaluated once per step over numpy arrays of the step's requests:
  fixed part   CostModel.pass_phase(tokens in the pass, sequences in it): weight matmuls, activations,
               logits, all-reduces (memoised: it depends on those two counts only)
  decode       CostModel.cache_phase(prompt, B, steps so far) for the B decode requests
  prefill      a request's whole prompt in one pass: CostModel.cache_phase(prefill); a chunk of it:
               Serving.chunk_cache_phase (attention over the earlier chunks, the policy's work on the last)
  overheads    CostModel.step_time, once per step.
Each request's cache work is its own roofline (max of compute and memory time) at the efficiency of a batch
of its kind (B decodes, or the step's prefills), i.e. a batch-B evaluation divided by B. For B identical
requests this is exactly predict's batch-B step; for a mixed batch it sums per-request rooflines where a
fused kernel might overlap one request's compute with another's memory traffic (a pessimistic bound of at
most the larger of the two per request).
"""

from __future__ import annotations

import numpy as np

from ..cost import Phase
from ..serving import Serving


class StepCost:
    def __init__(self, serving: Serving):
        self.serving, self.cost = serving, serving.cost
        self._fixed: dict[tuple[int, int], Phase] = {}

    def fixed(self, tokens: int, seqs: int) -> Phase:
        key = (tokens, seqs)
        ph = self._fixed.get(key)
        if ph is None:
            ph = self.cost.pass_phase(np.float64(tokens), np.int64(seqs))
            if len(self._fixed) < 1_000_000:
                self._fixed[key] = ph
        return ph

    def time(self, dec_p, dec_s, pre_p, pre_done, pre_c) -> float:
        """Seconds of one step: decode requests with prompts dec_p after dec_s decode steps, and prefill
        chunks of pre_c tokens after pre_done tokens of prompts pre_p (int64 arrays)."""
        cost = self.cost
        nd, npre = len(dec_p), len(pre_p)
        prompt_tokens = int(pre_c.sum()) if npre else 0
        fixed = self.fixed(nd + prompt_tokens, nd + npre)
        cache_t = host = 0.0
        policy_layers = 0
        if nd:
            ph = cost.cache_phase(dec_p, np.int64(nd), dec_s, prefill=False, totals=False)
            cache_t += _share(ph.time_s, nd)
            host += _share(ph.host_s, nd)
            policy_layers = ph.policy_layers
        if npre:
            whole = (pre_done == 0) & (pre_c >= pre_p)
            nw = int(whole.sum())
            if nw:
                ph = cost.cache_phase(pre_p[whole], np.int64(nw), np.zeros(nw, dtype=np.int64), prefill=True,
                                      totals=False)
                cache_t += _share(ph.time_s, nw)
                host += _share(ph.host_s, nw)
            if nw < npre:
                part = ~whole
                nc = npre - nw
                c, done = pre_c[part], pre_done[part]
                ph = self.serving.chunk_cache_phase(c, np.int64(nc), done, done + c >= pre_p[part])
                cache_t += _share(ph.time_s, nc)
                host += _share(ph.host_s, nc)
        step = Phase(time_s=fixed.time_s + cache_t, comm_s=fixed.comm_s, host_s=fixed.host_s + host)
        return float(cost.step_time(step, prompt_tokens, policy_layers))

    def times(self, batches) -> np.ndarray:
        """time() of many steps at once (a list of its argument tuples), each term evaluated once over every
        step's requests with its own step's batch sizes: what a fit to thousands of logged steps needs."""
        cost = self.cost
        n = len(batches)
        if not n:
            return np.zeros(0)
        cols = [np.concatenate([np.asarray(b[i], dtype=np.int64) for b in batches]) for i in range(5)]
        dec_p, dec_s, pre_p, pre_done, pre_c = cols
        nd = np.array([len(b[0]) for b in batches], dtype=np.int64)
        npre = np.array([len(b[2]) for b in batches], dtype=np.int64)
        d_step, p_step = np.repeat(np.arange(n), nd), np.repeat(np.arange(n), npre)
        prompt_tokens = np.bincount(p_step, weights=pre_c, minlength=n)
        fixed = cost.pass_phase(nd + prompt_tokens, nd + npre)
        cache_t, host = np.zeros(n), np.zeros(n)
        policy_layers = np.zeros(n, dtype=np.int64)

        def add(ph, step, b):
            """Each request's share of its batch-b evaluation, summed into its step."""
            shape = (len(step),)
            cache_t[:] += np.bincount(step, np.broadcast_to(ph.time_s, shape) / b, minlength=n)
            host[:] += np.bincount(step, np.broadcast_to(ph.host_s, shape) / b, minlength=n)

        if len(dec_p):
            b = nd[d_step]
            ph = cost.cache_phase(dec_p, b, dec_s, prefill=False, totals=False)
            add(ph, d_step, b)
            policy_layers[nd > 0] = ph.policy_layers
        whole = (pre_done == 0) & (pre_c >= pre_p)
        if whole.any():
            step = p_step[whole]
            b = np.bincount(step, minlength=n)[step]
            ph = cost.cache_phase(pre_p[whole], b, np.zeros(len(step), dtype=np.int64), prefill=True, totals=False)
            add(ph, step, b)
        if not whole.all():
            part = ~whole
            step = p_step[part]
            b = np.bincount(step, minlength=n)[step]
            c, done = pre_c[part], pre_done[part]
            add(self.serving.chunk_cache_phase(c, b, done, done + c >= pre_p[part]), step, b)
        step = Phase(time_s=fixed.time_s + cache_t, comm_s=fixed.comm_s, host_s=fixed.host_s + host)
        return np.asarray(cost.step_time(step, prompt_tokens, policy_layers), dtype=np.float64) + np.zeros(n)


def _share(x, n: int) -> float:
    """Sum over a step's requests of their share of a batch-n evaluation (x: per request, for n copies)."""
    a = np.asarray(x, dtype=np.float64)
    return float(a.sum()) / n if a.ndim else float(a)  # a scalar: the same for each of the n
