"""Every kind of bad input is skipped with one line naming the file and the reason."""
import os
import subprocess
import sys

import pytest
from conftest import REPO, scale_tune, write_midi

from apollogan.cli import find_midi_files
from apollogan.data import WindowOptions, preprocess
from apollogan.shards import read_lines
from apollogan.spec import RollSpec

HEADER = b"MThd\x00\x00\x00\x06"


def make_bad_files(d):
    good = write_midi(d / "good.mid", scale_tune(96))
    raw = good.read_bytes()
    files = {
        "zero.mid": (b"", "empty file (0 bytes)"),
        "text.mid": (b"this is not a midi file\n", "not a MIDI file"),
        "truncated.mid": (raw[: len(raw) // 2], "corrupt MIDI"),
        "corrupt.mid": (HEADER + b"\x00\x01\x00\x01\x01\xe0" + b"MTrk\xff\xff\xff\xf0garbage", "corrupt MIDI"),
        "zerotpq.mid": (HEADER + b"\x00\x01\x00\x01\x00\x00" + raw[14:], "zero ticks per beat"),
        "smpte.mid": (HEADER + b"\x00\x01\x00\x01\xe7\x28" + raw[14:], "SMPTE time division"),
        "type2.mid": (HEADER + b"\x00\x02\x00\x01\x01\xe0" + raw[14:], "type-2 MIDI"),
    }
    for name, (data, _) in files.items():
        (d / name).write_bytes(data)
    write_midi(d / "silent.mid", [])
    files["silent.mid"] = (None, "no notes")
    write_midi(d / "long.mid", [(60, 0, 1), (60, 30000, 30001)], tpq=96)
    files["long.mid"] = (None, "absurd length")
    os.symlink("loop.mid", d / "loop.mid")
    files["loop.mid"] = (None, "unreadable")
    return {name: reason for name, (_, reason) in files.items()}


def test_each_bad_kind_is_skipped_with_its_reason(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    expected = make_bad_files(d)
    m = preprocess(find_midi_files([d]), tmp_path / "c", RollSpec(), WindowOptions(val_fraction=0), progress=False)
    assert [s["path"].split("/")[-1] for s in read_lines(tmp_path / "c", m["sources"])] == ["good.mid"]
    got = {s["path"].split("/")[-1]: s["reason"] for s in read_lines(tmp_path / "c", m["skipped"])}
    assert set(got) == set(expected)
    for name, reason in expected.items():
        assert reason in got[name], (name, got[name])
    assert m["counts"]["converted"] == 1 and sum(m["counts"]["skipped"].values()) == len(expected)
    assert m["counts"]["windows"]["train"] > 0


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "apollogan.preprocess", "--quiet", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO)


def test_cli_mixed_folder_exits_zero_and_names_each_bad_file(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    expected = make_bad_files(d)
    r = cli(d, "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for name in expected:
        assert sum(f"{name}:" in line for line in r.stderr.splitlines()) == 1, name
    assert "converted 1 of 11 files" in r.stdout
    assert (tmp_path / "c" / "manifest.json").is_file()


def test_cli_all_bad_exits_nonzero_with_a_clear_message(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.mid").write_bytes(b"nope")
    (d / "b.midi").write_bytes(b"")
    r = cli(d, "--out", tmp_path / "c")
    assert r.returncode == 2
    assert "error: no file converted (2 skipped)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c" / "manifest.json").exists()


@pytest.mark.parametrize("args, message", [
    (["/no/such/folder"], "/no/such/folder: no such file or folder"),
    (["--low", "100"], "not inside MIDI 0..127"),
])
def test_cli_bad_arguments_are_one_line(tmp_path, args, message):
    r = cli(*args, "--out", tmp_path / "c")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_empty_folder_is_an_error(tmp_path):
    r = cli(tmp_path, "--out", tmp_path / "c")
    assert r.returncode == 2 and "no MIDI (.mid, .midi, .kar) or .npz files in" in r.stderr
