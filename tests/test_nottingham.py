"""Round trip of the real bundled tunes: MIDI -> windows -> MIDI, scored note by note."""
import sys

import pytest
from conftest import NOTTINGHAM, REPO

from apollogan.cli import find_midi_files
from apollogan.data import WindowOptions
from apollogan.spec import RollSpec

sys.path.insert(0, str(REPO / "scripts"))
from codec_report import grid_table, roundtrip_scores  # noqa: E402

FILES = find_midi_files([NOTTINGHAM])


def test_bundled_data_is_complete():
    assert len(FILES) == 1034
    assert len(find_midi_files([REPO / "data/nottingham/melody"])) == 1034
    assert len(find_midi_files([REPO / "data/nottingham/chords"])) == 1021


@pytest.mark.slow
def test_onset_channel_round_trip_is_lossless_and_sustain_alone_is_not():
    onset = roundtrip_scores(FILES, RollSpec(onset=True), WindowOptions(), progress=False)
    sustain = roundtrip_scores(FILES, RollSpec(onset=False), WindowOptions(), progress=False)
    print(f"\nround trip over {onset['notes']} notes: onset+sustain P={onset['precision']:.4f} "
          f"R={onset['recall']:.4f}; sustain P={sustain['precision']:.4f} R={sustain['recall']:.4f}")
    assert onset["notes"] > 350_000
    assert onset["precision"] > 0.999 and onset["recall"] > 0.999
    # without onsets, repeated notes of one pitch merge: fewer, longer notes come back
    assert 0.6 < sustain["recall"] < 0.8 and sustain["precision"] > 0.8


def test_four_steps_per_beat_is_where_the_grid_stops_improving():
    table = {g: on for g, on, _ in grid_table(FILES[::4], [2, 4, 8])}
    assert table[2] > 2 * table[4]
    assert table[4] - table[8] < 0.001
