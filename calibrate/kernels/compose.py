"""End-to-end check: decode steps and prefills composed from the measured ops, against the cost model with a
fitted profile.

A composed step adds, per layer, the measured QKV, output, gate-up and down GEMMs (or the fused MoE block),
the attention kernel and the two all-reduces under tensor parallelism, then the logits GEMM. GEMM shapes off
the table's (n, k) grid are interpolated linearly between grid points (latency is close to linear in n and
k there); all-reduce sizes log-log between measured sizes; attention query-head counts linearly between
the two measured ones around them; other attention and MoE shapes must be measured exactly, or the case
is skipped and says so. kvsim's side is the cost model's same work (its norm and
activation traffic, which the tables do not time, left out), so agreement measures the profile, not what
the tables omit. GEMMs wider than the table's widest n are composed of column blocks that it covers.
`python -m calibrate.kernels.compose --profile h100-sxm-vllm` prints the table.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from kvsim import load_hardware, load_model
from kvsim.cost import CostModel
from kvsim.errors import KvsimError
from kvsim.model import MLP, Attention, MoE
from kvsim.policies import Compose
from kvsim.profile import load_profile

from . import aiconfigurator as aic
from . import families

CASES = [("llama-3-8b", 1), ("qwen2.5-7b", 1), ("mistral-7b-v0.1", 1), ("mixtral-8x7b", 1), ("llama-3-70b", 4),
         ("llama-3-70b", 8)]
BATCHES = (1, 8, 64)
CONTEXTS = (1024, 4096, 16384, 32768)


class Tables:
    """Exact and interpolated lookups in one system's and framework's measured tables."""

    def __init__(self, system: str, framework: str):
        load = lambda f: aic.load(system, f, framework)  # noqa: E731
        g = load("gemm").rows
        g = families._fastest(g[g["gemm_dtype"] == "bfloat16"], ["m", "n", "k", "gemm_dtype"])
        self.gemm = {m: sub for m, sub in g.groupby("m")}
        self._interp: dict = {}
        att = lambda t: families._attention_rows(t.rows) if t is not None else None  # noqa: E731
        self.decode, self.prefill = att(load("decode_attention")), att(load("prefill_attention"))
        moe = load("moe")
        self.moe = families.moe(moe.rows).rows if moe is not None else None
        ar = load("allreduce")
        self.allreduce = families.allreduce(ar.rows).rows if ar is not None else None

    def gemm_s(self, m: int, n: int, k: int) -> float:
        """A GEMM wider than the grid's widest n (a 128K-token vocabulary's logits) is composed of equal column
        blocks within the grid: each output column depends on its own weight columns only, and extrapolating
        latency linearly past the grid's last two n would follow whichever kernels cuBLAS picked there."""
        if m not in self.gemm:
            raise LookupError(f"GEMM m={m} not measured")
        if m not in self._interp:
            self._interp[m] = self._grid(self.gemm[m])
        blocks = -(-n // int(self.gemm[m]["n"].max()))
        return blocks * float(self._interp[m]([[n / blocks, k]])[0])

    @staticmethod
    def _grid(sub):
        """Linear interpolation over one m's (n, k) grid, extrapolating linearly past its edges."""
        from scipy.interpolate import RegularGridInterpolator

        ns, ks = np.unique(sub["n"]), np.unique(sub["k"])
        grid = sub.pivot_table(index="n", columns="k", values="seconds").reindex(index=ns, columns=ks)
        if grid.isna().any().any():
            grid = grid.interpolate(axis=0, limit_direction="both").interpolate(axis=1, limit_direction="both")
        return RegularGridInterpolator((ns, ks), grid.to_numpy(), bounds_error=False, fill_value=None)

    @staticmethod
    def _exact(df, what: str, **key) -> float:
        if df is None:
            raise LookupError(f"no {what} table")
        sel = np.ones(len(df), bool)
        for col, v in key.items():
            sel &= df[col].to_numpy() == v
        if not sel.any():
            raise LookupError(f"{what} {key} not measured")
        return float(df["seconds"].to_numpy()[sel].min())

    def attention_s(self, decode: bool, b: int, length: int, heads: int, kv_heads: int, head_dim: int) -> float:
        """Measured attention kernel; a query-head count between two measured ones (Qwen2.5-7B's 28 between 24
        and 32, at the same KV heads, batch and length) is interpolated linearly between them."""
        df, what = (self.decode, "decode attention") if decode else (self.prefill, "prefill attention")
        if df is None:
            raise LookupError(f"no {what} table")
        key = dict(batch_size=b, num_key_value_heads=kv_heads, head_dim=head_dim, kv_cache_dtype="bfloat16",
                   window_size=0, **({"step": length - 1} if decode else {"isl": length}))
        try:
            return self._exact(df, what, num_heads=heads, **key)
        except LookupError:
            pass
        have = np.unique(df["num_heads"].to_numpy()[df["num_key_value_heads"].to_numpy() == kv_heads])
        lo, hi = have[have < heads], have[have > heads]
        if not lo.size or not hi.size:
            raise LookupError(f"{what} {dict(num_heads=heads, **key)} not measured")
        a, c = int(lo.max()), int(hi.min())
        ta, tc = self._exact(df, what, num_heads=a, **key), self._exact(df, what, num_heads=c, **key)
        return ta + (tc - ta) * (heads - a) / (c - a)

    def moe_s(self, tokens: int, moe: MoE, hidden: int, tp: int) -> float:
        return self._exact(self.moe, "MoE", num_tokens=tokens, hidden_size=hidden, inter_size=moe.expert_intermediate,
                           topk=moe.top_k, num_experts=moe.n_experts, moe_tp_size=tp, moe_ep_size=1,
                           moe_dtype="bfloat16")

    def allreduce_s(self, gpus: int, elements: int) -> float:
        if self.allreduce is None:
            raise LookupError("no all-reduce table")
        sub = self.allreduce[self.allreduce["num_gpus"] == gpus].sort_values("message_size")
        if sub.empty:
            raise LookupError(f"all-reduce over {gpus} GPUs not measured")
        x, y = np.log(sub["message_size"].to_numpy(float)), np.log(sub["seconds"].to_numpy(float))
        return float(np.exp(np.interp(np.log(elements), x, y)))


def composed_step(t: Tables, model, tp: int, b: int, length: int, decode: bool) -> float:
    """Measured seconds of one decode step (b sequences, `length` tokens read) or one prefill (b x length)."""
    layer = model.layers[0]
    mix, mlp, h = layer.mixer, layer.mlp, model.hidden
    if not all(l == layer for l in model.layers) or not isinstance(mix, Attention):
        raise LookupError("only uniform attention models are composed")
    if mix.window and length > mix.window:
        raise LookupError(f"sliding window {mix.window} is not among the tables' windows")
    m = b if decode else b * length
    kv = max(mix.n_kv_heads // tp, 1)
    per_layer = (t.gemm_s(m, (mix.n_heads + 2 * mix.n_kv_heads) * mix.head_dim // tp, h)
                 + t.attention_s(decode, b, length, mix.n_heads // tp, kv, mix.head_dim)
                 + t.gemm_s(m, h, mix.n_heads * mix.head_dim // tp))
    if isinstance(mlp, MoE):
        per_layer += t.moe_s(m, mlp, h, tp)
    elif isinstance(mlp, MLP):
        per_layer += t.gemm_s(m, 2 * mlp.intermediate // tp, h) + t.gemm_s(m, h, mlp.intermediate // tp)
    if tp > 1:
        per_layer += 2 * t.allreduce_s(tp, m * h)
    return model.n_layers * per_layer + t.gemm_s(b, model.vocab // tp, h)


def predicted_step(cost: CostModel, b: int, length: int, decode: bool) -> float:
    if decode:
        p = np.array(length - 1)
        ph = cost.phase(p, np.array(b), np.array(0), prefill=False)
        return float(cost.phase_time(ph, p, b, prefill=False))
    p = np.array(length)
    ph = cost.phase(p, np.array(b), np.array(0), prefill=True)
    return float(cost.phase_time(ph, p, b, prefill=True))


def check(profile_name: str, system: str, framework: str) -> list[dict]:
    prof = load_profile(profile_name)
    t = Tables(system, framework)
    hw = load_hardware(aic.HARDWARE[system])
    rows = []
    for name, tp in CASES:
        model = load_model(name)
        cost = CostModel(model, hw, Compose(()), kv_dtype=None, weight_dtype="bf16", tp=tp, pp=1, profile=prof)
        cost.elementwise = False
        for decode in (True, False):
            for b in (BATCHES if decode else (1,)):
                for length in CONTEXTS:
                    row = {"model": name, "tp": tp, "phase": "decode" if decode else "prefill", "batch": b,
                           "context": length}
                    try:
                        row["composed_s"] = composed_step(t, model, tp, b, length, decode)
                    except LookupError as e:
                        row["skipped"] = str(e)
                        rows.append(row)
                        continue
                    row["kvsim_s"] = predicted_step(cost, b, length, decode)
                    row["ratio"] = row["kvsim_s"] / row["composed_s"]
                    rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibrate.kernels.compose")
    ap.add_argument("--profile", default="h100-sxm-vllm")
    ap.add_argument("--system", default=None)
    ap.add_argument("--framework", default=None)
    a = ap.parse_args(argv)
    try:
        src = load_profile(a.profile).meta.get("source", {})
        rows = check(a.profile, a.system or src.get("system", "h100_sxm"), a.framework or src.get("framework", "vllm"))
    except KvsimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = [r for r in rows if "ratio" in r]
    for r in rows:
        tail = f"kvsim {r['kvsim_s'] * 1e3:9.3f} ms  composed {r['composed_s'] * 1e3:9.3f} ms  ratio {r['ratio']:.3f}" \
            if "ratio" in r else f"skipped: {r['skipped']}"
        print(f"{r['model']:16s} tp{r['tp']} {r['phase']:7s} b{r['batch']:<3d} ctx {r['context']:6d}  {tail}")
    err = np.abs(np.array([r["ratio"] for r in done]) - 1)
    print(f"{len(done)} cases: mean |kvsim / composed - 1| {err.mean():.1%}, max {err.max():.1%}, "
          f"within 10%: {(err <= 0.10).mean():.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
