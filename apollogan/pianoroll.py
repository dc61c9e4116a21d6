"""pypianoroll Multitrack .npz files in and out: the format of the Lakh Pianoroll Dataset
(LPD-5, LPD-17) and of MuseGAN's data.

Reading goes through ``pypianoroll.load`` and then the same grid, part and bad-input rules as
MIDI (midi.build_song), so an .npz file and the MIDI file it came from give the same windows.
pypianoroll's own MIDI reader and writer are not used: the reader puts 6/8 beats on the
wrong grid and ``write()`` fails on current numpy (docs/data.md).

What the format cannot hold, and what that costs:
- time signatures: only bar lines (the ``downbeat`` array). The meter of each bar is taken
  from its length: 3 beats read as 3/4, so a 6/8 tune comes back as 3/4 with the same bars.
  After the last bar line given, bars go on at the last bar's length (complete_bars);
- note boundaries inside a run: a pitch held over consecutive steps is one note, so two
  repeated notes with no gap between them merge (the onset channel cannot be rebuilt);
- velocities, in binary tracks.

pypianoroll (and scipy under it) is imported only when an .npz file is read or written: it
takes about a second.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .midi import DEFAULT_MAX_BEATS, MidiError, Song, SourceTrack, build_song, check_length, check_regular
from .spec import RollSpec

NPZ_SUFFIX = ".npz"


def roll_notes(pianoroll: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pianoroll [T, 128] (velocities, booleans or floats) -> (pitch, first step, end step) of
    every run of non-zero cells, pitch by pitch."""
    on = np.asarray(pianoroll) > 0
    edge = np.zeros((on.shape[0] + 1, on.shape[1]), np.int8)
    edge[:-1] += on
    edge[1:] -= on
    sp, st = np.nonzero((edge == 1).T)  # pitch-major, so the k-th start pairs with the k-th end
    _, en = np.nonzero((edge == -1).T)
    return sp.astype(np.int64), st.astype(np.int64), en.astype(np.int64)


def complete_bars(downbeats: np.ndarray, length: int, resolution: int) -> np.ndarray:
    """Bar lines to the end of a file of ``length`` steps: after the last one given they go on at the
    last bar's length (4 beats when only one is given). pypianoroll's MIDI reader marks bar lines
    in every meter segment but the last, so a one-meter file has a single bar line at 0."""
    downbeats = np.asarray(downbeats, np.int64)
    if len(downbeats) == 0:
        return downbeats
    bar = int(downbeats[-1] - downbeats[-2]) if len(downbeats) >= 2 else 4 * resolution
    return np.concatenate([downbeats, np.arange(downbeats[-1] + bar, length + 1, bar)])


def meters_from_bars(downbeats: np.ndarray, resolution: int) -> np.ndarray:
    """[K, 3] (step, numerator, denominator) from bar lines: each bar's meter from its length in
    beats (4 beats: 4/4, 3: 3/4, 3.5: 7/8), one entry where it changes. Empty without two bar lines."""
    downbeats = np.asarray(downbeats, np.int64)
    if len(downbeats) < 2:
        return np.zeros((0, 3), np.int64)
    rows = []
    for at, length in zip(downbeats[:-1], np.diff(downbeats)):
        den = next((d for d in (4, 8, 16) if (length * d) % (4 * resolution) == 0), None)
        if den is None:  # a bar that is no whole number of sixteenths keeps the meter before it
            continue
        meter = (int(length * den // (4 * resolution)), den)
        if not rows or rows[-1][1:] != meter:
            rows.append((0 if not rows else int(at), *meter))
    return np.array(rows, np.int64).reshape(-1, 3)


def _load(path, max_beats: int):
    try:
        with open(path, "rb") as f:
            f.read(4)
    except OSError as e:
        raise MidiError(f"unreadable: {e.strerror or e}") from None
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it
        raise MidiError("not a pianoroll .npz file (not a zip archive)")
    _check_length(path, max_beats)
    import pypianoroll

    try:
        return pypianoroll.load(path)
    except zipfile.BadZipFile:
        raise MidiError("not a pianoroll .npz file (not a zip archive)") from None
    except OSError as e:
        raise MidiError(f"unreadable: {e.strerror or e}") from None
    except RuntimeError as e:  # pypianoroll: no info.json, no resolution
        raise MidiError(f"not a pypianoroll Multitrack file: {e}") from None
    except Exception as e:  # missing arrays, bad shapes, broken JSON inside the archive
        raise MidiError(f"corrupt .npz: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _check_length(path, max_beats: int) -> None:
    """Refuse an absurdly long file from the stored shapes, before its rolls are expanded in memory."""
    try:
        with np.load(path) as z:
            info = json.loads(z["info.json"].decode("utf-8")) if "info.json" in z else {}
            res = info.get("resolution", info.get("beat_resolution"))
            shapes = [z[k] for k in z.files if k.endswith("_csc_shape")]
            steps = max([int(s[0]) for s in shapes if len(s)] + [0])
    except Exception:  # left to pypianoroll.load, which names what is wrong
        return
    if isinstance(res, int) and res > 0:
        check_length(steps / res, max_beats)


def read_npz_song(path, spec: RollSpec, max_beats: int = DEFAULT_MAX_BEATS) -> Song:
    """One Multitrack .npz file onto the spec's grid; raises MidiError with the reason it can't.
    Any non-zero cell sounds (velocities, booleans, or floats above 0)."""
    check_regular(path)
    mt = _load(path, max_beats)
    res = mt.resolution
    if not isinstance(res, (int, np.integer)) or res <= 0:
        raise MidiError(f"bad resolution: {res!r} time steps per beat")
    tracks = []
    for t in mt.tracks:
        roll = np.asarray(t.pianoroll)
        if roll.ndim != 2 or roll.shape[1] != 128:
            raise MidiError(f"pianoroll not [time, 128]: track {t.name!r} has shape {roll.shape}")
        pitch, start, end = roll_notes(roll)
        tracks.append(SourceTrack(t.name or "", int(t.program or 0), bool(t.is_drum), pitch, start, end - start))
    bars = np.zeros(0, np.int64) if mt.downbeat is None else np.nonzero(np.asarray(mt.downbeat).reshape(-1))[0]
    bars = complete_bars(bars, max([len(t.pianoroll) for t in mt.tracks] + [len(np.asarray(mt.downbeat).reshape(-1))
                                                                           if mt.downbeat is not None else 0]), res)
    tempo = np.asarray(mt.tempo if mt.tempo is not None else [], float).reshape(-1)
    first = float(tempo[0]) if len(tempo) and np.isfinite(tempo[0]) and tempo[0] > 0 else 120.0
    return build_song(tracks, int(res), meters_from_bars(bars, int(res)), bars, first, spec, max_beats)


def rolls_to_multitrack(roll: np.ndarray, spec: RollSpec, *, tempo: float = 120.0, programs=(0,), names=None,
                        meter=(4, 4)):
    """A bool roll [C, P, T] -> a pypianoroll Multitrack at the spec's resolution: one binary
    track per part, bar lines every bar of ``meter``. Repeated notes of one pitch with no gap
    between them merge: a binary pianoroll cannot keep them apart."""
    import pypianoroll

    steps = roll.shape[-1]
    bar = spec.steps_per_beat * 4 * meter[0] // meter[1]
    downbeat = np.zeros(steps, bool)
    downbeat[::bar] = True
    tracks = []
    names = names or spec.part_names
    for k in range(spec.parts):
        pr = np.zeros((steps, 128), bool)
        # a cell sounds when sustained or struck (the decoder's rule: roll_to_parts)
        pr[:, spec.low:spec.high + 1] = np.asarray(roll[spec.part_channels(k)], bool).any(axis=0).T
        tracks.append(pypianoroll.BinaryTrack(name=names[k], program=int(programs[k % len(programs)]), is_drum=False,
                                              pianoroll=pr))
    return pypianoroll.Multitrack(resolution=spec.steps_per_beat, tempo=np.full(steps, float(tempo)),
                                  downbeat=downbeat, tracks=tracks)


def multitrack_from_midi(path, resolution: int = 24):
    """A MIDI file as a pypianoroll Multitrack at ``resolution`` steps per quarter note, read by
    symusic: the quarter-note grid, bar lines and tempo map as the MIDI path sees them (unlike
    ``pypianoroll.read``, see the module docstring). Velocities become the pianoroll's values."""
    import pypianoroll
    import symusic

    score = symusic.Score(str(path)).resample(resolution, min_dur=1)
    steps = score.end() + 1
    tracks = []
    for t in score.tracks:
        a = t.notes.numpy()
        pr = np.zeros((steps, 128), np.uint8)
        for pitch, start, length, vel in zip(a["pitch"].tolist(), a["time"].tolist(), a["duration"].tolist(),
                                             a["velocity"].tolist()):
            pr[start:start + length, pitch] = vel
        tracks.append(pypianoroll.StandardTrack(name=t.name, program=t.program, is_drum=t.is_drum, pianoroll=pr))
    downbeat = np.zeros(steps, bool)
    downbeat[np.asarray(score.get_downbeats(), np.int64)] = True
    tempos = score.tempos.numpy()
    bpm = 60_000_000.0 / tempos["mspq"] if len(tempos["mspq"]) else np.array([120.0])
    at = np.searchsorted(tempos["time"], np.arange(steps), side="right") - 1 if len(tempos["mspq"]) else 0
    tempo = bpm[np.maximum(at, 0)] * np.ones(steps)
    return pypianoroll.Multitrack(resolution=resolution, tempo=tempo, downbeat=downbeat, tracks=tracks)


def save_npz(multitrack, path) -> None:
    """``pypianoroll.save`` to a temporary name beside ``path``, then renamed: never half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=NPZ_SUFFIX)
    os.close(fd)
    try:
        multitrack.save(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
