"""How far a profile's predictions fall from measured rows it was not fitted on, per model:
`python -m calibrate.evaluate DATA PROFILE` (DATA: a measurement CSV or folder, as `kvsim calibrate --data`
takes; PROFILE: a shipped profile's name or a JSON path). Prints TPOT and TTFT MAPE and the median signed
error (negative: predicted too fast) per model, then over every row."""

from __future__ import annotations

import sys

import numpy as np

from kvsim import load_hardware, load_profile
from kvsim.cliargs import Parser
from kvsim.errors import KvsimError

from .data import load
from .fit import Problem


def by_model(df, pred_ttft: np.ndarray, pred_tpot: np.ndarray):
    """Per model (and over all rows): rows, TPOT / TTFT MAPE and median signed error."""
    e = df.assign(tpot=pred_tpot / df["tpot_s"].to_numpy(float) - 1, ttft=pred_ttft / df["ttft_s"].to_numpy(float) - 1)
    agg = dict(rows=("tpot", "size"), tpot_mape=("tpot", lambda x: float(np.abs(x).mean())),
               tpot_median=("tpot", "median"), ttft_mape=("ttft", lambda x: float(np.abs(x).mean())),
               ttft_median=("ttft", "median"))
    table = e.groupby("model").agg(**agg)
    table.loc["all rows"] = e.assign(model="all rows").groupby("model").agg(**agg).iloc[0]
    return table


def main(argv=None) -> int:
    ap = Parser(prog="python -m calibrate.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("data", help="measurement CSV or folder")
    ap.add_argument("profile", help="profile name or JSON path")
    ap.add_argument("--hardware", default="cpu", help="hardware preset the rows ran on")
    try:  # a bad argument, file or profile is one line and exit 2, as in the kvsim CLI
        a = ap.parse_args(argv)
        df, _ = load([a.data])
        prof = load_profile(a.profile)
        problem = Problem(df, load_hardware(a.hardware), prof)
        ttft, tpot = problem.predict(prof)
    except KvsimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = by_model(df.reset_index(drop=True), ttft, tpot)
    pct = lambda v: f"{v:+.1%}"  # noqa: E731
    print(table.to_string(formatters={"rows": lambda v: f"{int(v)}", "tpot_mape": "{:.1%}".format,
                                      "ttft_mape": "{:.1%}".format, "tpot_median": pct, "ttft_median": pct}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
