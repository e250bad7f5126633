"""Read NVIDIA's measured kernel tables from the installed `aiconfigurator-core` package (Apache-2.0).

The tables live in the package, never in this repository:
    aiconfigurator_core/systems/data/<system>/<family>/<framework>/<version>/<table>.parquet
Each op was timed alone: a few warm-ups, then captured in a CUDA graph, replayed and timed with CUDA events.
Latencies are in milliseconds there; rows come out in seconds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from kvsim.errors import KvsimError

PACKAGE = "aiconfigurator-core"
EXTRA = "gpu-data"

# family -> (folder, table file) for the tables kvsim fits
TABLES = {
    "gemm": ("gemm", "gemm_perf.parquet"),
    "decode_attention": ("attention", "generation_attention_perf.parquet"),
    "prefill_attention": ("attention", "context_attention_perf.parquet"),
    "moe": ("moe", "moe_perf.parquet"),
    "allreduce": ("comm", "custom_allreduce_perf.parquet"),
}
FRAMEWORKS = ("vllm", "trtllm", "sglang")
# aiconfigurator's system name -> kvsim hardware preset
HARDWARE = {"h100_sxm": "h100-sxm", "h200_sxm": "h200", "a100_sxm": "a100-80gb", "h100_pcie": "h100-pcie",
            "l40s": "l40s", "b200_sxm": "b200", "gb200": "gb200"}

# L2 capacity (NVIDIA H100 and A100 architecture whitepapers: 50 MB on H100 SXM5 and H200, 40 MB on A100),
# for the table rows whose working set stays in L2 between replays
HOPPER = ("h100_sxm", "h200_sxm", "h100_pcie")  # SM90 systems
AMPERE = ("a100_sxm",)  # SM80 systems

L2_BYTES = {"h100_sxm": 50 * 2**20, "h200_sxm": 50 * 2**20, "a100_sxm": 40 * 2**20, "h100_pcie": 50 * 2**20}


def data_root() -> Path:
    """The package's data folder; refuses with one line naming the extra when it is not installed."""
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        raise KvsimError(f"the kernel database needs {PACKAGE}: pip install 'kvsim[{EXTRA}]'")
    root = Path(list(spec.submodule_search_locations)[0]) / "systems" / "data"
    if not root.is_dir():
        raise KvsimError(f"{PACKAGE} is installed but has no systems/data folder")
    return root


def package_version() -> str:
    return importlib.metadata.version(PACKAGE)


def _version_key(v: str):
    parts = []
    for piece in v.replace("rc", ".-1.").replace("post", ".").replace("dev", ".-2.").split("."):
        try:
            parts.append(int(piece))
        except ValueError:
            parts.append(-3)
    return parts


def versions(system: str, family: str, framework: str) -> list[str]:
    folder, table = TABLES[family]
    base = data_root() / system / folder / framework
    if not base.is_dir():
        return []
    return sorted((d.name for d in base.iterdir() if (d / table).is_file()), key=_version_key)


@dataclass(frozen=True)
class Table:
    family: str
    system: str
    framework: str
    version: str
    path: Path
    device: str
    rows: object  # pandas DataFrame, tidy: shape columns, dtype columns, seconds


def systems() -> list[str]:
    return sorted(d.name for d in data_root().iterdir() if d.is_dir())


def load(system: str, family: str, framework: str, version: str | None = None) -> Table | None:
    """The family's table for one system and framework: the newest version unless one is named.
    None when the database has no such table."""
    import pandas as pd

    if family not in TABLES:
        raise KvsimError(f"unknown op family {family!r} (known: {', '.join(TABLES)})")
    root = data_root()
    if not (root / system).is_dir():
        raise KvsimError(f"{PACKAGE} has no system {system!r} (has: {', '.join(systems())})")
    found = versions(system, family, framework)
    if version is not None:
        if version not in found:
            if not found:
                return None
            raise KvsimError(f"{system}/{family}/{framework} has no version {version!r} (has: {', '.join(found)})")
        chosen = version
    elif found:
        chosen = found[-1]
    else:
        return None
    folder, table = TABLES[family]
    path = root / system / folder / framework / chosen / table
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # a damaged wheel: say which file
        raise KvsimError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    df = df[df["latency"] > 0].copy()
    if family.endswith("attention") and "window_size" not in df:  # older tables: full attention only
        df["window_size"] = 0
    df["seconds"] = df["latency"].astype(float) * 1e-3
    device = str(df["device"].iloc[0]) if "device" in df and len(df) else system
    return Table(family, system, framework, chosen, path, device, df.reset_index(drop=True))
