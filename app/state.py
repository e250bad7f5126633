"""Page state in the URL query string, so that a view can be shared: widget values are read from the query
on the first run of a session and written back after every run."""

from __future__ import annotations

import streamlit as st

DEFAULTS = {
    "model_mode": "preset", "model": "llama-3-8b", "hardware": "h100-sxm", "profile": "", "seq": 8192, "gen": 512,
    "batch": 8, "tp": 1, "kv_dtype": "bf16", "policies": "full|h2o|snapkv|streamingllm|kivi", "extra": "",
    "log": True, "points": 200, "layers": 32, "heads": 32, "kv_heads": 8, "head_dim": 128, "hidden": 4096,
    "intermediate": 14336, "vocab": 128256, "window": 0,
    "sim_engine": "vllm", "sim_requests": 200, "sim_prompt": "uniform:256..2048", "sim_output": "uniform:32..256",
    "sim_rate": 20.0, "sim_rates": 4, "sim_on": False,
}


def init() -> None:
    """Seed session state from the URL (once per session); later runs keep what the widgets say."""
    if st.session_state.get("_state_ready"):
        return
    q = st.query_params
    for key, default in DEFAULTS.items():
        raw = q.get(key)
        value = default
        if raw is not None:
            try:
                value = type(default)(raw) if not isinstance(default, bool) else raw.lower() in ("1", "true")
            except ValueError:
                value = default
        st.session_state.setdefault(key, value)
    for key, raw in q.items():  # policy parameters: p.<policy>.<field>
        if key.startswith("p."):
            st.session_state.setdefault(key, raw)
    st.session_state["_state_ready"] = True


def publish(extra: dict[str, str]) -> None:
    """Write the current widget values (and policy parameters) to the URL query."""
    values = {k: str(st.session_state.get(k, v)) for k, v in DEFAULTS.items()}
    values.update(extra)
    current = dict(st.query_params)
    if current != values:
        st.query_params.clear()
        st.query_params.update(values)
