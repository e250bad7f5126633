"""Every JSON input kvsim reads (config.json, profiles) is bounded: hostile files give one line, never a
traceback, a hang or a NaN."""

import pytest

from kvsim.errors import KvsimError
from kvsim.hf import load_json
from kvsim.profile import load_profile

HOSTILE = {
    "nested": "[" * 100_000 + "]" * 100_000,
    "deep object": '{"a":' * 100 + "1" + "}" * 100,
    "nan": '{"mem_efficiency": NaN}',
    "infinity": '{"step_overhead_s": Infinity}',
    "huge": '{"step_overhead_s": 1e400}',
    "array": "[1, 2]",
    "truncated": '{"params": {',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("reader", [load_json, load_profile])
def test_hostile_json_is_one_line(tmp_path, name, reader):
    path = tmp_path / "x.json"
    path.write_text(HOSTILE[name])
    with pytest.raises(KvsimError) as e:
        reader(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("reader", [load_json, load_profile])
def test_binary_devices_and_folders_are_refused(tmp_path, reader):
    binary = tmp_path / "b.json"
    binary.write_bytes(bytes(range(256)) * 10)
    for bad in (binary, "/dev/zero"):
        with pytest.raises(KvsimError):
            reader(bad)


def test_an_empty_profile_is_not_silently_the_datasheet(tmp_path):
    for text in ("{}", '{"params": {}}'):
        path = tmp_path / "p.json"
        path.write_text(text)
        with pytest.raises(KvsimError, match="no parameters"):
            load_profile(path)
