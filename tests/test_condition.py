"""generate --condition: the accompaniment comes back exactly as given, windows start on bar lines, and
the melody stays inside the tune."""
import argparse
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch
from conftest import REPO

from apollogan.cli import UserError
from apollogan.condition import bar_lines, read_condition, window_starts
from apollogan.generate import melody_choice, write_over_condition
from apollogan.midi import MidiError, Track, save_midi, tracks_to_midi
from apollogan.spec import RollSpec

SPEC = RollSpec(parts=2, part_mode="tracks")
CHORDS = REPO / "data" / "nottingham" / "chords"


class Drawer:
    """A stand-in for a trained cond_gan: a melody of random cells, from the generator it is given."""

    name, conditional = "cond_gan", True

    def sample(self, n, gen, real=None, device="cpu"):
        assert real is not None and real.shape[0] == n and not real[:, 0].any()  # the melody is left to draw
        out = real.clone()
        out[:, 0] = (torch.rand(out[:, 0].shape, generator=gen) < 0.03).float()
        return out


def run(cond_file, out, melody="auto", num=1):
    a = argparse.Namespace(condition=Path(cond_file), condition_melody=melody, num=num, out=Path(out), threshold=0.5,
                           bernoulli=False, device="cpu", velocity=90, velocity_std=0.0, png=False)
    assert write_over_condition(a, Drawer(), SPEC, torch.Generator().manual_seed(0), np.random.default_rng(0), [73]) == 0
    return [symusic.Score(str(p)) for p in sorted(Path(out).glob("*.mid"))]


def notes(track) -> np.ndarray:
    n = track.notes.numpy()
    return np.stack([n["time"], n["duration"], n["pitch"], n["velocity"]], 1).astype(np.int64)


def test_every_bundled_chords_file_comes_back_with_every_note_exactly(tmp_path):
    files = sorted(CHORDS.glob("*.mid"))
    assert len(files) > 1000
    total = 0
    for i, f in enumerate(files):
        given = symusic.Score(str(f))
        (made,) = run(f, tmp_path / str(i))
        assert [t.name for t in made.tracks] == ["melody", *[t.name for t in given.tracks]], f
        up = made.ticks_per_quarter // given.ticks_per_quarter
        for g, m in zip(given.tracks, made.tracks[1:]):
            a, b = notes(g), notes(m)
            a[:, :2] *= up
            assert np.array_equal(a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])]), f
            assert m.program == g.program
            total += len(a)
        assert [(t.time * up, t.numerator, t.denominator) for t in given.time_signatures] == \
            [(t.time, t.numerator, t.denominator) for t in made.time_signatures], f
        assert len(made.tracks[0].notes) > 0 and made.tracks[0].program == 73
    assert total > 150_000  # 1,021 files, every note of each


def one_track_tune(path, pickup=False, meters=((0, 4, 4),), tempos=((0, 120.0),), bars=8):
    """One track: a C major chord held each bar of 4/4 (C3 E3 G3) and a melody a step above it at every
    beat (C5, D5, E5, F5 repeated); with a pickup, one melody note on beat 4 of a bar 0 with no chord."""
    tpq, chord, melody = 480, [], []
    start = 1920 if pickup else 0
    for bar in range(bars):
        t0 = start + bar * 1920
        chord += [(p, t0, t0 + 1920) for p in (48, 52, 55)]
        melody += [(72 + (0, 2, 4, 5)[b], t0 + b * 480, t0 + b * 480 + 480) for b in range(4)]
    if pickup:
        melody.append((71, 1440, 1920))
    n = np.array(chord + melody)
    save_midi(tracks_to_midi([Track(n, np.full(len(n), 80), 0, "piano")], tpq, tempo=list(tempos),
                             time_signature=list(meters)), path)
    return len(chord), len(melody)


def test_a_one_track_file_is_the_accompaniment_whole_and_skyline_replaces_its_top_voice(tmp_path):
    n_chord, n_melody = one_track_tune(tmp_path / "tune.mid")
    whole = read_condition(tmp_path / "tune.mid")
    assert whole.replaced == 0 and len(whole.kept[0].notes) == n_chord + n_melody
    assert whole.said.startswith("kept every note as the accompaniment")
    sky = read_condition(tmp_path / "tune.mid", "skyline")
    assert sky.replaced == n_melody and len(sky.kept[0].notes) == n_chord
    assert set(sky.kept[0].notes[:, 0].tolist()) == {48, 52, 55}  # the chords, every one of them
    (made,) = run(tmp_path / "tune.mid", tmp_path / "out", "skyline")
    assert sorted(notes(made.tracks[1])[:, 2].tolist()) == sorted([48, 52, 55] * 8)
    with pytest.raises(MidiError, match=r"track 3: out of range; the file has 1 non-drum track\(s\) with notes \(0 to 0\)"):
        read_condition(tmp_path / "tune.mid", 3)
    with pytest.raises(MidiError, match="no accompaniment left"):
        read_condition(tmp_path / "tune.mid", 0)


def test_windows_start_on_bar_lines_after_a_pickup_and_through_a_change_of_meter(tmp_path):
    meters = ((0, 4, 4), (1920 * 5, 3, 4))  # bars of 4/4, then 3/4 from bar 5 on
    tempos = ((0, 100.0), (1920 * 3, 140.0))
    one_track_tune(tmp_path / "tune.mid", pickup=True, meters=meters, tempos=tempos, bars=24)
    cond = read_condition(tmp_path / "tune.mid")
    assert cond.downbeat == 1920  # the pickup (one note on beat 4 of bar 0) comes before the first downbeat
    bars = bar_lines(cond.time_signature, cond.tpq, cond.end)
    assert 1920 * 5 + 1440 in bars and 1920 * 5 + 1920 not in bars  # a 3/4 bar after the change
    starts = window_starts(cond, SPEC)
    assert starts[0] == 1920 and all(s in bars for s in starts) and len(starts) >= 2
    # a window is 256 steps: 64 beats, 30,720 ticks at 480 per beat; each next one starts on the last bar line in it
    assert all(0 < b - a <= 30_720 and not ((bars > b) & (bars <= a + 30_720)).any() for a, b in zip(starts, starts[1:]))
    (made,) = run(tmp_path / "tune.mid", tmp_path / "out", num=1)
    assert [(t.time, round(t.qpm, 3)) for t in made.tempos] == [(0, 100.0), (1920 * 3, 140.0)]
    assert [(t.time, t.numerator, t.denominator) for t in made.time_signatures] == [(0, 4, 4), (1920 * 5, 3, 4)]
    mel = notes(made.tracks[0])
    assert (mel[:, 0] >= cond.downbeat).all() and (mel[:, 0] + mel[:, 1] <= cond.end).all()  # inside the tune
    given = notes(symusic.Score(str(tmp_path / "tune.mid")).tracks[0])
    assert np.array_equal(np.sort(notes(made.tracks[1]), axis=0), np.sort(given, axis=0))  # the pickup note too


def test_files_with_nothing_to_draw_over_are_one_line(tmp_path):
    empty = tmp_path / "empty.mid"
    save_midi(tracks_to_midi([Track(np.zeros((0, 3), np.int64), np.zeros(0), 0, "x")], 480), empty)
    with pytest.raises(MidiError, match="^no notes$"):
        read_condition(empty)
    drums = tmp_path / "drums.mid"
    save_midi(tracks_to_midi([Track(np.array([[36, 0, 240], [38, 480, 720]]), np.full(2, 90), 0, "kit", drum=True)], 480),
              drums)
    with pytest.raises(MidiError, match="only drum tracks"):
        read_condition(drums)
    short = tmp_path / "short.mid"
    save_midi(tracks_to_midi([Track(np.array([[60, 0, 480], [64, 0, 480]]), np.full(2, 90), 0, "x")], 480), short)
    with pytest.raises(MidiError, match="shorter than one bar"):
        read_condition(short)
    with pytest.raises(UserError, match=r"--condition-melody track x: one of auto, none, skyline or track N"):
        melody_choice(["track", "x"])
    assert melody_choice(["track", "2"]) == 2 and melody_choice(["skyline"]) == "skyline"
