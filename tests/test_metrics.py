"""Known answers for every metric, on asymmetric fixtures (a swapped empty/non-empty must fail)."""
import math

import numpy as np
import pytest

from apollogan import metrics as M

LOW = 30


def roll(t=64, n=1):
    return np.zeros((n, 64, t), bool)


def put(x, midi, start, end, i=0):
    x[i, midi - LOW, start:end] = True
    return x


def one(fn, x, **kw):
    kw.setdefault("low", LOW)
    kw.setdefault("r", 4)
    kw.setdefault("bar", 16)
    return float(fn(x, **kw)[0])


def test_empty_roll():
    x = roll()
    assert one(M.empty_bar_rate, x) == 1.0 and one(M.empty_beat_rate, x) == 1.0
    assert one(M.pitches_used, x) == 0 and one(M.pitch_classes_used, x) == 0 and one(M.used_pitch_classes, x) == 0
    for fn in (M.pitch_range, M.polyphony, M.pitch_entropy, M.pitch_class_entropy, M.scale_consistency,
               M.tonal_distance):
        assert math.isnan(one(fn, x)), fn.__name__
    assert math.isnan(one(M.qualified_note_rate, x, q=2))
    assert one(M.polyphony_rate, x, k=1) == 0.0


def test_single_note_in_beat_zero_of_four():
    x = put(roll(t=16), 60, 0, 4)
    assert one(M.empty_beat_rate, x) == 0.75  # not 0.25
    assert one(M.empty_bar_rate, x, bar=4) == 0.75
    assert one(M.pitches_used, x) == 1 and one(M.pitch_range, x) == 0
    assert one(M.polyphony, x) == 1.0 and one(M.qualified_note_rate, x, q=4) == 1.0
    assert one(M.pitch_entropy, x) == 0.0


def test_pitch_classes_are_pitch_mod_12():
    octave = put(put(roll(), 60, 0, 4), 72, 0, 4)  # C4 + C5
    semitone = put(put(roll(), 60, 0, 4), 61, 0, 4)  # C4 + C#4
    assert one(M.pitch_classes_used, octave) == 1 and one(M.pitch_classes_used, semitone) == 2
    assert one(M.used_pitch_classes, octave) == pytest.approx(1 / 4)  # 1 class in 1 of 4 bars
    assert one(M.used_pitch_classes, semitone) == pytest.approx(2 / 4)
    assert one(M.pitches_used, octave) == 2 and one(M.pitch_range, octave) == 12 and one(M.pitch_range, semitone) == 1
    assert one(M.pitch_class_entropy, octave) == 0.0 and one(M.pitch_entropy, octave) == 1.0
    assert one(M.pitch_class_entropy, semitone) == 1.0


def test_used_pitch_classes_averages_over_bars():
    x = roll(t=32)
    for p in (60, 64, 67):  # bar 0: C E G
        put(x, p, 0, 4)
    put(x, 48, 16, 20), put(x, 72, 20, 24)  # bar 1: C3, C5
    assert one(M.used_pitch_classes, x) == 2.0  # (3 + 1) / 2


def test_empty_bar_rate_counts_empty_bars():
    x = put(roll(), 60, 2, 6)  # only bar 0 of 4 sounds
    assert one(M.empty_bar_rate, x) == 0.75


def test_qualified_notes_and_polyphony():
    x = roll(t=16)
    put(x, 60, 0, 1), put(x, 62, 2, 3), put(x, 64, 4, 8)  # lengths 1, 1, 4
    assert one(M.qualified_note_rate, x, q=2) == pytest.approx(1 / 3)
    y = roll(t=16)
    for p in (60, 64, 67):
        put(y, p, 0, 4)
    put(y, 72, 8, 12)
    assert one(M.polyphony, y) == pytest.approx(16 / 8)
    assert one(M.polyphony_rate, y, k=2) == pytest.approx(4 / 16)
    assert one(M.polyphony_rate, y, k=1) == pytest.approx(8 / 16)


def test_repeated_notes_in_a_row_are_one_run():
    x = put(roll(t=16), 60, 0, 8)
    assert one(M.qualified_note_rate, x, q=8) == 1.0  # one note of 8 steps, not 8 notes


def test_in_scale_rate_and_scale_consistency():
    x = roll()
    for i, p in enumerate((60, 62, 64, 66)):  # C D E F#
        put(x, p, 4 * i, 4 * i + 2)
    assert one(M.in_scale_rate, x, key="C major") == 0.75
    assert one(M.in_scale_rate, x, key="G major") == 1.0
    assert one(M.in_scale_rate, x, key="E minor") == 1.0
    assert one(M.scale_consistency, x) == 1.0
    chromatic = roll()
    for i in range(12):
        put(chromatic, 60 + i, 4 * i, 4 * i + 1)
    assert one(M.scale_consistency, chromatic) == pytest.approx(7 / 12)


def test_groove_consistency():
    a = roll()
    for bar in range(4):  # four identical bars
        for s in (0, 4, 8, 12):
            put(a, 60, 16 * bar + s, 16 * bar + s + 2)
    assert one(M.groove_consistency, a) == 1.0
    b = roll()
    for bar in range(4):  # alternating: onsets {0,4,8,12} then {0,8}
        for s in ((0, 4, 8, 12) if bar % 2 == 0 else (0, 8)):
            put(b, 60, 16 * bar + s, 16 * bar + s + 2)
    assert one(M.groove_consistency, b) == pytest.approx(1 - 2 / 16)


def test_six_eight_bars_from_the_time_signature():
    assert M.steps_per_bar(6, 8, 4) == 12 and M.steps_per_bar(4, 4, 4) == 16 and M.steps_per_bar(9, 8, 4) == 18
    x = put(roll(t=48), 62, 0, 6)  # only the first 6/8 bar sounds
    assert one(M.empty_bar_rate, x, bar=12) == 0.75  # 4 bars of 12 steps
    assert one(M.empty_bar_rate, x, bar=16) == pytest.approx(2 / 3)  # misread as 4/4
    j = roll(t=48)
    for bar in range(4):
        for s in (0, 3, 6, 8, 10):  # jig rhythm with a dotted eighth: the pattern repeats every 12 steps
            put(j, 62, 12 * bar + s, 12 * bar + s + 1)
    assert one(M.groove_consistency, j, bar=12) == 1.0
    assert one(M.groove_consistency, j, bar=16) < 1.0


def test_tonal_distance():
    x = roll()
    put(x, 72, 0, 4), put(x, 60, 0, 4)  # C over C: the same pitch class
    assert one(M.tonal_distance, x) == pytest.approx(0.0, abs=1e-12)
    y = roll()
    put(y, 66, 0, 4), put(y, 60, 0, 4)  # F# over C, a tritone: fifths and minor-thirds circles opposite
    assert one(M.tonal_distance, y) == pytest.approx(2 * math.sqrt(2))
    z = roll()
    put(z, 66, 0, 4), put(z, 60, 0, 4), put(z, 70, 8, 12)  # beat 2 has no lower voice: left out
    assert one(M.tonal_distance, z) == pytest.approx(2 * math.sqrt(2))
    upper, lower = M.split_voices(put(put(put(roll(), 60, 0, 4), 64, 0, 4), 67, 0, 4))
    assert upper[0].any(axis=1).nonzero()[0].tolist() == [67 - LOW]
    assert sorted(lower[0].any(axis=1).nonzero()[0].tolist()) == [60 - LOW, 64 - LOW]


def test_batch_results_equal_one_roll_at_a_time():
    rng = np.random.default_rng(0)
    x = rng.random((6, 64, 64)) < 0.05
    x[2] = False
    bars = np.array([16, 12, 16, 12, 16, 16])
    batch = M.compute_metrics(x, LOW, 4, bars)
    for i in range(6):
        single = M.compute_metrics(x[i:i + 1], LOW, 4, bars[i])
        for k in M.METRICS:
            np.testing.assert_equal(batch[k][i], single[k][0], err_msg=k)
    assert set(batch) == set(M.METRICS)
