"""Per-operator view of one prediction (`kvsim predict --breakdown`), as LLM-Viewer shows it: for the prefill
and one decode step, each operation class's FLOP, bytes moved, arithmetic intensity, the resource that bounds
it and its roofline time on one device. The rows are the cost model's own terms (Phase.parts), so they sum to
the phase's FLOP, bytes and device time; fixed overheads, the interconnect and the host link are rows of
their own, so the time column sums to the phase time.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import KvsimError


def _f(x) -> float:
    return float(np.asarray(x, dtype=np.float64).ravel()[0])


def rows(pred) -> list[dict]:
    eng = pred._engine
    cost = eng.cost
    if eng.serving.engine.chunked:
        raise KvsimError("--breakdown covers whole-prompt prefill (--engine hf or --max-num-batched-tokens 0); "
                         "a chunked prefill is many passes")
    p, b, gen = (np.asarray(x, dtype=np.int64).ravel()[:1] for x in (eng.p, eng.b, eng.gen))
    phases = [("prefill", True, np.zeros_like(p))]
    if int(gen[0]) > 1:
        phases.append((f"decode step {int(gen[0]) // 2} of {int(gen[0]) - 1}", False, np.maximum(gen // 2 - 1, 0)))
    out = []
    for name, prefill, s in phases:
        ph = cost.phase(p, b, s, prefill)
        total = cost.phase_time(ph, p, b, prefill)
        for op, (flops, moved, c, m, t) in ph.parts.items():
            flops, moved, c, m, t = map(_f, (flops, moved, c, m, t))
            if flops == 0 and moved == 0 and t == 0:
                continue
            out.append({"phase": name, "op": op, "flops": flops, "bytes": moved,
                        "intensity": flops / moved if moved else None,
                        # executor terms priced per element (unfused scans, scores, state updates) have no roofline
                        "bound": "executor" if c == m == 0 else "compute" if c >= m else "memory", "time_s": t})
        device = _f(cost.phase_time(dataclasses.replace(ph, host_s=0.0), p, b, prefill))
        # the host link's share is what it adds beyond the device's time (offload may overlap the two)
        extra = {"interconnect": _f(ph.comm_s), "host link": _f(total) - device,
                 "fixed overheads": device - _f(ph.time_s) - _f(ph.comm_s)}
        for op, t in extra.items():
            if t > 0:
                out.append({"phase": name, "op": op, "flops": 0.0, "bytes": 0.0, "intensity": None, "bound": op,
                            "time_s": t})
        out.append({"phase": name, "op": "total", "flops": _f(ph.flops), "bytes": _f(ph.bytes),
                    "intensity": _f(ph.flops) / _f(ph.bytes) if _f(ph.bytes) else None, "bound": "",
                    "time_s": _f(total)})
    return out


def table(rs: list[dict]) -> str:
    from .units import fmt_bytes, fmt_count, fmt_seconds
    head = ("phase", "operation", "FLOP", "bytes moved", "FLOP/byte", "bound", "time")
    body = [(r["phase"], r["op"], fmt_count(r["flops"], "FLOP") if r["flops"] else "-",
             fmt_bytes(r["bytes"]) if r["bytes"] else "-",
             f"{r['intensity']:,.1f}" if r["intensity"] is not None else "-", r["bound"], fmt_seconds(r["time_s"]))
            for r in rs]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) if i < 2 or i == 5 else str(x).rjust(w) for i, (x, w) in
                       enumerate(zip(row, widths))) for row in (head, *body)]
    return "\n".join(lines)
