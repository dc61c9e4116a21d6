"""The yardstick: structure metrics, the corruption suite, the feature network and its distances,
each with known answers."""
import numpy as np
import pytest
import torch

from apollogan import corrupt
from apollogan.cli import UserError
from apollogan.features import (
    BUNDLED,
    FeatureNet,
    RollEncoder,
    bootstrap,
    find_network,
    frechet_distance,
    held_out,
    kernel_distance,
    precision_recall,
    train_network,
)
from apollogan.metrics import melodic_step_rate, phrase_repetition, step_descent, strong_beat_chord_tones
from apollogan.shards import ShardSet
from apollogan.spec import RollSpec

LOW = 30


def roll(notes, steps=128, pitches=64):
    """[1, P, T] bool from (midi pitch, start, end) notes."""
    x = np.zeros((1, pitches, steps), bool)
    for p, a, b in notes:
        x[0, p - LOW, a:b] = True
    return x


def bars_of(patterns, bar=16):
    """A roll whose bar k holds one note: pitch patterns[k] for the bar's first half (None: an empty bar)."""
    return roll([(p, k * bar, k * bar + bar // 2) for k, p in enumerate(patterns) if p is not None],
                steps=bar * len(patterns))


# --- structure metrics ------------------------------------------------------------------------

def test_phrase_repetition_sees_bars_repeated_four_bars_later_and_nothing_else():
    a, b, c, d = 60, 62, 64, 65
    assert phrase_repetition(bars_of([a, b, c, d, a, b, c, d]))[0] == 1.0
    assert phrase_repetition(bars_of([a, b, c, d, b, a, d, c]))[0] == 0.0  # the same bars shuffled
    # half the bars repeat: bars 4 and 5 match bars 0 and 1, bars 6 and 7 do not
    assert phrase_repetition(bars_of([a, b, c, d, a, b, 67, 69]))[0] == 0.5
    assert np.isnan(phrase_repetition(bars_of([a, b, c])))[0]  # no bar has one four bars before it
    assert np.isnan(phrase_repetition(np.zeros((1, 64, 128), bool)))[0]


def test_melodic_motion_of_the_upper_voice_counts_steps_and_their_direction():
    # C D E G over a held low C: moves +2 +2 +3 -> two steps of three moves, both rising
    up = roll([(60, 0, 4), (62, 4, 8), (64, 8, 12), (67, 12, 16), (36, 0, 16)])
    assert melodic_step_rate(up)[0] == pytest.approx(2 / 3)
    assert step_descent(up)[0] == 0.0
    # E D C D: -2 -2 +2: all steps, two of three down; the same line reversed has one of three down
    line = roll([(64, 0, 4), (62, 4, 8), (60, 8, 12), (62, 12, 16)])
    assert melodic_step_rate(line)[0] == 1.0
    assert step_descent(line)[0] == pytest.approx(2 / 3)
    assert step_descent(line[..., :16][..., ::-1])[0] == pytest.approx(1 / 3)
    assert np.isnan(step_descent(roll([(60, 0, 8), (67, 8, 16)]))[0])  # a leap, no step
    assert np.isnan(melodic_step_rate(roll([(60, 0, 16)]))[0])  # no move at all


def test_strong_beat_chord_tones_asks_whether_the_top_note_is_in_the_chord_under_it():
    chord = [(48, 0, 16), (52, 0, 16), (55, 0, 16)]  # C E G held through a 4/4 bar (strong steps 0 and 8)
    x = roll([*chord, (64, 0, 8), (66, 8, 16)], steps=16)  # E (a chord tone), then F# (not one)
    assert strong_beat_chord_tones(x, bar=16, r=4, low=LOW)[0] == 0.5
    y = roll([*chord, (72, 0, 8), (67, 8, 16)], steps=16)  # C and G: both chord tones
    assert strong_beat_chord_tones(y, bar=16, r=4, low=LOW)[0] == 1.0
    # 3/4 (12 steps at 4 a beat, three beats): only the downbeat is strong; its top note is off the chord
    z = roll([*[(p, 0, 12) for p, _, _ in chord], (61, 0, 6), (64, 6, 12)], steps=12)
    assert strong_beat_chord_tones(z, bar=12, r=4, low=LOW)[0] == 0.0
    assert np.isnan(strong_beat_chord_tones(roll([(64, 0, 16)], steps=16), bar=16, r=4, low=LOW))[0]


# --- the corruption suite -----------------------------------------------------------------------

SPEC = RollSpec(steps=128)


def tune():
    """Two windows [2, 1, P, 128] of eight 4/4 bars: a melody of a note a bar over a held chord, different per window."""
    out = []
    for k in range(2):
        mel = [(72 + k + i, i * 16, i * 16 + 16) for i in range(8)]  # no rest: the upper voice is the melody
        out.append(roll(mel + [(48, 0, 128), (55, 0, 128)])[:, None][0])
    return np.stack(out)


def test_corruptions_break_what_they_say_and_keep_the_rest():
    x, rng = tune(), np.random.default_rng(0)
    melody, rest = corrupt.melody_and_rest(x, SPEC)
    assert np.array_equal(corrupt.reverse(corrupt.reverse(x, SPEC), SPEC), x)
    assert np.array_equal(corrupt.shuffle_bars(x, SPEC, 16, 0.0, rng), x)
    full = corrupt.shuffle_bars(x, SPEC, 16, 1.0, rng)
    bars = lambda r: r[:, 0].reshape(2, 64, 8, 16).transpose(0, 2, 1, 3)  # noqa: E731
    moved = (bars(full) != bars(x)).any(axis=(2, 3))
    assert moved.sum() >= 12 and np.array_equal(np.sort(bars(full).sum(axis=(2, 3))), np.sort(bars(x).sum(axis=(2, 3))))
    swapped = corrupt.swap_melodies(x, SPEC, rng)
    m2, r2 = corrupt.melody_and_rest(swapped, SPEC)
    assert np.array_equal(r2, rest) and np.array_equal(m2[0], melody[1]) and np.array_equal(m2[1], melody[0])
    none_moved = corrupt.move_melody(x, SPEC, 0.0, rng)
    all_moved = corrupt.move_melody(x, SPEC, 1.0, rng)
    m3, r3 = corrupt.melody_and_rest(all_moved, SPEC)
    assert np.array_equal(none_moved, x) and np.array_equal(r3, rest) and not (m3 & melody).any()
    dropped = corrupt.drop_melody(x, SPEC)
    assert np.array_equal(dropped[:, 0], rest) and np.array_equal(corrupt.drop_accompaniment(x, SPEC)[:, 0], melody)
    assert np.array_equal(corrupt.flip_register(x, SPEC)[:, 0], x[:, 0, ::-1])


def test_corruptions_recompute_the_onset_channel():
    spec = RollSpec(steps=128, onset=True)
    s = tune()
    x = np.concatenate([s, np.zeros_like(s)], axis=1)
    x[:, 1] = s[:, 0] & ~np.concatenate([np.zeros_like(s[:, 0, :, :1]), s[:, 0, :, :-1]], axis=-1)
    r = corrupt.reverse(x, spec)
    assert r.shape == x.shape and np.array_equal(r[:, 0], x[:, 0, :, ::-1])
    assert (r[:, 1] <= r[:, 0]).all() and not r[0, 1, 72 - LOW, 127] and r[0, 1, 72 - LOW, 112]  # the note's start


# --- distances ------------------------------------------------------------------------------------

def test_frechet_distance_of_known_gaussians():
    a, b = np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]])  # means 1 and 2, variances 2 and 2
    assert frechet_distance(a, b) == pytest.approx(1.0)
    c = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert frechet_distance(c, c) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(c, c * 2) == pytest.approx(4 * (1.0 - 2.0) ** 2 / 2 + 2 * (4 / 3 + 16 / 3 - 2 * 8 / 3))


def test_kernel_distance_is_the_unbiased_mmd_and_ignores_copies_of_a_point():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 1

    def k(x, y):
        return (x @ y / 3 + 1) ** 3
    brute = (sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
             + sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
             - 2 * sum(k(x, y) for x in a for y in b) / 30)
    assert kernel_distance(a, b) == pytest.approx(brute)
    ids = np.array([0, 0, 1, 2, 3, 4])  # a resample holding point 0 twice: that pair is left out
    aa = a[ids]
    within = [k(aa[i], aa[j]) for i in range(6) for j in range(6) if ids[i] != ids[j]]
    expected = (np.mean(within) + sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
                - 2 * sum(k(x, y) for x in aa for y in b) / 30)
    assert kernel_distance(aa, b, ids, np.arange(5)) == pytest.approx(expected)
    same = [kernel_distance(rng.normal(size=(200, 4)), rng.normal(size=(200, 4))) for _ in range(20)]
    assert abs(np.mean(same)) < 0.05 < kernel_distance(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 0.5)


def test_precision_and_recall_of_overlapping_and_disjoint_sets():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(100, 2))
    assert precision_recall(real, real) == (1.0, 1.0)
    far = rng.normal(size=(100, 2)) + 50
    assert precision_recall(real, far) == (0.0, 0.0)
    half = np.concatenate([real[:50], far[:50]])  # half the samples on the real manifold, the rest far away
    assert precision_recall(real, half)[0] == 0.5
    one_side = real[real[:, 0] > 0.5]  # every sample real, but from one side only: a dropped mode
    p, r = precision_recall(real, one_side)
    assert p == 1.0 and 0.3 < r < 0.75


def test_bootstrap_interval_surrounds_an_unbiased_figure():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(150, 3)), rng.normal(size=(150, 3)) + 0.3
    out = bootstrap(kernel_distance, a, b, rounds=100, ids=True)
    assert out["low"] < out["value"] < out["high"] and out["low"] > 0


# --- the network ----------------------------------------------------------------------------

def test_network_trains_saves_loads_and_refuses_foreign_files(chunks, tmp_path):
    shards = ShardSet(chunks, "train")
    fn = train_network(shards, steps=3, batch=8, progress=False, arch={"width": 8, "dim": 4, "horizon": 2},
                       command="test")
    f = fn.features(shards.get(np.arange(5)))
    assert f.shape == (5, 4 + 2) and np.isfinite(f).all()
    fn.save(tmp_path / "features.pt")
    again = FeatureNet.load(tmp_path / "features.pt")
    assert np.allclose(again.features(shards.get(np.arange(5))), f)
    assert again.info["command"] == "test" and again.info["torch"] == torch.__version__ and again.info["seed"] == 0
    assert again.info["shard_checksums"] == [sh["sha256"] for sh in shards.manifest["shards"]["train"]]
    # it never trained on the held-out files' windows, which give the real floor
    assert again.info["train_windows"] == int((~held_out(shards)).sum()) < len(shards)
    net, line = find_network(chunks, shards.spec, shards.manifest, tmp_path / "features.pt")
    assert "trained on these shards" in line
    (tmp_path / "junk.pt").write_bytes(b"not a network at all")
    with pytest.raises(UserError, match=r"junk.pt: not a readable feature network"):
        FeatureNet.load(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"other.pt: not an apollogan feature network"):
        FeatureNet.load(tmp_path / "other.pt")

    class Boom:
        def __reduce__(self):
            return (print, ("ran code",))
    torch.save({"format": "apollogan-features", "x": Boom()}, tmp_path / "code.pt")
    with pytest.raises(UserError, match=r"code.pt: not a readable feature network"):
        FeatureNet.load(tmp_path / "code.pt")
    with pytest.raises(UserError, match=r"not \[2, 64, 256\].*train one with python -m apollogan.embed --data"):
        find_network(chunks, RollSpec(onset=True), shards.manifest, tmp_path / "features.pt")


def test_encoder_reads_time_order():
    net = RollEncoder(1, 64, 128, segment=16, width=8, dim=4, horizon=2)
    x = torch.from_numpy(tune()).float()
    assert not torch.allclose(net(x), net(torch.flip(x, dims=[-1])))


def test_bootstrap_interval_is_corrected_for_the_resampling_bias_of_fd():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(120, 6)), rng.normal(size=(120, 6))
    out = bootstrap(frechet_distance, a, b, rounds=100)
    assert out["low"] < out["value"] < out["high"]  # resampled sets repeat points: FD rises; the interval is shifted back


def test_the_shipped_network_is_small_records_its_making_and_fits_the_bundled_shards(tmp_path):
    from conftest import NOTTINGHAM

    from apollogan.cli import find_midi_files
    from apollogan.data import WindowOptions, preprocess

    assert BUNDLED.is_file() and BUNDLED.stat().st_size < 5 * 2**20
    net = FeatureNet.load(BUNDLED)
    info = net.info
    assert info["command"].startswith("python -m apollogan.embed --data chunks/nottingham")
    assert {"seed", "torch", "steps", "shard_checksums", "train_digest"} <= set(info)
    preprocess(find_midi_files([NOTTINGHAM]), tmp_path / "c", RollSpec(), WindowOptions(), progress=False)
    shards = ShardSet(tmp_path / "c", "train")
    _, line = find_network(tmp_path / "c", shards.spec, shards.manifest)
    assert line.endswith("trained on these shards")  # the bundled tunes, preprocessed as the README says
    with pytest.raises(UserError, match=r"no feature network for rolls \[2, 64, 256\].*python -m apollogan.embed --data"):
        find_network(tmp_path / "c", RollSpec(onset=True), shards.manifest)
