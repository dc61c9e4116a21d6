"""The Nottingham likelihood benchmark: both file formats, the shards, the trivial baselines' known answers,
the likelihood the benchmark's way, and the joint-note and token outputs (normalised, trained, resumed)."""
import itertools
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from test_families import QUIET, tiny

from apollogan.benchmark import baselines, benchmark_shards, read_benchmark, read_tunes, tune_likelihood
from apollogan.checkpoint import family_from_checkpoint, load_checkpoint
from apollogan.cli import UserError
from apollogan.config import load_config
from apollogan.models import build_family
from apollogan.models.lstm import NADEHead, TokenHead, frame_vocabulary
from apollogan.preprocess import main as preprocess
from apollogan.shards import ShardSet
from apollogan.spec import RollSpec
from apollogan.train import train


def tune(frames: int, shift: int) -> list[list[int]]:
    """A tune as the pickle holds it: a stepwise melody over a held triad, MIDI numbers per frame."""
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    return [[72 + scale[(t // 2 + shift) % 8], 48 + shift % 3, 52 + shift % 3, 55 + shift % 3] for t in range(frames)]


def bench_dict() -> dict:
    return {"train": [tune(300, i) for i in range(6)], "valid": [tune(280, 10 + i) for i in range(3)],
            "test": [tune(250, 20 + i) for i in range(3)]}


def as_matrix(t: list[list[int]]) -> np.ndarray:
    m = np.zeros((len(t), 88), np.uint8)
    for i, frame in enumerate(t):
        m[i, [n - 21 for n in frame]] = 1
    return m


@pytest.fixture
def bench_pickle(tmp_path):
    path = tmp_path / "bench.pickle"
    path.write_bytes(pickle.dumps(bench_dict()))
    return path


@pytest.fixture
def bench_mat(tmp_path):
    cells = {}
    for key, cell in (("train", "traindata"), ("valid", "validdata"), ("test", "testdata")):
        c = np.empty((1, len(bench_dict()[key])), object)
        for i, t in enumerate(bench_dict()[key]):
            c[0, i] = as_matrix(t)
        cells[cell] = c
    path = tmp_path / "bench.mat"
    scipy.io.savemat(str(path), cells)
    return path


@pytest.fixture
def bench_chunks(tmp_path, bench_pickle):
    out = tmp_path / "bench-chunks"
    assert preprocess([str(bench_pickle), "--out", str(out)]) == 0
    return out


def test_both_formats_read_the_same_tunes(bench_pickle, bench_mat):
    a, b = read_benchmark(bench_pickle), read_benchmark(bench_mat)
    assert [len(a[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    for s in a:
        for x, y in zip(a[s], b[s]):
            assert x.shape == y.shape and np.array_equal(x, y)
    first = a["train"][0]
    assert first.shape == (300, 88) and first[0].nonzero()[0].tolist() == [48 - 21, 52 - 21, 55 - 21, 72 - 21]


def test_a_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"train": [Exploit()], "valid": [], "test": []}))
    with pytest.raises(UserError, match="names posix.system|names os.system|names nt.system"):
        read_benchmark(path)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ({"train": [[[60]]], "valid": [[[60]]]}, "no 'test' split"),
    ({"train": [[[60]]], "valid": [[[60]]], "test": [[[109]]]}, "note 109 is outside the 88 keys"),
    ({"train": [[[60]]], "valid": [[[20]]], "test": [[[60]]]}, "note 20 is outside the 88 keys"),
    ({"train": [[[60]]], "valid": [[[60]]], "test": []}, "the test split is empty"),
    ([1, 2], "expected a dict of splits"),
])
def test_bad_benchmark_pickles_get_one_line(tmp_path, content, message):
    path = tmp_path / "bad.pickle"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(UserError, match=message):
        read_benchmark(path)


def test_bad_benchmark_mats_get_one_line(tmp_path):
    path = tmp_path / "bad.mat"
    scipy.io.savemat(str(path), {"traindata": np.zeros((3, 88))})
    with pytest.raises(UserError, match="no 'validdata' cell"):
        read_benchmark(path)
    c = np.empty((1, 1), object)
    c[0, 0] = np.zeros((4, 87), np.uint8)
    scipy.io.savemat(str(path), {"traindata": c, "validdata": c, "testdata": c})
    with pytest.raises(UserError, match=r"shape \[4, 87\]; frames must span the 88 keys"):
        read_benchmark(path)
    path.write_bytes(b"not a mat file at all")
    with pytest.raises(UserError, match="not a readable MATLAB file"):
        read_benchmark(path)


def test_the_trivial_baselines_have_their_known_values():
    def frames(*rows):
        m = np.zeros((len(rows), 88), bool)
        for i, r in enumerate(rows):
            m[i, list(r)] = True
        return m
    train_tunes = [frames([0], [0], [], [])]  # key 0: on 2 of 4 frames; on->on, on->off, off->off once each
    test_tunes = [frames([0], [0, 1], [1])]
    res = baselines(train_tunes, test_tunes)
    assert res["frames"] == 2
    assert res["uniform"]["nll_per_frame"] == pytest.approx(88 * math.log(2))
    # unigram: p(key 0) = (2 + 1/2) / (4 + 1) = 1/2, every other key 1/10
    want = (-math.log(0.5) - math.log(0.1) - 86 * math.log(0.9)) + (-math.log(0.5) - math.log(0.1) - 86 * math.log(0.9))
    assert res["unigram"]["nll_per_frame"] == pytest.approx(want / 2)
    # Markov: key 0 on after on 1.5/3, on after off 0.5/2; other keys on after off 0.5/4
    f1 = -math.log(0.5) - math.log(0.125) - 86 * math.log(0.875)  # key 0 stays on, key 1 starts
    f2 = -math.log(0.5) - math.log(1 - 0.5 / 1) - 86 * math.log(0.875)  # key 0 stops (p 1/2), key 1 held (0.5/1)
    assert res["markov"]["nll_per_frame"] == pytest.approx((f1 + f2) / 2)
    # copying: frame 1 misses key 1 (TP 1, FN 1), frame 2 keeps key 0 (TP 1, FP 1): 2 / 4
    assert res["copy_previous"]["frame_accuracy"] == pytest.approx(0.5)


def test_preprocess_keeps_the_split_windows_and_whole_tunes(bench_chunks, bench_pickle):
    m = json.loads((bench_chunks / "manifest.json").read_text())
    assert m["spec"]["steps_per_beat"] == 2 and m["counts"]["sources_per_split"] == {"train": 6, "val": 3, "test": 3}
    assert m["counts"]["windows"] == {"train": 12, "val": 6, "test": 3}  # 300 and 280 frames: 2 windows, 250: one (padded)
    test = ShardSet(bench_chunks, "test")
    assert len(test) == 3 and test.get([0]).shape == (1, 1, 64, 256)
    tunes = read_tunes(bench_chunks, "test")
    want = read_benchmark(bench_pickle)["test"]
    assert [len(t) for t in tunes] == [250, 250, 250]
    for got, w in zip(tunes, want):
        assert np.array_equal(got, w[:, 30 - 21:94 - 21])  # rows 0..63 are MIDI 30..93
    with pytest.raises(UserError, match="no whole tunes"):
        read_tunes(bench_chunks, "nope")


def test_a_note_outside_the_window_is_refused_not_dropped(tmp_path):
    d = bench_dict()
    d["test"][1][5] = [100]
    path = tmp_path / "high.pickle"
    path.write_bytes(pickle.dumps(d))
    with pytest.raises(UserError, match="test tune 1: note 100 at frame 5 is outside the pitch window 30..93"):
        benchmark_shards(path, tmp_path / "out", RollSpec(steps_per_beat=2))
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(UserError, match="frames are eighth notes"):
        preprocess([str(path), "--out", str(tmp_path / "o2"), "--steps-per-beat", "4"])


def test_the_likelihood_is_the_benchmarks_on_frames_1_to_t_minus_1(bench_chunks):
    fam = build_family(RollSpec(steps_per_beat=2), load_config(None, ["model.family=lstm", "model.hidden=4"]))
    with torch.no_grad():
        for p in fam.modules["model"].parameters():
            p.zero_()  # every cell p = 1/2
    fam.modules["model"].eval()
    tunes = read_tunes(bench_chunks, "val")
    res = tune_likelihood(fam, tunes, batch_frames=300)  # one tune per batch: padding never counts
    assert res["frames"] == sum(len(t) - 1 for t in tunes) == 3 * 279
    assert res["nll_per_frame"] == pytest.approx(64 * math.log(2), rel=1e-6)
    assert res["frame_accuracy"] == pytest.approx(4 / 64)  # every cell predicted on (p >= 1/2): 4 of 64 are


def test_the_nade_output_sums_to_one_over_every_frame():
    torch.manual_seed(0)
    head = NADEHead(hidden=5, frame=6, units=4)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()  # far from the small initial weights: the conditionals matter
    frames = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)))
    h = torch.randn(1, 5).expand(len(frames), 5)
    p = torch.exp(-head.nll(h, frames))
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert p.max() < 0.99 and p.min() > 0  # a real distribution, not one frame
    # the cells depend on each other: p(frame) is not the product of its cells' marginals
    marg = [p[frames[:, i] == 1].sum() for i in range(6)]
    indep = torch.stack([torch.where(f == 1, torch.stack(marg), 1 - torch.stack(marg)).prod() for f in frames])
    assert (p - indep).abs().max() > 1e-3


def test_the_token_vocabulary_keeps_unseen_frames_exact():
    torch.manual_seed(0)
    frames = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)))
    seen = frames[[0, 5, 9]]  # the training frames; 9 most often, then 0, then 5
    rolls = torch.cat([seen[[2, 2, 2, 0, 0, 1]].T[None, None]])  # one window [1, 1, 6, 6]
    head = TokenHead(hidden=5, frame=6, vocab=2)  # room for two of the three
    head.fit(frame_vocabulary([rolls.numpy().astype(np.uint8)]))
    assert int(head.size) == 2 and torch.equal(head.vocab.float(), seen[[2, 0]])
    assert head.lookup(frames[[9, 0, 5, 63]]).tolist() == [0, 1, -1, -1]  # frame 5 was cut: it escapes
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    h = torch.randn(1, 5).expand(len(frames), 5)
    lp = head.log_prob(h, frames)
    assert torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-5)
    # an unseen frame: the escape token, then its cells
    lt = torch.log_softmax(head.tokens(h[:1]), -1)[0]
    cells = torch.sigmoid(head.cells(h[:1]))[0]
    want = lt[-1] + torch.where(frames[63] > 0, cells.log(), (1 - cells).log()).sum()
    assert lp[63].item() == pytest.approx(want.item(), rel=1e-5)
    # a vocabulary frame: its token or the escape's cells
    b0 = torch.where(frames[9] > 0, cells.log(), (1 - cells).log()).sum()
    assert lp[9].item() == pytest.approx(torch.logaddexp(lt[0], lt[-1] + b0).item(), rel=1e-5)


@pytest.mark.parametrize("output", ["nade", "tokens"])
def test_joint_outputs_train_resume_bit_exactly_and_score_the_benchmark(tmp_path, bench_chunks, output):
    extra = (f"model.output={output}", "run.best_metric=nll", "run.meter=4/4")
    straight = train(tiny(tmp_path / "a", bench_chunks, "lstm", *extra), **QUIET)
    half = train(tiny(tmp_path / "b", bench_chunks, "lstm", *extra, "train.steps=3"), **QUIET)
    resumed = train(tiny(tmp_path / "b", bench_chunks, "lstm", *extra), resume=Path(half["checkpoint"]), **QUIET)
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for part in ("modules", "ema"):
        for k, v in a[part]["model"].items():
            assert torch.equal(v, b[part]["model"][k]), (part, k)
    assert 0 < straight["Val/nll_per_frame"] < 64 * math.log(2)
    assert 0 < straight["Val/tune_nll_per_frame"] < 64 * math.log(2)  # whole validation tunes: best.pt's figure
    if output == "tokens":  # the vocabulary came from the training windows, and travels in the checkpoint
        fam, _, _ = family_from_checkpoint(a)
        assert int(fam.modules["model"].out.size) == 8 * 3  # 8 melody notes over 3 triads, nothing else
    best = load_checkpoint(Path(straight["checkpoint"]).parent / "best.pt")
    assert best["best"]["metric"] == "nll" and best["best"]["on"] == "val"
    from apollogan.evaluate import main as evaluate

    out = tmp_path / "like.json"
    assert evaluate(["--checkpoint", straight["checkpoint"], "--likelihood", "test", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["likelihood"]
    assert res["frames"] == 3 * 249 and 0 < res["nll_per_frame"] < 64 * math.log(2) and 0 <= res["frame_accuracy"] <= 1
    fam, _, _ = family_from_checkpoint(a)
    rolls = fam.sample(3, torch.Generator().manual_seed(0), real=torch.from_numpy(ShardSet(bench_chunks, "val").pick(3, 0)))
    assert rolls.shape == (3, 1, 64, 256) and set(rolls.unique().tolist()) <= {0.0, 1.0}


def test_best_metric_nll_needs_a_likelihood_family():
    with pytest.raises(UserError, match="run.best_metric=nll: model.family=dcgan has no likelihood"):
        load_config(None, ["run.best_metric=nll"])
    with pytest.raises(UserError, match="--likelihood: scores a checkpoint"):
        from apollogan.evaluate import main as evaluate
        evaluate(["--midi", "x", "--likelihood", "test"])


def test_a_pitch_window_wider_than_the_keys_keeps_every_note_in_its_row():
    from apollogan.benchmark import to_window

    frames = np.zeros((3, 88), bool)
    frames[0, 0] = frames[1, 87] = frames[2, 39] = True  # MIDI 21, 108 and 60
    rows = to_window(frames, RollSpec(low=10, pitches=100), "t")  # rows are MIDI 10..109
    assert rows.shape == (3, 100)
    assert [r.nonzero()[0].tolist() for r in rows] == [[21 - 10], [108 - 10], [60 - 10]]


def test_a_best_pt_rewritten_from_a_loaded_checkpoint_passes_its_checksum(tmp_path, bench_chunks):
    from apollogan.checkpoint import save_best

    out = train(tiny(tmp_path, bench_chunks, "lstm", "run.best_metric=nll"), **QUIET)
    loaded = load_checkpoint(out["checkpoint"])  # it holds its digest: a rewrite must not hash it in
    save_best(loaded, tmp_path / "again")
    assert load_checkpoint(tmp_path / "again" / "best.pt")["step"] == loaded["step"]
