"""Page state in the URL query string, so that a view can be shared: widget values are read from the query
on the first run of a session and written back after every run."""

from __future__ import annotations

import streamlit as st

from kvsim.cliargs import parse_values
from kvsim.errors import KvsimError
from kvsim.limits import MAX_LAYERS

DEFAULTS = {
    "model_mode": "preset", "model": "llama-3.1-8b", "hardware": "h100-sxm", "profile": "", "seq": 8192, "gen": 512,
    "batch": 8, "tp": 1, "kv_dtype": "bf16", "policies": "full|h2o|snapkv|streamingllm|kivi", "extra": "",
    "log": True, "points": 200, "layers": 32, "heads": 32, "kv_heads": 8, "head_dim": 128, "hidden": 4096,
    "intermediate": 14336, "vocab": 128256, "window": 0,
    "sim_engine": "vllm", "sim_requests": 200, "sim_prompt": "uniform:256..2048", "sim_output": "uniform:32..256",
    "sim_rate": 20.0, "sim_rates": 4, "sim_on": False,
}


# Bounds of every number a URL may set: a crafted query (?layers=100000, ?seq=1e30) becomes a message and the
# default, never a page exception or an hour of work.
BOUNDS = {"seq": (1, 2**24), "gen": (1, 2**20), "batch": (1, 2**16), "tp": (1, 8), "points": (20, 2000),
          "layers": (1, MAX_LAYERS), "heads": (1, 2**16), "kv_heads": (1, 2**16), "head_dim": (1, 2**16),
          "hidden": (1, 2**20), "intermediate": (1, 2**22), "vocab": (1, 2**24), "window": (0, 2**24),
          "sim_requests": (10, 5000), "sim_rates": (2, 12), "sim_rate": (0.01, 1e6)}
MAX_TEXT = 2000


def choices(key: str):
    """The values a select widget offers (a value outside them would raise inside Streamlit)."""
    import kvsim
    return {"model_mode": ("preset", "config.json", "sizes"), "kv_dtype": ("bf16", "fp16", "fp32", "fp8"),
            "tp": (1, 2, 4, 8), "model": tuple(kvsim.model_names()),
            "hardware": tuple(kvsim.hardware_names()), "sim_engine": ("vllm", "sglang", "trtllm")}.get(key)


def read_query(q) -> tuple[dict, list[str]]:
    """Widget values from a URL query (a mapping of strings), each checked; and what was refused, in words."""
    values, problems = {}, []
    for key, default in DEFAULTS.items():
        raw = q.get(key)
        if raw is None:
            continue
        raw = str(raw)
        try:
            if len(raw) > MAX_TEXT:
                raise ValueError(f"longer than {MAX_TEXT} characters")
            if isinstance(default, bool):
                if raw.lower() not in ("0", "1", "true", "false"):
                    raise ValueError("not true or false")
                values[key] = raw.lower() in ("1", "true")
            elif isinstance(default, float):
                lo, hi = BOUNDS[key]
                v = float(raw)
                if not lo <= v <= hi:  # also false for NaN
                    raise ValueError(f"not a number in [{lo:g}, {hi:g}]")
                values[key] = v
            elif isinstance(default, int):
                lo, hi = BOUNDS[key]
                values[key] = parse_values(raw, key, lo=lo, hi=hi)[0] if "," not in raw and ".." not in raw \
                    else _refuse("one whole number")
            else:
                values[key] = raw
            allowed = choices(key)
            if allowed is not None and values[key] not in allowed:
                del values[key]
                raise ValueError("not one of the choices")
        except (ValueError, KvsimError) as e:
            problems.append(f"URL {key}={raw[:40]!r} ignored ({str(e).removeprefix(key + ' ').removeprefix(key + ': ')}); "
                            f"using {default!r}")
    for key, raw in q.items():  # policy parameters: p.<policy>.<field>, checked when the policy is built
        if key.startswith("p.") and len(key) < 100 and len(str(raw)) <= MAX_TEXT:
            values[key] = str(raw)
    return values, problems


def _refuse(what: str):
    raise ValueError(f"expected {what}")


def init() -> None:
    """Seed session state from the URL (once per session); later runs keep what the widgets say."""
    if st.session_state.get("_state_ready"):
        return
    values, problems = read_query(st.query_params)
    for key, default in DEFAULTS.items():
        st.session_state.setdefault(key, values.get(key, default))
    for key, value in values.items():
        if key.startswith("p."):
            st.session_state.setdefault(key, value)
    st.session_state["_url_problems"] = problems
    st.session_state["_state_ready"] = True


def publish(extra: dict[str, str]) -> None:
    """Write the current widget values (and policy parameters) to the URL query."""
    values = {k: str(st.session_state.get(k, v)) for k, v in DEFAULTS.items()}
    values.update(extra)
    current = dict(st.query_params)
    if current != values:
        st.query_params.clear()
        st.query_params.update(values)
