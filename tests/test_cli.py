"""The data commands as a user runs them: decode, describe, and --help everywhere."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from apollogan.cli import UserError, find_midi_files
from apollogan.data import WindowOptions, preprocess
from apollogan.midi import read_song
from apollogan.shards import ShardSet
from apollogan.spec import RollSpec


def run(*args):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("module", ["preprocess", "decode", "describe", "train", "generate", "evaluate", "embed", "ablate"])
def test_every_command_has_help(module):
    r = run(f"apollogan.{module}", "--help")
    assert r.returncode == 0 and "usage: python -m apollogan." + module in r.stdout


def test_decode_writes_the_windows_back_as_midi_and_png(midi_dir, tmp_path):
    spec = RollSpec(onset=True)
    preprocess(find_midi_files([midi_dir]), tmp_path / "c", spec, WindowOptions(val_fraction=0), progress=False)
    r = run("apollogan.decode", tmp_path / "c", "--out", tmp_path / "d", "--index", "2", "0", "--png")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "train-000000.mid", "train-000000.png", "train-000002.mid", "train-000002.png", "train-grid.png"]
    shards = ShardSet(tmp_path / "c")
    back = read_song(tmp_path / "d" / "train-000002.mid", spec)
    from apollogan.midi import notes_to_roll

    assert np.array_equal(notes_to_roll(back.notes, 256, spec), shards.get([2])[0].astype(bool))
    assert "transpose +0" in r.stdout and "4/4" in r.stdout


def test_inspect_reports_counts_histograms_and_a_picture(midi_dir, tmp_path):
    m = preprocess(find_midi_files([midi_dir]), tmp_path / "c", RollSpec(), WindowOptions(val_fraction=0.3),
                   progress=False)
    r = run("apollogan.describe", tmp_path / "c", "--png", tmp_path / "grid.png", "--samples", "4")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"train: {m['counts']['windows']['train']} windows" in out and f"val: {m['counts']['windows']['val']}" in out
    assert "quantisation loss: 0.00% of onsets" in out and "pitch-class histogram" in out
    # the fixtures are C-major-ish lines from G3 upward: B, not A#, must appear in the pitch-class table
    assert (tmp_path / "grid.png").stat().st_size > 100
    r = run("apollogan.describe", tmp_path / "nowhere")
    assert r.returncode == 2 and "no manifest" in r.stderr


def test_a_reader_that_goes_away_is_not_reported_as_an_error():
    # `ablate ... --dry-run | head -1`: the pipe closes before the command has written everything
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "apollogan.ablate", "configs/ablations/smoke.yaml", "--dry-run"],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=REPO)
    finally:
        os.close(write_end)
    assert r.stderr == "" and r.returncode == 141


def test_a_broken_pipe_other_than_stdout_is_an_error():
    # stdout is open: the broken pipe is another one (a worker's), which is reported, not hidden
    code = ("from apollogan.cli import run\n"
            "def main():\n    print('started')\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "run(main)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stdout == "started\n" and r.stderr == "error: I/O: Broken pipe\n"


@pytest.mark.parametrize("override, message", [
    ("train.lr_g=nan", "train.lr_g: expected a finite number, got 'nan'"),
    ("train.lr_g=-1", "train.lr_g: must be a learning rate > 0"),
    ("train.beta1=2", "train.beta1: Adam's beta1 must be in [0, 1)"),
    ("train.r1=nan", "train.r1: expected a finite number"),
    ("train.r1=.inf", "train.r1: expected a finite number"),
    ("train.seed=-1", "train.seed: must be >= 0"),
])
def test_bad_training_values_are_one_line(override, message):
    from apollogan.config import load_config

    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, [override])


def test_a_binary_config_and_a_key_given_twice_are_one_line(tmp_path):
    from apollogan.config import load_config

    junk = tmp_path / "junk.yaml"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="not a text file"):
        load_config(junk)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  steps: 5\n  steps: 7\n")
    with pytest.raises(UserError, match=r"key 'steps' given twice \(line 3\)"):
        load_config(twice)
