"""Explorer responsiveness: how long a widget change takes to re-run the page with a 1,000-point sweep.

Each change uses a new value, so no cached result can answer it: the page recomputes every prediction and
rebuilds every chart. Timed through Streamlit's AppTest (the script run, which is the server-side part of
a re-render); prints the median and the spread.

    python benchmarks/bench_app.py [--points 1000] [--changes 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=9)
    a = ap.parse_args()
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.run()
    at.number_input(key="points").set_value(a.points).run()
    assert not at.exception, [e.value for e in at.exception]
    times = {"prompt length": [], "policy parameter": [], "batch": []}
    for i in range(a.changes):
        for label, (key, value) in (("prompt length", ("seq", 4096 + 97 * (i + 1))),
                                    ("policy parameter", ("p.h2o.budget", 600 + 13 * i)),
                                    ("batch", ("batch", 2 + i))):
            t = time.perf_counter()
            at.number_input(key=key).set_value(value).run()
            times[label].append(time.perf_counter() - t)
            assert not at.exception, [e.value for e in at.exception]
    rows = len(at.get("vega_lite_chart"))
    print(f"explorer re-run after a widget change, {a.points}-point sweeps, 5 policies, {rows} charts:")
    for label, ts in times.items():
        print(f"  {label:17s} median {statistics.median(ts) * 1e3:6.0f} ms  (min {min(ts) * 1e3:.0f}, "
              f"max {max(ts) * 1e3:.0f})   <- target < 300 ms")


if __name__ == "__main__":
    main()
