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
    def cell(x, fmt):  # a policy run with --skip-perplexity or --skip-passkey has no figure there, not NaN
        return "-" if x != x else format(x, fmt)
    for r in t.itertuples(index=False):
        keys = "-" if r[5] != r[5] else f"{r[4]:.2f} ({int(r[5])})"
        lines.append(f"| {r[0]} | `{r[1]}` | {cell(r[2], '.1f')} | {cell(r[3], '.3f')} | {keys} |")
    return "\n".join(lines)


def quality_table(path, model: str, policies: list[str]) -> str:
    """The summary `kvsim quality` prints at its end: the rows of `model` and `policies` in `path`."""
    df = pd.read_csv(path, dtype={"policy": str, "model": str})
    return markdown(df[(df["model"] == model) & df["policy"].isin(policies)])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m measured.summary QUALITY.csv", file=sys.stderr)
        return 2
    from pathlib import Path
    if not Path(argv[0]).is_file():  # a device (/dev/zero) would be read forever
        print(f"error: {argv[0]} is not a regular file", file=sys.stderr)
        return 2
    try:
        df = pd.read_csv(argv[0])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        print(f"error: cannot read {argv[0]}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    missing = {"model", "policy", "metric", "value", "kv_cache_bytes", "status"} - set(df.columns)
    if missing:
        print(f"error: {argv[0]} is not a quality CSV (missing {', '.join(sorted(missing))})", file=sys.stderr)
        return 2
    try:
        print(markdown(df))
        sys.stdout.flush()
    except BrokenPipeError:  # `python -m measured.summary ... | head`: the reader has what it wanted
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
