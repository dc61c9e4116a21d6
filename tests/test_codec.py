"""The MIDI <-> roll codec: exact round trips on on-grid music, and its documented losses."""
import io

import numpy as np
import pytest
from conftest import write_midi

from apollogan.data import window_starts
from apollogan.midi import (
    MidiError,
    Song,
    binarize,
    key_shift,
    notes_to_midi,
    notes_to_roll,
    read_song,
    roll_to_notes,
    save_midi,
    transpose_song,
)
from apollogan.spec import RollSpec

SPEC = RollSpec()
ONSET = RollSpec(onset=True)


def as_mido(score):
    """A written file as mido reads it: the independent check of our writer."""
    import mido

    return mido.MidiFile(file=io.BytesIO(score.dumps_midi()))


def events(track):
    """(absolute tick, message) of a mido track."""
    now, out = 0, []
    for m in track:
        now += m.time
        out.append((now, m))
    return out


def roundtrip(tmp_path, notes_steps, spec, **kw):
    """notes -> MIDI file -> song -> roll -> notes."""
    path = tmp_path / "rt.mid"
    save_midi(notes_to_midi(notes_steps, spec, **kw), path)
    song = read_song(path, spec)
    return song, notes_to_roll(song.notes, max(song.steps, spec.steps), spec)


def as_set(notes):
    return sorted(map(tuple, np.asarray(notes).tolist()))


def test_quarter_notes_land_on_beats(tmp_path):
    path = write_midi(tmp_path / "a.mid", [(60, 0, 1), (64, 2, 3.5)])
    song = read_song(path, SPEC)
    assert as_set(song.notes) == [(60, 0, 4), (64, 8, 14)]
    roll = notes_to_roll(song.notes, 256, SPEC)
    assert roll.shape == (1, 64, 256)
    assert roll[0, 60 - 30, 0:4].all() and not roll[0, 60 - 30, 4]
    assert roll[0, 64 - 30, 8:14].all() and roll.sum() == 4 + 6


def test_exact_roundtrip_with_chords_and_onsets(tmp_path):
    # a chord, a held note, and three repeated C5s that touch each other
    notes = np.array([[60, 0, 8], [64, 0, 8], [67, 0, 8], [48, 0, 32],
                      [72, 8, 12], [72, 12, 16], [72, 16, 20], [71, 20, 21]])
    song, roll = roundtrip(tmp_path, notes, ONSET)
    assert as_set(song.notes) == as_set(notes)
    back = roll_to_notes(roll, ONSET)
    assert as_set(back) == as_set(notes)
    song2, roll2 = roundtrip(tmp_path, back, ONSET)
    assert np.array_equal(roll2, roll)


def test_without_onset_channel_repeated_notes_merge(tmp_path):
    notes = np.array([[72, 8, 12], [72, 12, 16], [60, 0, 4]])
    roll = notes_to_roll(notes, 256, SPEC)
    assert as_set(roll_to_notes(roll, SPEC)) == [(60, 0, 4), (72, 8, 16)]
    roll_on = notes_to_roll(notes, 256, ONSET)
    assert as_set(roll_to_notes(roll_on, ONSET)) == as_set(notes)


def test_held_note_is_one_midi_note(tmp_path):
    mid = as_mido(notes_to_midi(np.array([[60, 0, 64]]), SPEC))
    ev = [(t, m.type) for t, m in events(mid.tracks[0]) if m.type in ("note_on", "note_off")]
    assert ev == [(0, "note_on"), (64 * (480 // 4), "note_off")]


def test_six_eight_uses_quarter_note_beats_and_bar_lines(tmp_path):
    # jig rhythm: eighth notes (half beats); a 6/8 bar is 3 quarter notes = 12 steps
    notes = [(62 + (i % 3), i * 0.5, i * 0.5 + 0.5) for i in range(6 * 40)]
    path = write_midi(tmp_path / "jig.mid", notes, time_signature=(6, 8))
    song = read_song(path, SPEC)
    assert song.steps == 6 * 40 * 2
    assert as_set(song.notes)[:2] == [(62, 0, 2), (62, 6, 8)]
    assert np.array_equal(song.downbeats[:4], [0, 12, 24, 36])
    assert song.time_signature_at(np.array([0, 100])).tolist() == [[6, 8], [6, 8]]
    starts = window_starts(song, song.steps, SPEC, hop=128)
    assert (starts % 12 == 0).all() and starts[1] == 132  # first bar line at or after step 128


def test_tempo_change_does_not_move_notes(tmp_path):
    notes = [(60, b, b + 1) for b in range(16)]
    a = read_song(write_midi(tmp_path / "a.mid", notes), SPEC)
    b = read_song(write_midi(tmp_path / "b.mid", notes, tempos=((0, 90), (4, 180), (9, 60))), SPEC)
    assert np.array_equal(a.notes, b.notes)
    assert b.tempo == pytest.approx(90.0)


def test_ticks_per_beat_is_respected(tmp_path):
    notes = [(60, 1, 2), (62, 2.25, 3)]
    for tpq in (96, 480, 1024):
        song = read_song(write_midi(tmp_path / f"t{tpq}.mid", notes, tpq=tpq), SPEC)
        assert as_set(song.notes) == [(60, 4, 8), (62, 9, 12)]


def test_drums_are_excluded(tmp_path):
    path = write_midi(tmp_path / "d.mid", [(60, 0, 1)], drums=[(38, 0, 1), (36, 1, 2)])
    assert as_set(read_song(path, SPEC).notes) == [(60, 0, 4)]


def test_out_of_range_drop_is_counted_and_fold_moves_octaves(tmp_path):
    path = write_midi(tmp_path / "r.mid", [(20, 0, 1), (60, 1, 2), (100, 2, 3)])
    dropped = read_song(path, SPEC)
    assert as_set(dropped.notes) == [(60, 4, 8)]
    assert dropped.stats["notes_dropped_pitch"] == 2 and dropped.stats["notes_folded"] == 0
    folded = read_song(path, RollSpec(out_of_range="fold"))
    assert as_set(folded.notes) == [(32, 0, 4), (60, 4, 8), (88, 8, 12)]  # 20+12, 100-12
    assert folded.stats["notes_folded"] == 2 and folded.stats["notes_dropped_pitch"] == 0


def test_off_grid_notes_are_counted_and_kept(tmp_path):
    path = write_midi(tmp_path / "g.mid", [(60, 0, 1), (62, 1 + 1 / 3, 2), (64, 3, 3.01)], tpq=960)
    song = read_song(path, SPEC)
    assert song.stats["onsets_off_grid"] == 1 and song.stats["offsets_off_grid"] == 1
    assert as_set(song.notes) == [(60, 0, 4), (62, 5, 8), (64, 12, 13)]  # a tiny note keeps one step


def test_binarize_threshold_and_bernoulli():
    p = np.array([[0.2, 0.5, 0.9]])
    assert binarize(p, 0.5).tolist() == [[False, True, True]]
    draws = binarize(np.full((200, 200), 0.25), rng=np.random.default_rng(0))
    assert 0.23 < draws.mean() < 0.27


def test_gaussian_velocity_and_program(tmp_path):
    notes = np.array([[60 + i % 12, i, i + 1] for i in range(400)])
    mid = as_mido(notes_to_midi(notes, SPEC, velocity=80, velocity_std=10, program=40, rng=np.random.default_rng(1)))
    vel = np.array([m.velocity for m in mid.tracks[0] if m.type == "note_on"])
    assert 77 < vel.mean() < 83 and 8 < vel.std() < 12
    assert [m.program for m in mid.tracks[0] if m.type == "program_change"] == [40]
    const = as_mido(notes_to_midi(notes[:5], SPEC, velocity=64))
    assert {m.velocity for m in const.tracks[0] if m.type == "note_on"} == {64}


def test_decoded_midi_parses_in_mido(tmp_path):
    import mido

    mid = as_mido(notes_to_midi(np.array([[60, 0, 4]]), SPEC, tempo=100))
    assert any(m.type == "set_tempo" and round(mido.tempo2bpm(m.tempo)) == 100 for m in mid.tracks[0])


def test_writer_matches_what_mido_reads_back(tmp_path):
    """Every field the writer sets, read back by mido: notes (a repeated note released before it is
    struck again), velocities, programs, channels skipping the drum channel, names, tempo and meter
    changes."""
    import mido

    from apollogan.midi import Track, tracks_to_midi

    tracks = [Track(np.array([[72, 0, 120], [72, 120, 240], [76, 240, 480]]), np.array([100, 60, 30]), 73, "melody")]
    tracks += [Track(np.array([[40 + k, 0, 960]]), np.array([50 + k]), k, f"t{k}") for k in range(1, 10)]
    path = tmp_path / "w.mid"
    save_midi(tracks_to_midi(tracks, 480, tempo=[(0, 100.0), (480, 150.0)], time_signature=[(0, 6, 8), (960, 3, 4)]),
              path)
    mid = mido.MidiFile(str(path))
    assert mid.type == 1 and mid.ticks_per_beat == 480 and len(mid.tracks) == 10
    first = events(mid.tracks[0])
    assert [(t, round(mido.tempo2bpm(m.tempo), 3)) for t, m in first if m.type == "set_tempo"] == [(0, 100.0), (480, 150.0)]
    assert [(t, m.numerator, m.denominator) for t, m in first if m.type == "time_signature"] == [(0, 6, 8), (960, 3, 4)]
    notes = [(t, m.type, m.note, m.velocity) for t, m in first if m.type in ("note_on", "note_off")]
    on = [(t, p, v) for t, kind, p, v in notes if kind == "note_on" and v > 0]
    assert on == [(0, 72, 100), (120, 72, 60), (240, 76, 30)]
    at120 = [kind for t, kind, p, v in notes if t == 120 and p == 72]
    assert at120 == ["note_off", "note_on"]  # released, then struck again
    assert [m.name for m in mid.tracks] == ["melody"] + [f"t{k}" for k in range(1, 10)]
    programs = [[m.program for m in tr if m.type == "program_change"] for tr in mid.tracks]
    assert programs == [[73]] + [[k] for k in range(1, 10)]
    channels = [{m.channel for m in tr if m.type == "note_on"} for tr in mid.tracks]
    assert channels == [{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {10}]  # channel 10 (index 9) is the drums
    vel = [[m.velocity for m in tr if m.type == "note_on"] for tr in mid.tracks[1:]]
    assert vel == [[50 + k] for k in range(1, 10)]


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError):
        RollSpec(low=100, pitches=64)
    with pytest.raises(ValueError):
        RollSpec(out_of_range="wrap")
    assert RollSpec.from_dict(ONSET.to_dict()) == ONSET
    assert ONSET.shape == (2, 64, 256) and SPEC.shape == (1, 64, 256)


def test_read_song_raises_midierror_on_garbage(tmp_path):
    p = tmp_path / "x.mid"
    p.write_bytes(b"hello")
    with pytest.raises(MidiError, match="not a MIDI file"):
        read_song(p, SPEC)


def test_synth_renders_notes_and_silence():
    from apollogan.audio import synth, to_wav_bytes

    wave = synth(np.array([[69, 0, 4]]), SPEC, tempo=120, sample_rate=8000)
    assert len(wave) == int((256 * 0.125 + 0.3) * 8000) + 1  # at least a window long
    head = wave[: int(0.5 * 8000)]
    assert np.abs(head).max() == pytest.approx(0.8, rel=1e-3) and np.abs(wave[-2000:]).max() == 0
    # A4: the strongest frequency of the first half second is 440 Hz
    spectrum = np.abs(np.fft.rfft(head))
    assert abs(np.fft.rfftfreq(len(head), 1 / 8000)[spectrum.argmax()] - 440) < 3
    silent = synth(np.zeros((0, 3), int), SPEC, sample_rate=8000)
    assert np.abs(silent).max() == 0
    assert to_wav_bytes(wave, 8000)[:4] == b"RIFF"


def _line(pitches, lengths=None):
    """Notes (pitch, start, end) one after another, each ``lengths[i]`` steps (default 1)."""
    lengths = lengths or [1] * len(pitches)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.array([(p, s, s + n) for p, s, n in zip(pitches, starts, lengths)], np.int64).reshape(-1, 3)


def test_key_shift_puts_the_most_note_time_on_the_white_keys():
    d_major = [62, 64, 66, 67, 69, 71, 73]  # D E F# G A B C#
    e_minor = [64, 66, 67, 69, 71, 72, 74]  # E F# G A B C D
    assert key_shift(_line(d_major)) == -2  # to C major
    assert key_shift(_line(e_minor)) == 5  # to A minor, not down 7
    assert key_shift(_line([60, 62, 64, 65, 67, 69, 71])) == 0  # already there
    assert key_shift(_line([61])) == -1  # a lone C#: every shift that lands it on a white key ties; the smallest wins
    assert key_shift(np.zeros((0, 3), np.int64)) == 0
    # D major plus a C natural: held 3 steps it outweighs the C# (G major, up 5); held 1 step the two tie
    # (7 steps either way) and the smaller shift wins
    assert key_shift(_line(d_major + [60], [1] * 7 + [3])) == 5
    assert key_shift(_line(d_major + [60], [1] * 7 + [1])) == -2


def test_transpose_song_applies_the_out_of_range_rule_again_and_counts_it():
    notes = np.array([(40, 0, 4), (92, 0, 4), (60, 4, 8)], np.int64)
    song = Song(notes, 8, np.array([0]), np.zeros((0, 3), np.int64), 120.0,
                {"notes": 3, "notes_dropped_pitch": 1, "notes_folded": 0}, part=np.array([0, 1, 1]))
    up = transpose_song(song, 3, RollSpec())  # window 30..93: 92 + 3 leaves it
    assert up.notes.tolist() == [[43, 0, 4], [63, 4, 8]] and up.part.tolist() == [0, 1]
    assert up.stats["notes_dropped_pitch"] == 2 and song.notes[1, 0] == 92  # the input is left as it was
    folded = transpose_song(song, 3, RollSpec(out_of_range="fold"))
    assert folded.notes[:, 0].tolist() == [43, 83, 63] and folded.stats["notes_folded"] == 1
    assert transpose_song(song, 0, RollSpec()) is song
