"""Fixtures built by the tests themselves: small MIDI files written with plain mido."""
from __future__ import annotations

from pathlib import Path

import mido
import pytest

from apollogan.cli import find_midi_files
from apollogan.data import WindowOptions, preprocess
from apollogan.spec import RollSpec

REPO = Path(__file__).resolve().parent.parent
NOTTINGHAM = REPO / "data" / "nottingham" / "full"


def write_midi(path, notes, *, tpq=1024, time_signature=(4, 4), tempos=((0, 120),), drums=(), fmt=1):
    """notes: (pitch, start_beat, end_beat) on channel 0; drums: the same on channel 9 (own track).

    tempos: (beat, bpm) pairs; every change lands in the conductor track.
    """
    mid = mido.MidiFile(type=fmt, ticks_per_beat=tpq)
    meta = [(int(b * tpq), mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))) for b, bpm in tempos]
    meta.append((0, mido.MetaMessage("time_signature", numerator=time_signature[0], denominator=time_signature[1])))
    mid.tracks.append(_track(meta))
    for ch, group in ((0, notes), (9, drums)):
        if group:
            ev = []
            for p, s, e in group:
                ev.append((int(round(e * tpq)), mido.Message("note_off", note=p, velocity=0, channel=ch)))
                ev.append((int(round(s * tpq)), mido.Message("note_on", note=p, velocity=80, channel=ch)))
            mid.tracks.append(_track(ev))
    mid.save(str(path))
    return Path(path)


def _track(events):
    # stable sort by time keeps note_off (listed first) before note_on at the same tick
    tr = mido.MidiTrack()
    now = 0
    for t, msg in sorted(events, key=lambda x: x[0]):
        tr.append(msg.copy(time=t - now))
        now = t
    tr.append(mido.MetaMessage("end_of_track", time=0))
    return tr


def scale_tune(n_beats=80, base=60):
    """A C-major line of quarter notes with a held bass note per bar: enough to fill windows."""
    steps = [0, 2, 4, 5, 7, 9, 11, 12]
    melody = [(base + steps[i % 8], i, i + 1) for i in range(n_beats)]
    bass = [(base - 24 + (b // 4) % 5, b, b + 4) for b in range(0, n_beats, 4)]
    return melody + bass


@pytest.fixture
def midi_dir(tmp_path):
    """Six small good files with different names, so both splits can get some."""
    d = tmp_path / "midi"
    d.mkdir()
    for i in range(6):
        write_midi(d / f"tune{i}.mid", scale_tune(80 + 16 * i, base=55 + i))
    return d


@pytest.fixture(scope="session")
def chunks(tmp_path_factory):
    """Shards of the first 40 bundled tunes, a window every 64 steps, 20% of the files for validation."""
    out = tmp_path_factory.mktemp("chunks")
    preprocess(find_midi_files([NOTTINGHAM])[:40], out, RollSpec(), WindowOptions(hop=64, val_fraction=0.2),
               progress=False)
    return out


@pytest.fixture(scope="session")
def parts_chunks(tmp_path_factory):
    """The same tunes with their two tracks as parts: melody (part 0) and chords (part 1)."""
    out = tmp_path_factory.mktemp("parts_chunks")
    preprocess(find_midi_files([NOTTINGHAM])[:40], out, RollSpec(parts=2, part_mode="tracks"),
               WindowOptions(hop=64, val_fraction=0.2), progress=False)
    return out
