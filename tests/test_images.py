"""Roll pictures with known answers: bar lines from the meter, C lines, onsets, the colour map."""
import numpy as np
from PIL import Image

from apollogan.images import BAR_LINE, BEAT_TICK, C_LINE, LABEL_WIDTH, NOTE, ONSET, colour_map, draw_roll, draw_rolls


def columns_with(img, row, colour):
    return set(np.nonzero(np.all(img[row] == colour, axis=-1))[0].tolist())


def fixture(onset=False):
    roll = np.zeros((2 if onset else 1, 64, 256), bool)
    roll[0, 40, 0:8] = True  # MIDI 70 for steps 0-7
    if onset:
        roll[1, 40, 0] = roll[1, 40, 4] = True  # struck twice
        roll[0, 40, 4:8] = True
    return roll


def test_bar_lines_follow_the_meter():
    row = 2 * (63 - (61 - 30))  # the top pixel line of C#4: no C line, no beat tick, no note
    four = draw_roll(fixture(), bar=16, x_scale=2, labels=False)
    six = draw_roll(fixture(), bar=12, x_scale=2, labels=False)
    assert four.shape == (128, 512, 3)
    assert columns_with(four, row, BAR_LINE) == {2 * s for s in range(16, 256, 16)}  # 4/4: every 16 steps
    assert columns_with(six, row, BAR_LINE) == {2 * s for s in range(12, 256, 12)}  # 6/8: every 12 steps
    assert 2 * 12 not in columns_with(four, row, BAR_LINE) and 2 * 16 not in columns_with(six, row, BAR_LINE)
    # beat ticks at the top edge every 4 steps that is no bar line
    assert columns_with(four, 0, BEAT_TICK) == {2 * s for s in range(4, 256, 4) if s % 16}
    labelled = draw_roll(fixture(), bar=16, x_scale=2)
    assert columns_with(labelled, row, BAR_LINE) == {LABEL_WIDTH + 2 * s for s in range(16, 256, 16)}


def test_c_lines_notes_and_onsets():
    img = draw_roll(fixture(onset=True), labels=False)  # y_scale 2, x_scale 1
    c_rows = {y for y in range(128) if np.all(img[y, 1] == C_LINE)}
    # MIDI 36, 48, 60, 72, 84 are rows 6, 18, 30, 42, 54 from the bottom: their lowest pixel lines
    assert c_rows == {2 * (63 - (c - 30)) + 1 for c in (36, 48, 60, 72, 84)}
    top = 2 * (63 - 40)
    assert np.all(img[top, 0] == ONSET) and np.all(img[top, 4] == ONSET)
    assert np.all(img[top, 1] == NOTE) and np.all(img[top, 7] == NOTE) and not np.all(img[top, 8] == NOTE)


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


def test_decode_and_generate_pictures_are_the_same_drawing(midi_dir, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    from apollogan.cli import find_midi_files
    from apollogan.preprocess import WindowOptions, preprocess
    from apollogan.shards import ShardSet
    from apollogan.spec import RollSpec

    preprocess(find_midi_files([midi_dir]), tmp_path / "c", RollSpec(onset=True), WindowOptions(val_fraction=0),
               progress=False)
    r = subprocess.run([sys.executable, "-m", "apollogan.decode", str(tmp_path / "c"), "--out", str(tmp_path / "d"),
                        "--index", "1", "--png"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    shards = ShardSet(tmp_path / "c")
    expected = draw_rolls(shards.get([1]), nrow=1, bar=16)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d" / "train-000001.png").convert("RGB")), expected)


def test_each_part_has_its_colour():
    from apollogan.images import PART_COLOURS

    roll = np.zeros((4, 64, 256), bool)  # two parts, each sustain + onset
    roll[0, 50, 0:4] = roll[1, 50, 0] = True  # melody: MIDI 80
    roll[2, 20, 0:8] = roll[3, 20, 0] = True  # accompaniment: MIDI 50
    img = draw_roll(roll, parts=2, labels=False)
    mel, acc = 2 * (63 - 50), 2 * (63 - 20)
    assert np.all(img[mel, 2] == PART_COLOURS[0]) and np.all(img[acc, 2] == PART_COLOURS[1])
    assert np.all(img[mel, 0] == ONSET) and np.all(img[acc, 0] == ONSET)
    assert not np.array_equal(PART_COLOURS[0], PART_COLOURS[1])
