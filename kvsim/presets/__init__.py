"""Presets are data (TOML files beside this module), read lazily on first use; unknown keys are rejected.

A model preset is the model's own transformers config (under [config]) plus where it came from, so it goes
through the same adapter as a user's config.json. A hardware preset holds datasheet numbers in named units. An
engine preset (engines/NAME-VERSION.toml) holds a serving engine's defaults, each with its source under [sources].
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

from ..errors import KvsimError
from ..hardware import HardwareSpec
from ..model import ModelSpec
from ..units import GB, GiB

_DIR = Path(__file__).parent
_MODEL_KEYS = {"display", "source", "published_params", "params_tolerance", "config"}
# Names that once meant one checkpoint and now could mean several: refused, never guessed.
_RETIRED_MODELS = {"mistral-7b": "mistral-7b-v0.1 (4,096-token sliding window) or mistral-7b-v0.3 (full attention)"}
_ENGINE_KNOBS = {"memory_fraction", "fraction_of", "batching", "block_size", "max_num_batched_tokens"}
# 0 / false unless the preset has a source for them: a cap on requests per step; admission on the full input;
# blocks held back from requests
_ENGINE_OPTIONAL = {"max_num_seqs", "admit_full_input", "reserved_blocks"}
_ENGINE_KEYS = {"engine", "version", "display", "source", "notes", "sources"} | _ENGINE_KNOBS | _ENGINE_OPTIONAL
_HW_KEYS = {"display", "source", "memory_gib", "bandwidth_gb_s", "interconnect_gb_s", "host_gb_s", "notes",
            "dense_tflops", "sm_count", "sm_source"}


def _names(kind: str) -> list[str]:
    return sorted(p.stem for p in (_DIR / kind).glob("*.toml"))


def model_names() -> list[str]:
    return _names("models")


def hardware_names() -> list[str]:
    return _names("hardware")


def engine_names() -> list[str]:
    return _names("engines")


def _version_key(name: str) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in name.rsplit("-", 1)[-1].split("."))


@functools.lru_cache(maxsize=None)
def _read(kind: str, name: str, allowed: frozenset) -> dict:
    path = _DIR / kind / f"{name}.toml"
    if name not in _names(kind):  # only the package's own files: "../x" or "/abs/x" must not reach the disk
        valid = ", ".join(_names(kind))
        raise KvsimError(f"unknown {kind[:-1] if kind != 'hardware' else 'hardware'} preset {name!r}; valid: {valid}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise KvsimError(f"preset {path.name} is malformed: {e}") from None
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise KvsimError(f"preset {path.name} has unknown keys: {', '.join(unknown)}")
    return data


def model_entry(name: str) -> dict:
    """The raw preset (display, config, source, published_params)."""
    if name in _RETIRED_MODELS:
        raise KvsimError(f"model preset {name!r} is ambiguous; use {_RETIRED_MODELS[name]}")
    return _read("models", name, frozenset(_MODEL_KEYS))


@functools.lru_cache(maxsize=None)
def load_model(name: str) -> ModelSpec:
    from ..hf import from_hf_config

    entry = model_entry(name)
    if "config" not in entry:
        raise KvsimError(f"model preset {name} has no [config] table")
    spec = from_hf_config(entry["config"], name=name, strict=True)
    return spec.with_(source=entry.get("source", ""))


@functools.lru_cache(maxsize=None)
def load_hardware(name: str) -> HardwareSpec:
    d = _read("hardware", name, frozenset(_HW_KEYS))
    missing = [k for k in ("display", "source", "memory_gib", "bandwidth_gb_s", "dense_tflops") if k not in d]
    if missing:
        raise KvsimError(f"hardware preset {name} is missing: {', '.join(missing)}")
    return HardwareSpec(
        name=name,
        display=d["display"],
        memory_bytes=int(d["memory_gib"] * GiB),
        memory_bandwidth=float(d["bandwidth_gb_s"]) * GB,
        flops={k: float(v) * 1e12 for k, v in d["dense_tflops"].items()},
        interconnect_bandwidth=float(d.get("interconnect_gb_s", 0)) * GB,
        host_bandwidth=float(d.get("host_gb_s", 0)) * GB,
        source=d["source"],
        notes=d.get("notes", ""),
        sm_count=int(d.get("sm_count", 0)),
        sm_source=d.get("sm_source", ""),
    )


@functools.lru_cache(maxsize=None)
def load_engine(name: str):
    """An engine preset by file name ("vllm-0.33.0") or engine name ("vllm": its newest version)."""
    from ..serving import Engine

    names = engine_names()
    if name not in names:
        versions = sorted((n for n in names if n.startswith(f"{name}-")), key=_version_key)
        if versions:
            name = versions[-1]
    d = _read("engines", name, frozenset(_ENGINE_KEYS))
    missing = sorted((_ENGINE_KNOBS | {"engine", "source"}) - set(d))
    if missing:
        raise KvsimError(f"engine preset {name} is missing: {', '.join(missing)}")
    sources = d.get("sources", {})
    knobs = _ENGINE_KNOBS | (_ENGINE_OPTIONAL & set(d))
    if not isinstance(sources, dict) or set(sources) - knobs:
        raise KvsimError(f"engine preset {name}: [sources] may only name its knobs ({', '.join(sorted(knobs))})")
    try:
        return Engine(name=d["engine"], version=str(d.get("version", "")), display=d.get("display", ""),
                      source=d["source"], notes=d.get("notes", ""), sources=dict(sources),
                      **{k: d[k] for k in knobs})
    except TypeError as e:
        raise KvsimError(f"engine preset {name}: {e}") from None
