"""A quality CSV as a markdown table: per model and policy, measured KV bytes, perplexity and passkey
accuracy side by side.

    python -m measured.summary measured/results/cpu/quality.csv
"""

from __future__ import annotations

import sys

import pandas as pd


def table(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    ppl = ok[ok["metric"] == "perplexity"].set_index(["model", "policy"])
    keys = ok[ok["metric"] == "passkey"].groupby(["model", "policy"])
    out = pd.DataFrame({
        "KV MiB (perplexity run)": ppl["kv_cache_bytes"] / 2**20,
        "perplexity": ppl["value"],
        "passkey accuracy": keys["value"].mean(),
        "passkey prompts": keys["value"].size(),
    })
    order = ok.drop_duplicates(["model", "policy"]).set_index(["model", "policy"]).index
    return out.reindex(order)


def markdown(df: pd.DataFrame) -> str:
    t = table(df).reset_index()
    lines = ["| model | policy | KV MiB | perplexity | passkey |", "|---|---|---:|---:|---:|"]
    for r in t.itertuples(index=False):
        lines.append(f"| {r[0]} | `{r[1]}` | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.2f} ({int(r[5])}) |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m measured.summary QUALITY.csv", file=sys.stderr)
        return 2
    try:
        df = pd.read_csv(argv[0])
    except (OSError, pd.errors.ParserError) as e:
        print(f"error: cannot read {argv[0]}: {e}", file=sys.stderr)
        return 2
    missing = {"model", "policy", "metric", "value", "kv_cache_bytes", "status"} - set(df.columns)
    if missing:
        print(f"error: {argv[0]} is not a quality CSV (missing {', '.join(sorted(missing))})", file=sys.stderr)
        return 2
    print(markdown(df))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
