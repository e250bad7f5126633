"""Markdown report of the shipped kernel-database profiles: held-out error per op family and hold-out
scheme beside the datasheet roofline's, transfer to another device or framework, fitted against measured
(one log-log plot per profile, beside the report) and where the model is weakest (the groups of rows it
misses most, computed from the rows). `python -m calibrate.kernels.report` rewrites
calibrate/profiles/kernels.md and calibrate/profiles/kernels-<profile>.png."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kvsim import load_hardware
from kvsim.atomic import replacing
from kvsim.profile import Profile, load_profile, shipped_profiles

from . import aiconfigurator as aic
from . import families, fit

FOLDER = Path(__file__).resolve().parents[1] / "profiles"
OUT = FOLDER / "kernels.md"
FAMILIES = ("gemm", "decode_attention", "prefill_attention", "moe", "allreduce")
PLOT_ROWS = 1500  # points per family in a plot (a seeded sample; errors use every row)
# The columns a family's rows are grouped by to find where its model is weakest.
WEAK_BY = {"gemm": ("gemm_dtype", "m_range"), "decode_attention": ("kv_cache_dtype", "head_dim"),
           "prefill_attention": ("kv_cache_dtype", "head_dim"), "moe": ("tokens_range",),
           "allreduce": ("num_gpus",)}


def _rows(system: str, framework: str):
    tables = {f: aic.load(system, f, framework) for f in aic.TABLES}
    return families.for_system(tables, aic.L2_BYTES.get(system, 0))


def predictions(prof: Profile, system: str, framework: str) -> dict:
    """{family: (rows with `measured` and `predicted` seconds)} on a system's tables (that device's datasheet)."""
    hw = load_hardware(aic.HARDWARE[system])
    out = {}
    for fam in _rows(system, framework):
        d = fam.rows.copy()
        d["measured"] = d["seconds"].to_numpy(float)
        d["predicted"] = fam.predict(prof, hw, fam.rows)
        d["ape"] = fit.ape(d["predicted"], d["measured"])
        out[fam.name] = d
    return out


def transfer(prof: Profile, system: str, framework: str) -> dict:
    """MAPE of a profile's parameters on another system's or framework's rows."""
    return {name: float(d["ape"].mean()) for name, d in predictions(prof, system, framework).items()}


def weakest(name: str, d, top: int = 2) -> list[str]:
    """The groups of rows (by WEAK_BY) the fitted model misses most, with their share of the rows."""
    d = d.copy()
    if "m" in d:
        d["m_range"] = np.where(d["m"] <= 64, "m <= 64", np.where(d["m"] <= 1024, "m 65-1024", "m > 1024"))
    if "num_tokens" in d:
        d["tokens_range"] = np.where(d["num_tokens"] < 1024, "tokens < 1024", "tokens >= 1024")
    keys = [k for k in WEAK_BY[name] if k in d]
    g = d.groupby(keys)["ape"].agg(["mean", "size"]).sort_values("mean", ascending=False)
    lines = []
    for key, row in g.head(top).iterrows():
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in zip(keys, key))
        lines.append(f"{label}: MAPE {row['mean']:.1%} over {int(row['size']):,} rows ({row['size'] / len(d):.0%})")
    return lines


def plot(name: str, preds: dict, path: Path) -> None:
    """Fitted against measured, log-log, one panel per op family, the identity line and +-20% beside it."""
    import altair as alt
    import pandas as pd
    import vl_convert as vlc

    colour = {"gemm": "gemm_dtype", "decode_attention": "kv_cache_dtype", "prefill_attention": "kv_cache_dtype",
              "moe": "moe_dtype", "allreduce": "num_gpus"}
    panels = []
    for fam in FAMILIES:
        if fam not in preds:
            continue
        d = preds[fam]
        if len(d) > PLOT_ROWS:
            d = d.sample(PLOT_ROWS, random_state=0)
        df = pd.DataFrame({"measured (us)": d["measured"] * 1e6, "fitted (us)": d["predicted"] * 1e6,
                           "group": d[colour[fam]].astype(str)})
        lo, hi = float(df.min(numeric_only=True).min()), float(df.max(numeric_only=True).max())
        line = pd.DataFrame({"x": [lo, hi]})
        scale = alt.Scale(type="log", domain=[lo, hi])
        x = dict(scale=scale, title="measured (us)")
        y = dict(scale=scale, title="fitted (us)")
        base = alt.Chart(df).mark_circle(size=9, opacity=0.45).encode(
            x=alt.X("measured (us):Q", **x), y=alt.Y("fitted (us):Q", **y),
            color=alt.Color("group:N", title=colour[fam].replace("_", " ")))
        guides = [alt.Chart(line.assign(y=line["x"] * f)).mark_line(color="black" if f == 1 else "gray",
                                                                      strokeDash=[] if f == 1 else [4, 4], clip=True)
                  .encode(x=alt.X("x:Q", **x), y=alt.Y("y:Q", **y)) for f in (1.0, 0.8, 1.2)]
        mape = float(preds[fam]["ape"].mean())
        panels.append(alt.layer(base, *guides).properties(
            width=260, height=260, title=f"{fam.replace('_', ' ')}: MAPE {mape:.1%} (fitted rows)")
            .resolve_scale(color="independent"))
    rows = [alt.hconcat(*panels[i:i + 3]).resolve_scale(color="independent") for i in range(0, len(panels), 3)]
    chart = alt.vconcat(*rows).resolve_scale(color="independent").properties(
        title=f"{name}: fitted against measured (dashed: +-20%)")
    png = vlc.vegalite_to_png(chart.to_json(), scale=1.0)
    with replacing(path, suffix=".png", what="plot") as tmp:
        tmp.write_bytes(png)


def render(transfers: list[tuple[str, str, str]], plots: bool = True) -> str:
    lines = ["# GPU profiles from NVIDIA's measured kernel tables", "",
             "Generated by `python -m calibrate.kernels.report` from the profiles that "
             "`kvsim calibrate --kernels aiconfigurator` writes. Source: NVIDIA's `aiconfigurator-core` package "
             "(Apache-2.0), read in place. Every op was timed alone in a CUDA graph, so a step composed from "
             "these profiles is a lower bound on a real engine's step (no norms, rotary embeddings, sampling, "
             "scheduler or CPU time).", "",
             "The profiles are kernel-level (`tiled`): kvsim/kernels.py prices every weight matmul and attention "
             "kernel, in `kvsim predict` as in these fits, with tiles and waves over the device's SMs, split-K, "
             "split-KV decoding and the other terms listed in kvsim/profile.py.", ""]
    docs = {n: load_profile(p) for n, p in shipped_profiles().items()}
    docs = {n: p for n, p in docs.items() if p.meta.get("kind") == "kernel-database"}
    weak: dict = {}
    for name, prof in docs.items():
        m = prof.meta
        src = m["source"]
        preds = predictions(prof, src["system"], src["framework"])
        lines += [f"## {name}", "", f"{m['device']}; {src['framework']} "
                  + ", ".join(f"{f} {v}" for f, v in src["framework_versions"].items())
                  + f"; {src['package']} {src['package_version']}; rows used: "
                  + ", ".join(f"{f} {n:,}" for f, n in src["rows_used"].items()) + ".", "",
                  "| op family | held out by | rows | MAPE | median | p90 | datasheet MAPE |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for fam, splits in m["heldout"].items():
            for split, r in splits.items():
                lines.append(f"| {fam} | {split} | {r['rows']:,} | {r['mape']:.1%} | {r['median_ape']:.1%} | "
                             f"{r['p90_ape']:.1%} | {r['datasheet_mape']:.1%} |")
        fixed = src.get("not_fitted", {})
        params = {k: v for k, v in prof.to_dict().items() if k not in ("meta", "name", "device", "tiled")
                  and k not in fixed and v not in (0, 0.0, {}, 1.0, "")}
        lines += ["", "Fitted: " + ", ".join(f"`{k}` = {_fmt(v)}" for k, v in params.items()) + "."]
        if fixed:
            lines.append("Not fitted (known from the framework's source): "
                         + ", ".join(f"`{k}` = {_fmt(v['value'])} ({v['source']})" for k, v in fixed.items()) + ".")
        lines += ["Table-only (describes the measurement, not used by `kvsim predict`): "
                  + ", ".join(f"`{k}` = {v:.3g}" for k, v in m.get("table_only", {}).items()) + ".", ""]
        if plots:
            png = FOLDER / f"kernels-{name}.png"
            plot(name, preds, png)
            lines += [f"![{name}: fitted against measured](kernels-{name}.png)", ""]
        weak[name] = {fam: weakest(fam, d) for fam, d in preds.items()}
    if transfers:
        lines += ["## One device or framework predicted from another", "",
                  "| profile | applied to | " + " | ".join(f.replace("_", " ") for f in FAMILIES) + " |",
                  "|---|---|" + "---:|" * len(FAMILIES)]
        for name, system, framework in transfers:
            if name not in docs:
                continue
            r = transfer(docs[name], system, framework)
            lines.append(f"| {name} | {system} {framework} | "
                         + " | ".join("" if r.get(k) is None else f"{r[k]:.1%}" for k in FAMILIES) + " |")
        lines.append("")
    lines += ["## Where the model is weakest", "", WEAKEST, "",
              "The groups of fitted rows each profile misses most (in-sample error of the shipped profile):", ""]
    for name, fams in weak.items():
        lines.append(f"- **{name}**: " + "; ".join(f"{fam.replace('_', ' ')}: {', '.join(g)}"
                                                    for fam, g in fams.items() if g) + ".")
    lines.append("")
    return "\n".join(lines)


def _fmt(v):
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {x:.3g}" for k, x in v.items()) + "}"
    return f"{v:.3g}"


WEAKEST = """\
- Decode steps of one or a few sequences at short contexts (b = 1-8, 1-4K tokens): the model counts one full
  wave of per-(sequence, KV head) work on top of the kernel floor and predicts them about 10-15% slow on H100
  vLLM. At equal (sequence, KV head) units more sequences cost more than more KV heads (512 x 1 KV head 33 us,
  64 x 8 KV heads 24 us) while a step holds at most 992 sequences: FlashAttention-3's varlen scheduler sorts
  them and sizes their splits in one thread block up to there and does neither beyond
  (hopper/flash_prepare_scheduler.cu), so `decode_seq_overhead_s` (about 17 ns a sequence on H100 and H200) stops
  at 992 sequences, a cap taken from the source. Beyond that the per-unit cost still varies with the step's
  size (about 33 ns a unit from 128 to 1,024 units, 26 ns beyond).
- fp8 KV caches: FlashAttention-3's fp8 decode units dequantise in their loop. A step of a few sequences reads
  its bytes slower than a bf16 one (`kv_dtype_unit_rate`); a step of many is bound by the dequantisation
  rate, which depends on the head dim's kernel (`kv_dtype_head_efficiency`), and its fixed work per unit adds
  to that stream instead of hiding under it (`kv_dtype_overlap`). The bound shows fully only at long contexts,
  so fitted from contexts below 8K fp8 steps at 64-128K tokens are predicted slow.
- Sliding windows: kernels read whole key tiles at a window's edge, and an fp8 cache's kernels have longer
  tiles than a 16-bit one's (FlashAttention-3's tile_size_fwd_sm90: 160-224 keys at head dim 128 against
  128), so the edge is fitted per head dim and KV dtype (`window_edge_head_tokens`, "fp8@128" entries). The
  tables' windows end on power-of-two contexts, aligned with 16-bit tiles, so their fitted edges are smaller than
  what an arbitrary position reads; a windowed step of a few sequences still costs about 3 us more than a full
  one over as many keys (head dim 64), which the model does not describe.
- GEMMs: a shape runs whichever kernel the library's heuristics pick, and for about a quarter of the shapes
  that is a slower one (one row through a bf16 weight on H100: most stream it at 2.9-3.1 TB/s, the rest at
  2.4-2.6), with no pattern in n or k that carries across row counts; the GEMM fit takes a robust loss, so it
  prices the usual kernel and misses the others by 10-20%. Large-n, small-k GEMMs at many rows run below the
  fitted efficiency (H200, 4096 x 37,888 x 3,584: 650 TFLOP/s against about 800 elsewhere): Qwen2.5-7B's
  4K-token prefill composes 13% slower than predicted.
- Per-tensor fp8 GEMMs in vLLM and SGLang (CUTLASS scaled matmuls): a row count one past a multiple of 16
  (129, 257, 1025, ...) runs 20-80% slower than its neighbours at large k, a kernel-dispatch effect no tile
  model describes; and their per-row activation quantisation (`quant_row_overhead_s`) is fitted, not derived.
- Decode attention beyond the contexts it was fitted on: the split-KV cap binds only at long contexts, so it is
  taken from the framework's source (vLLM: 32 in CUDA graphs; SGLang: FlashAttention-3's own 128; A100 vLLM:
  FlashAttention-2's heuristic; TensorRT-LLM: XQA's and MMHA's own rules).
- Fused MoE blocks: vLLM's Triton kernels run the configuration tuned for their (experts, width, device) where
  vLLM ships one, and switch configurations with the token count (Mixtral's shape takes 1.07 ms at 256 tokens
  and 1.84 ms at 320 on H100, the weights read twice). One efficiency with a tile cost of its own
  (`moe_tile_fixed_k`: fine-grained experts' short k loops reach less of the peak) follows the shapes to 8% on
  unseen ones, but not a shape with a tuned configuration: on H200 Mixtral's experts reach 665 TFLOP/s against
  575 for the similar 6144 x 16384 one, so Mixtral's prefills compose 14-20% faster than predicted. MoE blocks
  with 1,024 tokens or more fitted from fewer are the worst hold-out of all (below that the blocks are
  weight-bound and their compute efficiency is not seen). Two table shapes run faster than their weights can
  stream and are left out (the selection above).
- Rows whose KV fits in L2: the tables replay one op without flushing L2, so these read faster than HBM allows
  and pay a lower floor (H100 vLLM: a step's time jumps by about 8 us where its KV outgrows the 50 MB L2). A
  fitted L2 speed-up and floor (table-only) describe them; a real step, whose weights flush L2 between layers,
  does not see them, so `kvsim predict` never uses them, and a composed decode step at 1K tokens of one
  sequence (whose measured attention rows are L2-resident) is predicted 3-4% slower for it.
- Large all-reduce messages fitted from small ones: one bandwidth efficiency and a floor cannot follow the
  switch from one-shot to two-shot all-reduce algorithms at large sizes.
- TensorRT-LLM's decode runs three kernels: MMHA for multi-head steps and for grouped-query steps with too few
  thread blocks (kv heads x batch x max(1, history / 128) x 4 below the SMs), XQA's generic kernel for the rest
  over a 16-bit cache, and XQA's Hopper kernel over an fp8 cache (every grouped-query fp8 row in the table). The
  choice and both split rules come from the source; each kernel's fixed costs are fitted. Still missed: XQA
  streams KV at a rate of its own per head dim (one sequence over 8 KV heads at 64K tokens: 2.0 TB/s at head
  dim 64, 2.4 at 128 and 256), which the fit sees only at long contexts; the fp8 kernel's fixed cost grows with
  the query heads per KV head (11 ns a unit at 4, 45 at 32) beyond what the attention ramp charges; and the
  small-step timings scatter by 10-15% between neighbouring rows.
- Prefill attention's ramp: one ramp by tokens per sequence, a softmax cost per score (`attn_softmax_dims`) and
  units per (sequence, KV head) or per query head (`prefill_group_exponent`: TensorRT-LLM's context FMHA runs
  every query head on its own, 1.00; FlashAttention-3 packs them, 0.01-0.05) still leave the ramp's shape off:
  on H100 TensorRT-LLM prompts of 64-128 tokens run 7-11% faster than predicted and 16K-token ones 9% faster
  (contexts of 8K and more fitted from shorter ones: 17%, vLLM 18%), and its head-dim-128 kernel pays less per
  query head than the 64- and 256-wide ones, so its 16-bit prompts of up to 512 tokens run 20-30% faster than
  predicted (an unseen head dim is the worst hold-out left there, 17.6%). On A100,
  FlashAttention-2 packs a KV head's query heads for one-token queries only (`seqlenq_ngroups_swapped`), which
  no single exponent follows (fitted, 0.57 took batches of 64 and more from 19.4% to 23.9%), so its units stay
  per KV head.
"""


def main() -> int:
    pairs = [("h100-sxm-vllm", "h200_sxm", "vllm"), ("h200-vllm", "h100_sxm", "vllm"),
             ("h100-sxm-vllm", "h100_sxm", "trtllm"), ("h100-sxm-vllm", "h100_sxm", "sglang")]
    text = render(pairs)
    with replacing(OUT) as tmp:
        tmp.write_text(text)
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
