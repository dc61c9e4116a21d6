"""Roll pictures with known answers: bar lines and beats from the meter, C lines, onsets, parts, colours."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, scale_tune, write_midi
from PIL import Image

from apollogan.images import (
    BAR_LINE,
    BEAT_TICK,
    C_LINE,
    LABEL_WIDTH,
    NOTE,
    ONSET,
    PART_COLOURS,
    colour_map,
    draw_roll,
    draw_rolls,
    meter_steps,
)

ROW = 2 * (63 - (61 - 30))  # the top pixel line of C#4 (y-scale 2): no C line, no beat tick, no note


def columns_with(img, row, colour):
    return set(np.nonzero(np.all(img[row] == colour, axis=-1))[0].tolist())


def fixture(onset=False):
    roll = np.zeros((2 if onset else 1, 64, 256), bool)
    roll[0, 40, 0:8] = True  # MIDI 70 for steps 0-7
    if onset:
        roll[1, 40, 0] = roll[1, 40, 4] = True  # struck twice
    return roll


def test_meters_in_steps():
    assert meter_steps(4, 4, 4) == (16, 4) and meter_steps(6, 8, 4) == (12, 6) and meter_steps(3, 4, 4) == (12, 4)
    assert meter_steps(3, 8, 4) == (6, 2) and meter_steps(9, 8, 4) == (18, 6) and meter_steps(4, 4, 8) == (32, 8)


def test_bar_lines_and_beats_follow_the_meter():
    four = draw_roll(fixture(), meter=(4, 4), x_scale=2, labels=False)
    six = draw_roll(fixture(), meter=(6, 8), x_scale=2, labels=False)
    assert four.shape == (128, 512, 3)
    assert columns_with(four, ROW, BAR_LINE) == {2 * s for s in range(16, 256, 16)}  # 4/4: every 16 steps
    assert columns_with(six, ROW, BAR_LINE) == {2 * s for s in range(12, 256, 12)}  # 6/8: every 12 steps
    # beats: quarters in 4/4, dotted quarters in 6/8 (so 6/8 and 3/4 differ), none on a bar line
    assert columns_with(four, 0, BEAT_TICK) == {2 * s for s in range(4, 256, 4) if s % 16}
    assert columns_with(six, 0, BEAT_TICK) == {2 * s for s in range(6, 256, 12)}
    three = draw_roll(fixture(), meter=(3, 4), x_scale=2, labels=False)
    assert columns_with(three, 0, BEAT_TICK) == {2 * s for s in range(4, 256, 4) if s % 12}
    labelled = draw_roll(fixture(), meter=(4, 4), x_scale=2)
    assert columns_with(labelled, ROW, BAR_LINE) == {LABEL_WIDTH + 2 * s for s in range(16, 256, 16)}


def test_a_window_shifted_from_its_bar_line_has_its_bar_lines_moved():
    late = draw_roll(fixture(), meter=(4, 4), shift=6, labels=False)  # starts 6 steps after a bar line
    assert columns_with(late, ROW, BAR_LINE) == set(range(10, 256, 16))
    early = draw_roll(fixture(), meter=(4, 4), shift=-1, labels=False)  # starts a step before one
    assert columns_with(early, ROW, BAR_LINE) == set(range(1, 256, 16))


def test_c_lines_notes_onsets_and_labels():
    img = draw_roll(fixture(onset=True), labels=False)  # y_scale 2, x_scale 1
    c_rows = {y for y in range(128) if np.all(img[y, 1] == C_LINE)}
    # MIDI 36, 48, 60, 72, 84 are rows 6, 18, 30, 42, 54 from the bottom: their lowest pixel lines
    assert c_rows == {2 * (63 - (c - 30)) + 1 for c in (36, 48, 60, 72, 84)}
    top = 2 * (63 - 40)
    assert np.all(img[top, 0] == ONSET) and np.all(img[top, 4] == ONSET)
    assert np.all(img[top, 1] == NOTE) and np.all(img[top, 7] == NOTE) and not np.all(img[top, 8] == NOTE)
    labelled = draw_roll(fixture(), meter=(4, 4))
    margin = labelled[:, :LABEL_WIDTH].any(axis=(1, 2))  # rows with label ink
    c4 = 2 * (63 - (60 - 30)) + 1
    assert margin[c4 - 6: c4].any() and not margin[c4 + 1: c4 + 6].any()  # C4's name sits just above its line


def test_probabilities_use_a_colour_map_and_binary_rolls_stay_two_tone():
    assert not np.array_equal(colour_map(0.4), colour_map(0.6))
    probs = np.zeros((1, 64, 256))
    probs[0, 40, 0], probs[0, 40, 1] = 0.4, 0.6
    img = draw_roll(probs, labels=False)
    top = 2 * (63 - 40)
    assert np.array_equal(img[top, 0], colour_map(0.4)) and np.array_equal(img[top, 1], colour_map(0.6))
    binary = draw_roll(fixture(), labels=False)
    notes = {tuple(c) for c in binary.reshape(-1, 3)} - {tuple(BAR_LINE), tuple(BEAT_TICK), tuple(C_LINE), (0, 0, 0)}
    assert notes == {tuple(NOTE)}


def test_each_part_has_its_colour():
    roll = np.zeros((4, 64, 256), bool)  # two parts, each sustain + onset
    roll[0, 50, 0:4] = roll[1, 50, 0] = True  # melody: MIDI 80
    roll[2, 20, 0:8] = roll[3, 20, 0] = True  # accompaniment: MIDI 50
    img = draw_roll(roll, parts=2, labels=False)
    mel, acc = 2 * (63 - 50), 2 * (63 - 20)
    assert np.all(img[mel, 2] == PART_COLOURS[0]) and np.all(img[acc, 2] == PART_COLOURS[1])
    assert np.all(img[mel, 0] == ONSET) and np.all(img[acc, 0] == ONSET)
    with pytest.raises(ValueError, match="cannot hold 2 part"):
        draw_roll(np.zeros((1, 64, 256), bool), parts=2)
    with pytest.raises(ValueError, match="no rolls"):
        draw_rolls(np.zeros((0, 1, 64, 256), bool))


def test_decode_draws_each_window_in_its_meter_and_pitch_window(tmp_path):
    from apollogan.cli import find_midi_files
    from apollogan.data import WindowOptions, preprocess
    from apollogan.shards import ShardSet
    from apollogan.spec import RollSpec

    d = tmp_path / "midi"
    d.mkdir()
    write_midi(d / "jig.mid", scale_tune(120, base=60), time_signature=(6, 8))
    spec = RollSpec(low=36, onset=True)
    preprocess(find_midi_files([d]), tmp_path / "c", spec, WindowOptions(val_fraction=0, time_shifts=(3,)),
               progress=False)
    shards = ShardSet(tmp_path / "c")
    i = int(np.nonzero(shards.records["shift"] == 3)[0][0])  # a window 3 steps after a bar line
    r = subprocess.run([sys.executable, "-m", "apollogan.decode", str(tmp_path / "c"), "--out", str(tmp_path / "d"),
                        "--index", str(i), "--png"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    expected = draw_rolls(shards.get([i]), nrow=1, meter=(6, 8), shift=3, low=36)
    got = np.asarray(Image.open(tmp_path / "d" / f"train-{i:06d}.png").convert("RGB"))
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, draw_rolls(shards.get([i]), nrow=1, meter=(4, 4), low=36))
