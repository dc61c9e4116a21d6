"""Comparison with real data, the reference cache, memorisation search and the evaluate CLI."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pypianoroll
import pytest
from conftest import NOTTINGHAM, REPO, scale_tune, write_midi

from apollogan.cli import find_midi_files
from apollogan.data import WindowOptions, preprocess
from apollogan.evaluate import markdown
from apollogan.metrics import METRICS, STRUCTURE
from apollogan.scoring import (
    compare,
    encode_midi_folder,
    evaluate_rolls,
    ks_statistic,
    memorisation,
    pair_iou,
    reference_metrics,
    wasserstein1,
    window_bars,
)
from apollogan.shards import ShardSet
from apollogan.spec import RollSpec


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    out = tmp_path_factory.mktemp("chunks")
    preprocess(find_midi_files([NOTTINGHAM])[:150], out, RollSpec(), WindowOptions(val_fraction=0.3), progress=False)
    return out


def test_distribution_distances():
    assert wasserstein1(np.array([0.0, 1.0]), np.array([1.0, 2.0])) == pytest.approx(1.0)
    assert wasserstein1(np.array([0.0, 0.0, 3.0]), np.array([0.0, 0.0, 3.0])) == 0.0
    assert wasserstein1(np.array([0.0]), np.array([0.0, 4.0])) == pytest.approx(2.0)
    assert ks_statistic(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ks_statistic(np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.0, 3.0])) == pytest.approx(0.5)
    assert np.isnan(wasserstein1(np.array([np.nan]), np.array([1.0])))


def test_compare_gap_is_in_real_standard_deviations():
    real = {"m": np.array([0.0, 2.0, 4.0])}  # mean 2, std sqrt(8/3)
    gen = {"m": np.array([2.0, 2.0, 2.0]) + np.sqrt(8 / 3)}
    row = compare(gen, real)["metrics"]["m"]
    assert row["gap"] == pytest.approx(1.0) and row["generated_std"] == 0.0


def test_real_versus_real(chunks):
    same = compare(reference_metrics(chunks, "val", progress=False), reference_metrics(chunks, "val", progress=False))
    assert same["overall"] == 0.0 and all(v["gap"] == 0 or np.isnan(v["gap"]) for v in same["metrics"].values())
    train = ShardSet(chunks, "train")
    res = evaluate_rolls(train.get(np.arange(len(train))), chunks, window_bars(train), progress=False, memo=False)
    gaps = {k: v["gap"] for k, v in res["metrics"].items()}
    # different tunes of one corpus: measured |gap| <= 0.41 and overall 0.27 on this subset
    assert all(abs(g) < 0.5 for g in gaps.values()), gaps
    assert res["overall"] < 0.35
    noise = (np.random.default_rng(0).random((64, 1, 64, 256)) < 0.06)
    far = evaluate_rolls(noise, chunks, 16, progress=False, memo=False)
    assert far["overall"] > 5 * res["overall"]


def test_rolls_are_compared_with_the_split_asked_for(chunks):
    train, val = ShardSet(chunks, "train"), ShardSet(chunks, "val")
    rolls, bars = train.get(np.arange(len(train))), window_bars(train)
    on_train = evaluate_rolls(rolls, chunks, bars, progress=False, memo=False, split="train")
    on_val = evaluate_rolls(rolls, chunks, bars, progress=False, memo=False)
    # the training windows against themselves: identical distributions; against the validation windows: not
    assert on_train["overall"] == 0.0 and on_val["overall"] > 0.1
    assert (on_train["split"], on_train["real_windows"], on_val["split"], on_val["real_windows"]) == (
        "train", len(train), "val", len(val))
    # the windows in the run's meter: 141 of the training windows are in 4/4, 70 of the validation ones
    four = evaluate_rolls(rolls[:50], chunks, 16, progress=False, memo=False, meter=(4, 4), split="train")
    assert (four["real_windows"], int(val.in_meter(4, 4).sum())) == (141, 70)
    assert markdown(four).startswith("50 samples vs 141 real training windows in 4/4")


def test_pair_iou_known_answers():
    a = np.zeros((3, 4, 8), bool)
    a[0, 1, :2] = a[1, 1, :2] = True  # rolls 0 and 1 the same two cells, roll 2 empty
    assert pair_iou(a) == pytest.approx(1 / 3)  # pairs (0, 1): 1; (0, 2) and (1, 2): 0
    assert pair_iou(a, n=2) == 0.0  # rolls 0 and 2, spread over the three
    a[1, 1, 1] = False
    a[1, 2, 7] = True  # roll 1 now shares one of its two cells with roll 0: IoU 1/3
    assert pair_iou(a) == pytest.approx(1 / 9)
    assert pair_iou(np.zeros((2, 4, 8), bool)) == 1.0  # two empty rolls are alike
    assert np.isnan(pair_iou(a[:1]))


def test_evaluation_reports_how_alike_the_samples_are(chunks):
    val = ShardSet(chunks, "val")
    one = np.repeat(val.get([0]), 40, axis=0)  # the same real window forty times
    res = evaluate_rolls(one, chunks, np.repeat(window_bars(val)[:1], 40), progress=False, memo=False)
    d = res["diversity"]
    assert d["generated_pair_iou"] == 1.0 and 0 < d["real_pair_iou"] < 0.2
    assert "two samples share 1.000 of their active cells" in markdown(res)


def test_reference_is_cached_and_invalidated(chunks, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(chunks, root)
    first = reference_metrics(root, "val", progress=False)
    cache = root / "reference-val.npz"
    assert cache.is_file() and set(first) == set(METRICS) | {f"structure/{k}" for k in STRUCTURE}
    mtime = cache.stat().st_mtime_ns
    reference_metrics(root, "val", progress=False)
    assert cache.stat().st_mtime_ns == mtime  # reused
    preprocess(find_midi_files([NOTTINGHAM])[:60], root, RollSpec(), WindowOptions(val_fraction=0.3), progress=False)
    again = reference_metrics(root, "val", progress=False)
    assert len(again["polyphony"]) == len(ShardSet(root, "val")) != len(first["polyphony"])


def test_memorisation_finds_a_planted_copy(chunks):
    train = ShardSet(chunks, "train")
    rng = np.random.default_rng(1)
    samples = rng.random((40, 64, 256)) < 0.05
    planted = 17
    samples[23] = train.get([planted])[0, 0]
    near = train.get([planted + 1])[0, 0].copy()
    near[:, :128] = False  # half a window: IoU well below 1
    samples[5] = near
    m = memorisation(samples, train, progress=False)
    top = m["closest"][0]
    assert top["sample"] == 23 and top["iou"] == 1.0
    assert np.array_equal(train.get([top["train_window"]])[0, 0], samples[23])
    assert m["above_0.95"] == pytest.approx(1 / 40)
    assert m["closest"][1]["sample"] == 5 and 0.2 < m["closest"][1]["iou"] < 0.95


def test_evaluate_midi_folder_scores_good_files_and_names_the_bad_one(chunks, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    for f in map(Path, find_midi_files([NOTTINGHAM])[200:205]):
        (d / f.name).write_bytes(f.read_bytes())
    first = sorted(d.glob("*.mid"))[0]
    with warnings.catch_warnings():  # pretty_midi's note on the file's meta events in track 1
        warnings.simplefilter("ignore")
        pypianoroll.read(first, resolution=24).save(first.with_suffix(".npz"))  # its twin: scored once
    (d / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\xff\xff")
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "apollogan.evaluate", "--midi", str(d), "--data", str(chunks),
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO, env=os.environ)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "broken.mid" in r.stderr
    res = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert [s["path"].split("/")[-1] for s in res["skipped"]] == ["broken.mid"]
    assert res["twins_left_out"] == [str(first.with_suffix(".npz"))] and "left out 1 file(s)" in r.stdout
    assert res["samples"] > 5 and set(res["metrics"]) == set(METRICS)
    assert "| pitch_range |" in r.stdout and "memorisation" in r.stdout
    # held-out real tunes are near the real reference
    assert res["overall"] < 0.6 and res["memorisation"]["above_0.95"] < 0.5


def test_a_tune_as_midi_and_npz_is_scored_once_and_a_broken_midi_leaves_its_npz_in(tmp_path, capsys):
    # a.mid (2 windows) beside an a.npz of another tune (1 window), b.npz alone (1), c.mid broken beside
    # c.npz (3): keeping the .npz twin would give 5 windows, scoring both 7, dropping c.npz with c.mid 3
    def npz(beats, path):
        write_midi(tmp_path / "src.mid", scale_tune(beats))
        pypianoroll.read(tmp_path / "src.mid", resolution=24).save(path)
    d = tmp_path / "out"
    d.mkdir()
    write_midi(d / "a.mid", scale_tune(128))
    npz(64, d / "a.npz")
    npz(64, d / "b.npz")
    (d / "c.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\xff\xff")
    npz(192, d / "c.npz")
    rolls, bars, skipped, twins = encode_midi_folder(d, RollSpec(), progress=False)
    assert len(rolls) == len(bars) == 6
    assert [Path(s["path"]).name for s in skipped] == ["c.mid"] and twins == [str(d / "a.npz")]
    assert f"left out 1 file(s) named like a scored one, such as {d / 'a.npz'}" in capsys.readouterr().err


def test_evaluate_errors_are_one_line(tmp_path, chunks):
    r = subprocess.run([sys.executable, "-m", "apollogan.evaluate", "--midi", str(tmp_path), "--data", str(chunks)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "no MIDI (.mid, .midi, .kar) or .npz files" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "apollogan.evaluate", "--checkpoint", "nope"], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.startswith("error: nope:")


def test_evaluate_reports_feature_distances_with_intervals_and_the_real_floor(chunks, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    for f in map(Path, find_midi_files([NOTTINGHAM])[200:212]):
        (d / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "apollogan.evaluate", "--midi", str(d), "--data", str(chunks),
                        "--feature-size", "6", "--no-memorisation", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, env=os.environ)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    for k in ("fd", "kd", "fd_floor", "kd_floor"):
        assert set(res[k]) == {"value", "low", "high"} and res[k]["low"] <= res[k]["high"], k
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall_floor"] <= 1
    assert res["features"]["size"] == 6 and "features-nottingham.pt" in res["features"]["network"]
    assert "| FD (headline) |" in r.stdout and "| phrase_repetition |" in r.stdout
    assert set(res["structure"]) == {"phrase_repetition", "melodic_step_rate", "step_descent", "strong_beat_chord_tones"}
    # asked for more windows than the split has: one line, exit 2; by default the figures are skipped in one line
    big = subprocess.run([sys.executable, "-m", "apollogan.evaluate", "--midi", str(d), "--data", str(chunks),
                          "--feature-size", "5000", "--no-memorisation"], capture_output=True, text=True, cwd=REPO,
                         env=os.environ)
    assert big.returncode == 2 and "Traceback" not in big.stderr
    assert big.stderr.strip().splitlines()[-1].endswith("fewer than the sample size 5000 of the feature distances "
                                                        "(--feature-size)")
    plain = subprocess.run([sys.executable, "-m", "apollogan.evaluate", "--midi", str(d), "--data", str(chunks),
                            "--no-memorisation", "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                           env=os.environ)
    assert plain.returncode == 0 and "feature distances skipped:" in plain.stderr
    assert "fd" not in json.loads(out.read_text()) and "skipped" in json.loads(out.read_text())["features"]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    bad = subprocess.run([sys.executable, "-m", "apollogan.evaluate", "--midi", str(d), "--data", str(chunks),
                          "--features", str(junk), "--no-memorisation"], capture_output=True, text=True, cwd=REPO,
                         env=os.environ)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "junk.pt: not a readable feature network" in bad.stderr
