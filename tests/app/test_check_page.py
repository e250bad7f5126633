"""The "Check a claim" page with Streamlit's AppTest: examples, pasted tables, a refused table."""

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "pages" / "check_a_claim.py")


def run(timeout=120):
    at = AppTest.from_file(PAGE, default_timeout=timeout)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at, label):
    return int(next(m.value for m in at.metric if m.label == label))


def test_example_verdicts_and_chart():
    at = run()
    frame = at.dataframe[0].value
    assert len(frame) > 0 and set(frame["verdict"]) <= {"consistent", "unverifiable", "impossible",
                                                         "inconsistent", "invalid"}
    assert at.get("vega_lite_chart")  # each claim against its bound
    at.selectbox(key="claim_example").set_value("h2o_paper.csv").run()
    assert not at.exception and metric(at, "invalid") == 8 and metric(at, "consistent") == 8


def test_pasted_table_and_refusal():
    at = run()
    at.radio(key="claim_source").set_value("paste").run()
    assert not at.exception and at.dataframe[0].value["verdict"].tolist() == ["consistent"]
    at.text_area(key="claim_text").set_value(
        "label,model,hardware,seq,gen,batch,ttft_us\nfast,llama-2-7b,h100-sxm,4000,1,1,5\n").run()
    assert not at.exception and at.dataframe[0].value["verdict"].tolist() == ["impossible"]
    at.text_area(key="claim_text").set_value("label,model,ttft_hours\na,llama-2-7b,1\n").run()
    assert not at.exception and at.error and "unknown unit 'hours'" in at.error[0].value
    at.radio(key="claim_source").set_value("upload").run()
    assert not at.exception and at.info
