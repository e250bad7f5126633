"""Drive every control of the explorer with Streamlit's AppTest."""

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from kvsim.policies import REGISTRY, policy_class  # noqa: E402

from pathlib import Path  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")


def run(query=None, timeout=180):
    at = AppTest.from_file(PAGE, default_timeout=timeout)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at):
    return at.get("vega_lite_chart")


def test_loads_with_charts_and_table():
    at = run()
    assert at.title and "llama-3.1-8b" in at.title[0].value
    assert len(charts(at)) >= 9
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 5  # five default policies


def test_workload_controls_change_the_numbers():
    at = run()
    before = at.dataframe[0].value["KV (GiB)"].tolist()
    for key, value in (("seq", 2048), ("gen", 64), ("batch", 2)):
        at.number_input(key=key).set_value(value).run()
        assert not at.exception
    after = at.dataframe[0].value["KV (GiB)"].tolist()
    assert after != before
    at.selectbox(key="tp").set_value(2).run()
    at.selectbox(key="kv_dtype").set_value("fp8").run()
    at.selectbox(key="hardware").set_value("a100-80gb").run()
    at.checkbox(key="log").uncheck().run()
    assert not at.exception and "a100-80gb" in at.title[0].value


def test_model_modes():
    at = run()
    at.selectbox(key="model").set_value("mamba-2.8b").run()
    assert not at.exception and "mamba-2.8b" in at.title[0].value
    at.radio(key="model_mode").set_value("sizes").run()
    assert not at.exception and "custom" in at.title[0].value
    at.number_input(key="heads").set_value(30).run()  # 30 heads over 8 KV heads: refused, readably
    assert not at.exception and at.error and "multiple of KV heads" in at.error[0].value
    at.number_input(key="heads").set_value(32).run()
    at.number_input(key="window").set_value(4096).run()
    assert not at.exception and not at.error
    at.radio(key="model_mode").set_value("config.json").run()
    assert not at.exception and at.info  # asks for an upload


def test_every_policy_and_every_parameter_widget():
    at = run()
    at.multiselect(key="chosen").set_value(list(REGISTRY)).run()
    assert not at.exception
    touched = 0
    for name in REGISTRY:
        if name == "full":
            continue
        import dataclasses
        for f in dataclasses.fields(policy_class(name)):
            key = f"p.{name}.{f.name}"
            meta = f.metadata
            if meta.get("choices"):
                at.selectbox(key=key).set_value(list(meta["choices"])[-1])
            elif isinstance(f.default, bool):
                at.checkbox(key=key).uncheck()
            elif isinstance(f.default, tuple):  # a per-layer list, typed as text
                at.text_input(key=key).set_value("1,1,0.5")
            else:
                widget = at.number_input(key=key)
                widget.set_value(widget.value)  # exercised; values kept valid
            touched += 1
    at.run()
    assert not at.exception
    assert touched > 60
    assert len(at.dataframe[0].value) >= 20  # offload needs a host link: every preset here has one


def test_policy_parameter_changes_the_result():
    at = run({"policies": "h2o"})
    kv = at.dataframe[0].value["KV (GiB)"].iloc[0]
    at.number_input(key="p.h2o.budget").set_value(256).run()
    assert at.dataframe[0].value["KV (GiB)"].iloc[0] < kv


def test_invalid_policy_is_a_warning_not_a_traceback():
    at = run({"policies": "h2o"})
    at.number_input(key="p.h2o.budget").set_value(16).run()  # recent 32 >= budget 16
    assert not at.exception and at.warning and "recent" in at.warning[0].value
    at.text_area(key="extra").input("h2o:budget=512 + kivi:bits=2\nnot-a-policy").run()
    assert not at.exception
    assert any("unknown policy" in w.value for w in at.warning)
    assert "h2o:budget=512 + kivi:bits=2" in at.dataframe[0].value["policy"].tolist()


def test_state_comes_from_and_goes_to_the_url():
    at = run({"model": "mistral-7b-v0.1", "seq": "3000", "policies": "snapkv|int8", "p.snapkv.budget": "777"})
    assert "mistral-7b-v0.1" in at.title[0].value
    assert at.number_input(key="seq").value == 3000
    assert at.number_input(key="p.snapkv.budget").value == 777
    assert at.query_params["policies"] == ["snapkv|int8"] or at.query_params["policies"] == "snapkv|int8"
    at.number_input(key="batch").set_value(3).run()
    q = at.query_params["batch"]
    assert (q[0] if isinstance(q, list) else q) == "3"


def test_profile_and_measured_tabs():
    at = run()
    profiles = at.selectbox(key="profile").options
    if len(profiles) > 1:
        at.selectbox(key="profile").set_value(profiles[-1]).run()
        assert not at.exception


def test_exports():
    import pandas as pd

    from app import charts, export
    df = pd.DataFrame({"policy": ["a", "a"], "seq": [1, 2], "kv_gib": [0.1, 0.2]})
    chart = charts.kv_vs_seq(df, True)
    assert export.png(chart)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in export.svg(chart)
    assert export.csv(df).startswith(b"policy,seq,kv_gib")


def test_measured_rows_are_compared_with_their_own_device_profile():
    from app import data
    df = data.measured_vs_predicted()
    assert set(df["profile"]) == {"cpu"}  # the CPU runs, with the profile fitted on that CPU, not the H100 sheet
    tpot = df[df["metric"] == "TPOT"]["error"].abs().mean()
    assert tpot < 0.2


def test_serving_tab_simulates_every_policy_at_every_rate():
    at = run({"policies": "full|kivi", "sim_requests": "40", "sim_rates": "2", "sim_output": "32"})
    before = len(charts(at))
    at.toggle(key="sim_on").set_value(True).run()
    assert not at.exception and not at.error
    assert len(charts(at)) == before + 3
    from app import data
    setup = data.Setup("llama-3-8b", "h100-sxm", "", 1024, 32, 1, 1, "bf16")
    lat, occ = data.serving(setup, ("full", "kivi"), data.ServingSetup("vllm", 30, "512", "16", (2.0, 8.0)))
    assert set(lat["policy"]) == {"full", "kivi"} and set(lat["rate"]) == {2.0, 8.0}
    assert (lat["ms"] > 0).all() and (occ["pool_used_gib"] <= occ["pool_gib"]).all()


def test_measured_rows_name_presets_or_configs_beside_their_data():
    """Measured rows name a preset or a config.json relative to their CSV's folder (collect.sh runs there): the
    explorer and calibrate read those names back the same way."""
    from calibrate.fit import model_spec
    from kvsim import KvsimError
    folder = Path(__file__).resolve().parents[2] / "measured" / "results" / "cpu"
    assert model_spec("../../configs/jamba-small.json", folder).n_layers == 8
    assert model_spec("gpt2").name == "gpt2"
    with pytest.raises(KvsimError):
        model_spec("no-such-model", folder)
