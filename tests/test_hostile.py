"""Hostile and careless input, by class (issue 12): every command either prints a correct result or exits 2 with
one line on stderr; never a traceback, a NaN, an Infinity or a negative size; files that existed are unchanged.

The CLI runs in-process (kvsim.cli.main) so that hundreds of generated inputs take seconds.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsim.cli import main
from kvsim.cliargs import parse_values
from kvsim.errors import KvsimError, UsageError
from kvsim.jsonio import parse_object

BAD_NUMBER = re.compile(r"\b(nan|NaN|inf|Infinity)\b|(^|[\s,:\[])-\d")


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    errors = [l for l in err.splitlines() if l.strip() and not l.startswith(("note:", "wrote "))]
    assert "Traceback" not in err
    if code == 0:
        assert not BAD_NUMBER.search(out), out[:500]
    else:
        assert code == 2 and len(errors) == 1 and errors[0].startswith("kvsim: error: "), err
    return code, out, err


# ------------------------------------------------------------------------------------ numbers: one parser
@pytest.mark.parametrize("text, message", [
    ("1..10+0.5", "whole step"), ("1..10+nan", "finite"), ("1..inf+1", "finite"), ("1..10*nan", "finite"),
    ("1e400", "finite"), ("nan", "finite"), ("1.5", "whole"), ("10..1+1", "backwards"), ("1..10*1", "never"),
    ("1..1e12+1", "more than"), ("", "no values"), ("1e18", "2**53"),
])
def test_bad_values_are_refused(text, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_values(text, "--seq")


def test_ranges_include_their_end_and_never_repeat():
    assert parse_values("1024..32768*2", "--seq") == [1024, 2048, 4096, 8192, 16384, 32768]
    assert parse_values("0..100+25", "--x", lo=0) == [0, 25, 50, 75, 100]
    assert parse_values("16,16,1..4*2", "--seq") == [16, 1, 2, 4]
    assert parse_values("1..2*1.1", "--seq") == [1, 2]  # rounding to whole numbers repeats values: kept once


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.,+*-eEnaif ", max_size=20))
def test_fuzzed_values_are_read_or_refused(text):
    try:
        vals = parse_values(text, "--seq", lo=1)
    except UsageError as e:
        assert "\n" not in str(e)
        return
    assert vals and all(isinstance(v, int) and 1 <= v <= 2**53 for v in vals) and len(set(vals)) == len(vals)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--seq", "--batch", "--gen", "--layers", "--heads", "--head-dim", "--vocab"]),
       value=st.one_of(st.integers(-10, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.sampled_from(["1e18", "1e15", "0", "", " ", "1..inf+1", "2**8", "0x10"])))
@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow is a wrong number even when it looks fine
def test_fuzzed_predict_is_right_or_refused(capsys, flag, value):
    code, out, _ = cli(capsys, "predict", flag, value, "--format", "json")
    if code == 0:
        got = json.loads(out)
        assert all(v is None or v >= 0 for k, v in got.items() if k.endswith("_bytes") and not isinstance(v, list))


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_wide_model_longest_request_is_searched_within_exact_sizes(capsys):
    # 512 KV heads: the search's old 2**36-token probe overflowed int64, "fitted", and printed "unbounded"
    code, out, _ = cli(capsys, "predict", "--heads", "512", "--format", "json")
    got = json.loads(out)
    assert code == 0 and got["max_request_context"] is not None and 0 < got["max_request_context"] < 2048


@pytest.mark.parametrize("argv", [
    ["predict", "--model", ""], ["predict", "--hf-config", ""], ["predict", "--profile", " "],
    ["predict", "--kv-dtype", ""], ["sweep", "--hardware", ""],
])
def test_empty_values_are_refused_not_defaulted(capsys, argv):
    code, _, err = cli(capsys, *argv)
    assert code == 2 and "empty value" in err


# ------------------------------------------------------------------------------------------- unbounded work
@pytest.mark.parametrize("argv, message", [
    (["predict", "--layers", "100000"], "between 1 and 2,048"),
    (["sweep", "--layers", "1..1000+1", "--heads", "1..100+1", "--head-dim", "1..100+1"], "model sizes"),
    (["sweep", "--seq", "1..9000000+1", "--batch", "1..1000+1"], "--batch grid"),
    (["sweep", "--model", "llama-3-8b,llama-2-7b,qwen3-8b,mistral-7b-v0.1", "--policy", "h2o;full",
      "--policy", "int8;none", "--policy", "offload;none", "--seq", "1..1000000+1", "--batch", "1,2"], "this sweep"),
    (["sweep", *sum([["--policy", "int8;int4;h2o;none"]] * 12, [])], "--policy alternatives"),
])
def test_unbounded_work_is_refused_at_once(capsys, argv, message):
    t = time.perf_counter()
    code, _, err = cli(capsys, *argv)
    assert code == 2 and message in err
    assert time.perf_counter() - t < 30  # generous: a refusal, not the work (the old code hung)


def test_layer_work_is_linear(capsys):
    code, out, _ = cli(capsys, "predict", "--layers", "2048", "--format", "json")
    assert code == 0 and len(json.loads(out)["kv_bytes_per_layer"]) == 2048


def test_a_huge_config_layer_count_is_refused(tmp_path, capsys):
    cfg = json.loads(open("examples/qwen2.5-7b-instruct.config.json").read())
    cfg["num_hidden_layers"] = 10**9
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, _, err = cli(capsys, "predict", "--hf-config", str(tmp_path / "config.json"))
    assert code == 2 and "num_hidden_layers" in err


# ------------------------------------------------------------------------------ silent wrong numbers: notes
def test_gpt2_head_dim_must_divide(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_embd": 770, "n_head": 12, "n_layer": 2, "vocab_size": 100}))
    code, _, err = cli(capsys, "predict", "--hf-config", str(path))
    assert code == 2 and "not a multiple of 12" in err


@pytest.mark.parametrize("argv, note", [
    (["--model", "mamba-2.8b", "--policy", "h2o"], "h2o changes nothing"),
    (["--model", "mamba-2.8b", "--policy", "kivi"], "kivi changes nothing"),
    (["--policy", "lowrank:rank=256"], "at or above the head dim"),
    (["--layers", "1", "--policy", "minicache"], "nothing is merged"),
])
def test_policies_that_do_nothing_say_so(capsys, argv, note):
    code, _, err = cli(capsys, "predict", *argv)
    assert code == 0 and note in err


def test_names_that_break_csv_are_quoted(tmp_path, capsys):
    import csv
    import io
    cfg = json.loads(open("examples/qwen2.5-7b-instruct.config.json").read())
    cfg["_name_or_path"] = 'a,"b"\nc%d'
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    for cmd in (["predict", "--format", "csv"], ["sweep", "--seq", "128,256"]):
        code, out, _ = cli(capsys, *cmd, "--hf-config", str(tmp_path / "c.json"))
        rows = list(csv.reader(io.StringIO(out)))
        assert code == 0 and all(len(r) == len(rows[0]) for r in rows) and rows[1][0] == 'a,"b"\nc%d'


def test_hf_config_is_named_after_its_folder(tmp_path, capsys):
    cfg = json.loads(open("examples/qwen2.5-7b-instruct.config.json").read())
    cfg.pop("_name_or_path", None)
    (tmp_path / "My-Model").mkdir()
    (tmp_path / "My-Model" / "config.json").write_text(json.dumps(cfg))
    code, out, _ = cli(capsys, "predict", "--hf-config", str(tmp_path / "My-Model" / "config.json"), "--format", "json")
    assert code == 0 and json.loads(out)["model"] == "My-Model"


def test_plus_composes_everywhere(capsys):
    a = cli(capsys, "predict", "--policy", "h2o:budget=512 + kivi:bits=2", "--format", "json")[1]
    b = cli(capsys, "predict", "--policy", "h2o:budget=512", "--policy", "kivi:bits=2", "--format", "json")[1]
    assert json.loads(a)["kv_cache_bytes"] == json.loads(b)["kv_cache_bytes"]
    assert json.loads(a)["policy_label"] == "h2o:budget=512 + kivi"
    code, out, _ = cli(capsys, "sweep", "--policy", "h2o:budget=512 + int8;full")
    assert code == 0 and len(out.splitlines()) == 3


# --------------------------------------------------------------------------------- outputs: one safe writer
def test_out_refusals_leave_everything_as_it_was(tmp_path, capsys):
    (tmp_path / "keep.csv").write_text("precious\n")
    for target, message in ((tmp_path, "is a folder"), (tmp_path / "no" / "x.csv", "does not exist")):
        code, _, err = cli(capsys, "sweep", "--out", str(target))
        assert code == 2 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]
    assert (tmp_path / "keep.csv").read_text() == "precious\n"


def test_out_to_a_fifo_writes_through_and_keeps_the_fifo(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    code, _, _ = cli(capsys, "sweep", "--seq", "128,256", "--out", str(fifo))
    reader.join(30)
    assert code == 0 and got and len(got[0].splitlines()) == 3
    import stat
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # a rename would have replaced the node with a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_sigterm_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "big.csv"
    out.write_text("old\n")
    p = subprocess.Popen([sys.executable, "-m", "kvsim.cli", "sweep", "--seq", "1..4000000+1", "--batch", "1..8+1",
                          "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(q.name.startswith(".big.csv.") for q in tmp_path.iterdir()):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "Traceback" not in err
    assert sorted(q.name for q in tmp_path.iterdir()) == ["big.csv"] and out.read_text() == "old\n"


def test_atomic_replacing_refuses_a_device():
    from kvsim.atomic import replacing
    with pytest.raises(KvsimError, match="not a regular file"):
        with replacing(__import__("pathlib").Path("/dev/null")):
            pass
    assert not os.path.isfile("/dev/null")


# ------------------------------------------------------------------------------------------- JSON and URLs
@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
                              lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=3), c,
                                                                                         max_size=3)),
                              max_leaves=20).map(lambda v: json.dumps({"x": v}).encode())))
def test_fuzzed_json_is_read_or_refused(raw):
    try:
        data = parse_object(raw, "config.json")
    except KvsimError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(data, dict)
    finite = lambda v: all(finite(x) for x in (v.values() if isinstance(v, dict) else v)) \
        if isinstance(v, (dict, list)) else not isinstance(v, float) or math.isfinite(v)  # noqa: E731
    assert finite(data)


def test_deep_and_infinite_json_is_refused():
    for raw in (b"[" * 100000 + b"]" * 100000, b'{"a": Infinity}', b'{"a": 1e400}', b'{"a": NaN}'):
        with pytest.raises(KvsimError):
            parse_object(raw, "config.json")


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_devices_are_not_inputs(capsys, path):
    for flag in ("--hf-config", "--profile"):
        code, _, err = cli(capsys, "predict", flag, path)
        assert code == 2 and "not a regular file" in err


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["seq", "gen", "batch", "tp", "layers", "heads", "model", "hardware", "log",
                                        "kv_dtype", "points", "model_mode", "extra", "p.h2o.budget"]),
                       st.one_of(st.text(max_size=12), st.integers(-2**70, 2**70).map(str),
                                 st.floats().map(repr)), max_size=6))
def test_fuzzed_explorer_urls_are_checked(query):
    pytest.importorskip("streamlit")
    from app.state import BOUNDS, DEFAULTS, choices, read_query
    values, problems = read_query(query)
    for k, v in values.items():
        if k in BOUNDS:
            assert BOUNDS[k][0] <= v <= BOUNDS[k][1]
        elif k in DEFAULTS and choices(k) is not None:
            assert v in choices(k)
    assert len(problems) + len(values) <= len(query)


def test_every_explorer_url_value_is_checked():
    """Each widget a URL can set is a bool, a bounded number, or text: a new widget without bounds fails here."""
    pytest.importorskip("streamlit")
    from app.state import BOUNDS, DEFAULTS, read_query
    for k, v in DEFAULTS.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            assert k in BOUNDS, k
            values, problems = read_query({k: "nan"})
            assert k not in values and len(problems) == 1
            values, problems = read_query({k: str(BOUNDS[k][1] * 10 + 1)})
            assert k not in values and len(problems) == 1
            values, problems = read_query({k: str(v)})
            assert values[k] == v and not problems


# --------------------------------------------------------------------------------------------- extras: help
def test_app_help_is_kvsims_own(capsys):
    pytest.importorskip("streamlit")
    with pytest.raises(SystemExit) as e:
        main(["app", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "127.0.0.1" in out and len(out.splitlines()) < 30


def test_help_explains_ranges_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert "a..b*k" in out and "a..b+k" in out and "(default 1024)" in out and "default: h100-sxm" in out


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path):
    import errno

    from kvsim.atomic import output
    target = tmp_path / "sweep.csv"
    target.write_text("old\n")
    with pytest.raises(KvsimError, match="No space left"):
        with output(target) as f:
            f.write("partial")
            raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises on a full disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv"] and target.read_text() == "old\n"


def test_measure_resume_refuses_a_foreign_csv_untouched(tmp_path):
    pytest.importorskip("torch")
    from measured.runner import COLUMNS, check_out, done_keys
    foreign = tmp_path / "other.csv"
    foreign.write_bytes(b"a,b\n1,2\n3,4")  # no final newline: the old code cut its last line before refusing
    for call in (lambda: done_keys(foreign), lambda: check_out(foreign, COLUMNS, True)):
        with pytest.raises(KvsimError, match="not written by this kind"):
            call()
    assert foreign.read_bytes() == b"a,b\n1,2\n3,4"


@pytest.mark.parametrize("name", ["../../../pyproject", "/etc/hostname", "models/gpt2", "gpt2.toml"])
def test_presets_resolve_only_inside_the_package(capsys, name):
    code, _, err = cli(capsys, "predict", "--model", name)
    assert code == 2 and "unknown model preset" in err
