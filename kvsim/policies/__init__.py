"""KV policies: one small file per family, named here. Adding a policy is one file plus one line below.

The registry is a literal table of names to modules, imported on first use: nothing registers itself as a
side effect of an import. Aliases (int8, int4, fp8) are a family plus preset parameters.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from typing import Any

from ..errors import KvsimError
from ..limits import INPUT_MAX, MAX_CASES, check_points
from .base import Policy, _fmt
from .compose import Compose, compose

# name -> (module, class, preset parameters)
REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "full": ("full", "Full", {}),
    "window": ("window", "Window", {}),
    "streamingllm": ("window", "StreamingLLM", {}),
    "h2o": ("h2o", "H2O", {}),
    "tova": ("tova", "TOVA", {}),
    "snapkv": ("snapkv", "SnapKV", {}),
    "pyramidkv": ("pyramid", "PyramidKV", {}),
    "dynamickv": ("pyramid", "DynamicKV", {}),
    "adakv": ("adakv", "AdaKV", {}),
    "duo": ("duo", "DuoAttention", {}),
    "quest": ("quest", "Quest", {}),
    "rocketkv": ("rocketkv", "RocketKV", {}),
    "lru": ("lru", "LRU", {}),
    "keynorm": ("keynorm", "KeyNorm", {}),
    "kmeans": ("kmeans", "KMeans", {}),
    "learned": ("learned", "Learned", {}),
    "minicache": ("minicache", "MiniCache", {}),
    "quant": ("quant", "Quant", {}),
    "int8": ("quant", "Quant", {"bits": 8}),
    "int4": ("quant", "Quant", {"bits": 4, "group": 32}),
    "fp8": ("quant", "Quant", {"bits": 8, "kind": "fp"}),
    "kivi": ("quant", "Kivi", {}),
    "mixed": ("mixed", "MixedPrecision", {}),
    "lowrank": ("lowrank", "LowRank", {}),
    "offload": ("offload", "Offload", {}),
}


def policy_class(name: str) -> type[Policy]:
    if name not in REGISTRY:
        raise KvsimError(f"unknown policy {name!r}; valid: {', '.join(REGISTRY)}")
    module, cls, _ = REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make(name: str, **params) -> Policy:
    """Build a policy by registry name; alias presets apply first, explicit parameters override them."""
    cls = policy_class(name)
    kwargs = {**REGISTRY[name][2], **params}
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise KvsimError(f"policy {name} has no parameter {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(valid)) or '(none)'}")
    for k, v in kwargs.items():  # one bound for every numeric parameter, however the policy was built
        for x in (v if isinstance(v, tuple) else (v,)):
            if isinstance(x, (int, float)) and not isinstance(x, bool) and not abs(x) <= INPUT_MAX:
                raise KvsimError(f"policy {name}: {k} must be a finite number of at most 2**53, got {float(x):.3g}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise KvsimError(f"policy {name}: {e}") from None


def _is_list(field: dataclasses.Field) -> bool:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return kind.startswith("tuple")


def _coerce(policy: str, field: dataclasses.Field, raw):
    if _is_list(field):  # a list of numbers: every value after key= up to the next key=
        values = [v for v in raw if v]
        try:
            return tuple(float(v) for v in values)
        except ValueError:
            raise KvsimError(f"policy {policy}: {field.name} must be numbers, got {','.join(values)!r}") from None
    raw = raw[0]
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    try:
        if kind == "bool":
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            value = float(raw)
            if not value.is_integer():
                raise ValueError(raw)
            return int(value)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise KvsimError(f"policy {policy}: {field.name} must be {kind}, got {raw!r}") from None


def parse_policy(text: str) -> Policy:
    """'h2o:budget=1024,recent=128' -> H2O(budget=1024, recent=128). A list parameter takes every value up to
    the next key=value: 'pyramidkv:ratios=1,1,0.5,0.25,budget=512' (commas need no quoting on a command line)."""
    text = text.strip()
    if not text:
        raise KvsimError("empty policy spec")
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    cls = policy_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    raw: dict[str, list[str]] = {}
    key = None
    for item in filter(None, (s.strip() for s in rest.split(","))):
        k, eq, value = item.partition("=")
        if not eq:
            if key is None or not _is_list(fields[key]):
                raise KvsimError(f"policy {name}: expected key=value, got {item!r}")
            raw[key].append(item)
            continue
        key = k.strip()
        if key not in fields:
            raise KvsimError(f"policy {name} has no parameter {key!r}; valid: {', '.join(fields) or '(none)'}")
        raw[key] = [value.strip()]
    return make(name, **{k: _coerce(name, fields[k], v) for k, v in raw.items()})


# '+' before a policy name composes ('h2o:budget=512 + kivi:bits=2'); the '+' of a number (1e+5) is followed by
# a digit, so it never splits
_PLUS = re.compile(r"\+(?=\s*[A-Za-z])")


def split_composition(spec: str) -> list[str]:
    parts = [s.strip() for s in _PLUS.split(spec)]
    if len(parts) > 1 and not all(parts):
        raise KvsimError(f"policy {spec!r}: '+' needs a policy on each side")
    return parts


def parse_composition(specs: list[str] | tuple[str, ...] | str | None) -> Compose:
    """Several policy specs, composed in the order given; each may itself be 'a + b' (the app's spelling)."""
    if specs is None:
        return Compose(())
    if isinstance(specs, str):
        specs = [specs]
    return Compose(tuple(parse_policy(p) for s in specs for p in split_composition(s)))


def alternatives(specs: list[str] | None) -> list[Compose]:
    """Compositions for a sweep: each --policy slot lists alternatives separated by ';' ('none' leaves the
    slot empty); the result is every combination, one alternative per slot."""
    import itertools

    slots = []
    for spec in specs or ["full"]:
        alts = [s.strip() for s in spec.split(";") if s.strip()]
        if not alts:
            raise KvsimError("--policy: empty alternative list")
        slots.append(alts)
    check_points(math.prod(len(s) for s in slots), "the product of --policy alternatives", MAX_CASES)
    return [parse_composition([c for c in choice if c.lower() != "none"]) for choice in itertools.product(*slots)]


def label(policy: Policy | Compose) -> str:
    """The shortest spelling that builds this policy: the registry alias whose presets match it, plus only the
    parameters that differ from that alias's values ('int8', not 'quant:bits=8,v_bits=0,kind=int,...')."""
    if isinstance(policy, Compose):
        return " + ".join(label(p) for p in policy.parts) or "full"
    best = None
    for name, (_, cls_name, preset) in REGISTRY.items():
        if type(policy).__name__ != cls_name or type(policy) is not policy_class(name):
            continue
        base = make(name)
        diff = [f for f in dataclasses.fields(policy) if getattr(policy, f.name) != getattr(base, f.name)]
        text = name + (":" + ",".join(f"{f.name}={_fmt(getattr(policy, f.name))}" for f in diff) if diff else "")
        if best is None or len(diff) < best[0] or (len(diff) == best[0] and len(text) < len(best[1])):
            best = (len(diff), text)
    return best[1] if best else policy.spec()


def stored_format(policy: Compose, kv_dtype: str) -> str:
    """What the cache holds, for a column beside the KV dtype: 'int8' for a quantized cache of bf16 values, not
    'bf16'; the KV dtype itself when no encoding applies."""
    q = policy.quant
    if q is None:
        return kv_dtype
    bits, v_bits = getattr(q, "bits", 0), getattr(q, "v_bits", 0) or getattr(q, "bits", 0)
    if getattr(q, "kind", "int") == "fp":
        return "fp8"
    if not bits:
        return f"{q.name} ({kv_dtype} base)"
    return f"int{bits}" + (f"/int{v_bits}" if v_bits != bits else "")


def describe() -> list[dict]:
    """Every registered name with its summary, role, schedule and parameters (for `kvsim list policies`)."""
    out = []
    for name, (_, _, preset) in REGISTRY.items():
        cls = policy_class(name)
        params = [{"name": f.name, "default": preset.get(f.name, f.default), "help": f.metadata.get("help", "")}
                  for f in dataclasses.fields(cls)]
        out.append({"name": name, "family": cls.name, "role": cls.role, "summary": cls.summary,
                    "preset": preset, "params": params})
    return out


__all__ = ["REGISTRY", "Compose", "Policy", "alternatives", "compose", "describe", "label", "make", "stored_format", "parse_composition", "parse_policy",
           "policy_class"]
