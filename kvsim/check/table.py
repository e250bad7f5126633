"""Reading a claim table: a bounded CSV whose columns are workload fields, claims (with unit suffixes),
a baseline label, quality figures and anything else (kept and echoed).

A claim column is a claim name, optionally followed by a unit suffix (`ttft_ms`, `kv_cache_bytes_MiB`,
`kv_cache_GB`, `memory_reduction_pct`). Values are converted to base units here and nowhere else; byte
units that people mix up (MB and MiB, GB and GiB) keep the other reading too, so the judge can try both.
A table that cannot be read (not UTF-8 text, ragged rows, a duplicate or unknown-unit column, a claim cell
that is not a number) is refused with one KvsimError line.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ..errors import KvsimError
from ..units import GB, KB, MB, TB, GiB, KiB, MiB, TiB

MAX_BYTES = 4 * 2**20
MAX_ROWS = 10_000
MAX_FIELD = 4096

WORKLOAD = ("label", "model", "hardware", "policy", "seq", "gen", "batch", "tp", "kv_dtype", "dtype", "engine",
            "baseline")
INTEGER_FIELDS = ("seq", "gen", "batch", "tp")

# claim -> (stem used with a unit suffix, kind of quantity); the claim's own name is in base units
CLAIMS = {
    "kv_cache_bytes": ("kv_cache", "bytes"),
    "peak_memory_bytes": ("peak_memory", "bytes"),
    "weights_bytes": ("weights", "bytes"),
    "params": ("params", "count"),
    "compression_ratio": ("compression_ratio", "ratio"),
    "memory_reduction": ("memory_reduction", "fraction"),
    "memory_ratio": ("memory_ratio", "ratio"),
    "ttft_s": ("ttft", "seconds"),
    "tpot_s": ("tpot", "seconds"),
    "e2e_s": ("e2e", "seconds"),
    "decode_tokens_per_s": ("decode_tokens_per_s", "rate"),
    "throughput_tokens_per_s": ("throughput_tokens_per_s", "rate"),
    "speedup": ("speedup", "ratio"),
}
_BYTE_UNITS = {"B": 1, "KB": KB, "MB": MB, "GB": GB, "TB": TB, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}
_TWIN = {"KB": "KiB", "MB": "MiB", "GB": "GiB", "TB": "TiB", "KiB": "KB", "MiB": "MB", "GiB": "GB", "TiB": "TB"}
UNITS = {
    "bytes": _BYTE_UNITS,
    "seconds": {"s": 1.0, "ms": 1e-3, "us": 1e-6},
    "fraction": {"pct": 0.01},
    "count": {"M": 1e6, "B": 1e9},
}
# Quality figures cannot be judged by physics; a column whose name starts with one of these is one.
QUALITY = ("accuracy", "acc", "perplexity", "ppl", "rouge", "bleu", "f1", "exact_match", "em", "score",
           "longbench", "passkey", "mmlu", "gsm8k", "quality")


@dataclass(frozen=True)
class Claim:
    name: str  # canonical claim name, base units
    column: str  # the column as written
    raw: str  # the cell as written
    readings: tuple[tuple[str, float], ...]  # (how the unit was read, value in base units); the first as written
    slack: float  # half a unit in the last printed digit, in base units: the rounding the figure carries


@dataclass
class Row:
    number: int  # 1-based data row (the header is row 0)
    label: str
    fields: dict[str, str]  # workload fields as written (empty string: not given)
    claims: list[Claim]
    quality: dict[str, str]
    extra: dict[str, str] = field(default_factory=dict)  # every other column, echoed


@dataclass
class Table:
    rows: list[Row]
    base_dir: Path  # where a config.json path in the model column is looked up
    columns: list[str]


def _decimals_slack(raw: str) -> float:
    """Half a unit in the last digit written: '12.5' -> 0.05, '800' -> 0.5, '1.2e3' -> 50."""
    try:
        d = Decimal(raw)
    except InvalidOperation:
        return 0.0
    if d == 0:  # a written zero means zero
        return 0.0
    return float(Decimal(5).scaleb(d.as_tuple().exponent - 1))


def _column(col: str) -> tuple[str, str, str] | None:
    """(claim, unit, stem) for a claim column, None for any other; KvsimError for a claim with an unknown
    unit suffix."""
    if col in CLAIMS:
        return col, "", col
    for claim, (stem, kind) in CLAIMS.items():
        for prefix in sorted({stem + "_", claim + "_"}, key=len, reverse=True):
            if col.startswith(prefix):
                unit = col[len(prefix):]
                units = UNITS.get(kind, {})
                if unit not in units:
                    valid = ", ".join(units) or "none (base units only)"
                    raise KvsimError(f"column {col!r}: unknown unit {unit!r} for {claim} (units: {valid})")
                return claim, unit, stem
    return None


def _number(raw: str, where: str) -> float:
    text = raw.strip().replace("_", "")
    if text[-1:] in ("x", "X", "\u00d7"):  # "8x" for a ratio
        text = text[:-1]
    try:
        x = float(text)
    except ValueError:
        raise KvsimError(f"{where}: cannot read {raw!r} as a number") from None
    if not math.isfinite(x):
        raise KvsimError(f"{where}: {raw!r} is not a finite number")
    return x


def _claim(claim: str, unit: str, col: str, raw: str, where: str) -> Claim:
    x = _number(raw, where)
    kind = CLAIMS[claim][1]
    factor = UNITS.get(kind, {}).get(unit, 1.0) if unit else 1.0
    readings = [(unit or "base units", x * factor)]
    if kind == "bytes" and unit in _TWIN:
        readings.append((_TWIN[unit], x * _BYTE_UNITS[_TWIN[unit]]))
    return Claim(claim, col, raw.strip(), tuple(readings), _decimals_slack(raw.strip().rstrip("xX\u00d7")) * factor)


def _is_quality(col: str) -> bool:
    low = col.lower()
    return any(low == q or low.startswith(q + "_") for q in QUALITY)


def parse(text: str, base_dir: Path | str = ".", name: str = "table") -> Table:
    """Parse a claim table from its text."""
    if "\x00" in text:
        raise KvsimError(f"{name} is not a CSV file (it holds binary data)")
    text = text.lstrip("\ufeff")
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if not lines:
        raise KvsimError(f"{name} is empty: a claim table needs a header row and at least one claim row")
    try:
        records = list(csv.reader(io.StringIO("\n".join(lines)), strict=True))
    except csv.Error as e:
        raise KvsimError(f"{name} is not a readable CSV file: {e}") from None
    header = [h.strip() for h in records[0]]
    if "label" not in header or "model" not in header:
        raise KvsimError(f"{name} is not a claim table: its header must name at least 'label' and 'model' columns "
                         f"(got {', '.join(header[:8])[:200]})")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or "" in header:
        raise KvsimError(f"{name}: {'duplicate columns ' + ', '.join(dupes) if dupes else 'an empty column name'}")
    kinds = {}
    for col in header:
        if col in WORKLOAD:
            kinds[col] = ("workload",)
        elif (c := _column(col)) is not None:
            kinds[col] = ("claim", *c)
        elif _is_quality(col):
            kinds[col] = ("quality",)
        else:
            kinds[col] = ("extra",)
    if len(records) - 1 > MAX_ROWS:
        raise KvsimError(f"{name} has more than {MAX_ROWS:,} rows")
    rows, labels = [], set()
    for i, rec in enumerate(records[1:], start=1):
        if len(rec) != len(header):
            raise KvsimError(f"{name} row {i}: {len(rec)} fields where the header has {len(header)}")
        if any(len(cell) > MAX_FIELD for cell in rec):
            raise KvsimError(f"{name} row {i}: a field longer than {MAX_FIELD} characters")
        cells = dict(zip(header, (c.strip() for c in rec)))
        label = cells["label"]
        if not label:
            raise KvsimError(f"{name} row {i}: empty label")
        if label in labels:
            raise KvsimError(f"{name} row {i}: label {label!r} is used twice")
        labels.add(label)
        fields = {k: cells.get(k, "") for k in WORKLOAD}
        for k in INTEGER_FIELDS:
            if fields[k]:
                v = _number(fields[k], f"{name} row {i} ({label}), column {k}")
                if not v.is_integer() or v < 1:
                    raise KvsimError(f"{name} row {i} ({label}), column {k}: {fields[k]!r} is not a whole number >= 1")
        claims, quality, extra = [], {}, {}
        for col, k in kinds.items():
            cell = cells[col]
            if k[0] == "claim" and cell:
                twin = next((c.column for c in claims if c.name == k[1]), None)
                if twin:  # one claim per row; several columns may give it in different units
                    raise KvsimError(f"{name} row {i} ({label}): columns {twin!r} and {col!r} both give {k[1]}")
                claims.append(_claim(k[1], k[2], col, cell, f"{name} row {i} ({label}), column {col}"))
            elif k[0] == "quality" and cell:
                quality[col] = cell
            elif k[0] == "extra":
                extra[col] = cell
        rows.append(Row(i, label, fields, claims, quality, extra))
    if not rows:
        raise KvsimError(f"{name} has a header but no claim rows")
    for r in rows:
        if r.fields["baseline"] and r.fields["baseline"] not in labels:
            raise KvsimError(f"{name} row {r.number} ({r.label}): baseline {r.fields['baseline']!r} is not a label "
                             "in the table")
    return Table(rows, Path(base_dir), header)


def read(path: str) -> Table:
    """Read a claim table from a file, or from stdin when `path` is '-'; bounded in size, UTF-8."""
    import sys

    if path == "-":
        raw = sys.stdin.buffer.read(MAX_BYTES + 1)
        name, base = "stdin", Path(".")
    else:
        p = Path(path)
        if not p.exists():
            raise KvsimError(f"claim table not found: {p}")
        if not p.is_file():
            raise KvsimError(f"claim table {p} is not a regular file")
        try:
            with p.open("rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise KvsimError(f"cannot read claim table {p}: {e.strerror or e}") from None
        name, base = str(p), p.parent
    if len(raw) > MAX_BYTES:
        raise KvsimError(f"{name} is larger than {MAX_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KvsimError(f"{name} is not a CSV file (not UTF-8 text)") from None
    return parse(text, base, name)
