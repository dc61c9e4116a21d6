"""The codec pair: MIDI file -> notes -> binary roll, and roll -> notes -> MIDI file.

Reading and writing use symusic, a C++ MIDI library many times faster than mido both ways
(docs/data.md has the figures). Notes travel as an int array [N, 3] of (pitch, start, end)
in steps, end exclusive. Time is quantised in beats from each file's ticks-per-beat, so 6/8 and
tempo changes need no special case: a beat is a quarter note whatever the meter or tempo.
"""
from __future__ import annotations

import dataclasses
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import symusic

from .cli import UserError, atomic_write_bytes
from .spec import RollSpec

DEFAULT_MAX_BEATS = 20_000  # about 2.8 hours at 120 bpm; longer files are treated as broken
WRITE_TPQ = 480  # ticks per beat of written files: divisible by every usual steps_per_beat


class MidiError(Exception):
    """A file that cannot be used; the message is the reason shown to the user."""


@dataclass
class Song:
    """One MIDI file on the spec's grid."""

    notes: np.ndarray  # [N, 3] int64 (pitch, start, end) in steps, pitches inside the window, track order
    steps: int  # length of the song in steps
    downbeats: np.ndarray  # bar-line positions in steps
    time_signatures: np.ndarray  # [K, 3] (step, numerator, denominator)
    tempo: float  # first tempo in BPM (120 when the file has none)
    stats: dict = field(default_factory=dict)  # notes, dropped, folded, off-grid onsets/offsets
    part: np.ndarray | None = None  # [N] part of each note (--parts tracks); None: one part, or split by skyline

    def time_signature_at(self, steps: np.ndarray) -> np.ndarray:
        """[len(steps), 2] (numerator, denominator) in force at each step (4/4 before the first)."""
        ts = self.time_signatures
        if len(ts) == 0:
            return np.full((len(steps), 2), 4, np.int64)
        i = np.searchsorted(ts[:, 0], steps, side="right") - 1
        out = ts[:, 1:][i]  # i = -1 (before the first) is overwritten next
        out[i < 0] = 4
        return out


def check_header(data: bytes) -> None:
    """Reject what the parser would misread or choke on, with a readable reason."""
    if len(data) == 0:
        raise MidiError("empty file (0 bytes)")
    if data[:4] != b"MThd":
        if data[:4] == b"RIFF":
            raise MidiError("RIFF-wrapped MIDI is not supported")
        raise MidiError("not a MIDI file (no MThd header)")
    if len(data) < 14:
        raise MidiError("truncated header")
    _, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if fmt == 2:
        raise MidiError("type-2 MIDI (independent sequences) is not supported")
    if fmt > 2:
        raise MidiError(f"unknown MIDI format {fmt}")
    if division & 0x8000:
        raise MidiError("SMPTE time division (frames, not beats) is not supported")
    if division == 0:
        raise MidiError("zero ticks per beat")
    if ntracks == 0:
        raise MidiError("no tracks")


def ticks_to_steps(ticks: np.ndarray, tpq: int, spb: int) -> np.ndarray:
    """Round to the nearest step, halves up, in exact integer arithmetic."""
    return (np.asarray(ticks, np.int64) * (spb * 2) + tpq) // (2 * tpq)


def _fit_pitches(pitch: np.ndarray, spec: RollSpec) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Apply the out-of-range rule. Returns (pitches, keep mask or None for all, dropped, folded)."""
    outside = (pitch < spec.low) | (pitch > spec.high)
    n_out = int(np.count_nonzero(outside))
    if n_out == 0:
        return pitch, None, 0, 0
    if spec.out_of_range == "drop":
        return pitch, ~outside, n_out, 0
    up = -((pitch - spec.low) // 12)  # octaves to add to a note below the window
    down = -((spec.high - pitch) // 12)  # octaves to remove from a note above it
    folded = np.where(pitch < spec.low, pitch + 12 * up, np.where(pitch > spec.high, pitch - 12 * down, pitch))
    return folded, np.ones(len(pitch), bool), 0, n_out


DIATONIC = (0, 2, 4, 5, 7, 9, 11)  # the white keys: C major, A minor and the other modes of that scale


def key_shift(notes: np.ndarray) -> int:
    """The transposition, -6 to +5 semitones, that puts the most note time on the white keys:
    a tune in D major moves down 2 (to C major), one in E minor up 5 (to A minor). Notes count
    by duration; ties go to the smaller shift, then the lower one, so a tune already in C stays."""
    if len(notes) == 0:
        return 0
    hist = np.bincount(notes[:, 0] % 12, weights=notes[:, 2] - notes[:, 1], minlength=12)
    white = np.zeros(12, bool)
    white[list(DIATONIC)] = True
    # by shift s a pitch class q lands on (q + s) % 12: the time on the white keys is hist . white[(q + s) % 12]
    score = {s: float(hist @ white[(np.arange(12) + s) % 12]) for s in range(-6, 6)}
    return min(score, key=lambda s: (-score[s], abs(s), s))


def transpose_song(song: Song, shift: int, spec: RollSpec) -> Song:
    """The song ``shift`` semitones up, the out-of-range rule applied again to the notes it moves out of
    the window (counted in the stats as dropped or folded)."""
    if shift == 0:
        return song
    pitch, keep, dropped, folded = _fit_pitches(song.notes[:, 0] + shift, spec)
    notes = song.notes.copy()
    notes[:, 0] = pitch
    part = song.part
    if dropped:
        notes = notes[keep]
        part = part[keep] if part is not None else None
    stats = dict(song.stats)
    stats["notes_dropped_pitch"] = stats.get("notes_dropped_pitch", 0) + dropped
    stats["notes_folded"] = stats.get("notes_folded", 0) + folded
    return dataclasses.replace(song, notes=notes, part=part, stats=stats)


def check_length(beats: float, max_beats: int) -> None:
    """Files longer than ``max_beats`` beats are treated as broken."""
    if beats > max_beats:
        raise MidiError(f"absurd length: {beats:.0f} beats (limit {max_beats})")


def check_regular(path) -> None:
    """Only regular files are read: a FIFO or a device named x.mid would block or never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise MidiError(f"unreadable: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise MidiError("not a regular file (a FIFO, socket or device)")


def read_bytes(path) -> bytes:
    check_regular(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise MidiError(f"unreadable: {e.strerror or e}") from None


def load_score(data: bytes) -> symusic.Score:
    """The bytes of a MIDI file parsed by symusic, after the header checks."""
    check_header(data)
    try:
        return symusic.Score.from_midi(data)
    except Exception as e:  # symusic raises plain RuntimeError/ValueError on malformed data
        raise MidiError(f"corrupt MIDI: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_song(path, spec: RollSpec, max_beats: int = DEFAULT_MAX_BEATS) -> Song:
    """Read one MIDI file onto the spec's grid; raises MidiError with the reason it can't."""
    return parse_song(read_bytes(path), spec, max_beats)


def parse_song(data: bytes, spec: RollSpec, max_beats: int = DEFAULT_MAX_BEATS) -> Song:
    """The bytes of a MIDI file onto the spec's grid; raises MidiError with the reason it can't."""
    return score_to_song(load_score(data), spec, max_beats)


@dataclass
class SourceTrack:
    """One track of an input file, its notes in the file's ticks (MIDI or a pianoroll .npz)."""

    name: str
    program: int
    is_drum: bool
    pitch: np.ndarray  # [N] any integer type
    on: np.ndarray  # [N] first tick
    duration: np.ndarray  # [N] ticks


def score_to_song(score: symusic.Score, spec: RollSpec, max_beats: int = DEFAULT_MAX_BEATS) -> Song:
    """A parsed file onto the spec's grid; raises MidiError with the reason it can't."""
    tracks = []
    for t in score.tracks:
        a = t.notes.numpy()
        tracks.append(SourceTrack(t.name, t.program, t.is_drum, a["pitch"], a["time"], a["duration"]))
    ts = score.time_signatures.numpy()
    meters = np.empty((len(ts["time"]), 3), np.int64)
    meters[:, 0], meters[:, 1], meters[:, 2] = ts["time"], ts["numerator"], ts["denominator"]
    tempos = score.tempos.numpy()
    tempo = 60_000_000.0 / float(tempos["mspq"][0]) if len(tempos["mspq"]) else 120.0
    # before get_downbeats(), which allocates per beat up to the last event: one note held for 2^28 ticks
    # would take gigabytes there
    check_length(score.end() / max(score.ticks_per_quarter, 1), max_beats)
    return build_song(tracks, score.ticks_per_quarter, meters, np.asarray(score.get_downbeats()), tempo, spec,
                      max_beats)


def select_parts(tracks: list[SourceTrack], spec: RollSpec) -> tuple[list[SourceTrack], np.ndarray]:
    """The tracks that make the roll and the part of each, by the spec's part rule; raises MidiError
    when the file cannot fill the spec's parts."""
    tracks = [t for t in tracks if not t.is_drum and len(t.pitch)]
    if not tracks:
        raise MidiError("no notes outside drum tracks")
    if spec.part_mode != "tracks":
        return tracks, np.zeros(len(tracks), np.int64)
    if not spec.part_tracks:  # track k is part k; the last part also takes every later track
        if len(tracks) < spec.parts:
            raise MidiError(f"too few tracks: {len(tracks)} non-drum track(s) with notes, "
                            f"the spec has {spec.parts} parts")
        return tracks, np.minimum(np.arange(len(tracks)), spec.parts - 1)
    part = np.array([spec.part_of_track(t.name, t.program) for t in tracks])
    for k, sel in enumerate(spec.part_tracks):
        if not (part == k).any():
            raise MidiError(f"no notes for part {k} ({sel}): non-drum tracks with notes are "
                            + ", ".join(f"{t.name or '(unnamed)'} [program {t.program}]" for t in tracks))
    keep = part >= 0
    return [t for t, k in zip(tracks, keep) if k], part[keep]


def build_song(tracks: list[SourceTrack], tpq: int, meters: np.ndarray, downbeats: np.ndarray, tempo: float,
               spec: RollSpec, max_beats: int = DEFAULT_MAX_BEATS) -> Song:
    """Tracks in ticks of ``tpq`` onto the spec's grid, with the file's meters [K, 3] (tick, numerator,
    denominator), bar lines in ticks and first tempo in BPM; raises MidiError with the reason it can't."""
    spb = spec.steps_per_beat
    if tpq <= 0:
        raise MidiError(f"resolution of {tpq} ticks per beat")
    total = sum(len(t.pitch) for t in tracks if not t.is_drum)
    tracks, track_part = select_parts(tracks, spec)
    # One array of onsets then offsets, so each step below is one numpy call (this runs per file).
    n = sum(len(t.pitch) for t in tracks)
    ticks = np.empty(2 * n, np.int64)
    ticks[:n] = np.concatenate([t.on for t in tracks])
    ticks[n:] = ticks[:n] + np.concatenate([t.duration for t in tracks])
    pitch = np.concatenate([t.pitch for t in tracks]).astype(np.int64)
    if ticks[:n].min() < 0:
        raise MidiError("negative note times")
    check_length(ticks[n:].max() / tpq, max_beats)

    steps_at = ticks_to_steps(ticks, tpq, spb)
    off_grid = ticks * spb % tpq != 0
    notes = np.empty((n, 3), np.int64)
    notes[:, 1] = steps_at[:n]
    notes[:, 2] = np.maximum(steps_at[n:], steps_at[:n] + 1)  # a very short note keeps one step
    notes[:, 0], keep, dropped, folded = _fit_pitches(pitch, spec)
    part = np.repeat(track_part, [len(t.pitch) for t in tracks]) if spec.part_mode == "tracks" else None
    if dropped:  # in track order; the roll needs no sorting
        notes = notes[keep]
        part = part[keep] if part is not None else None

    meters = np.asarray(meters, np.int64).reshape(-1, 3)
    ts_arr = meters.copy()
    ts_arr[:, 0] = ticks_to_steps(meters[:, 0], tpq, spb)
    grid = np.count_nonzero(off_grid[:n]), np.count_nonzero(off_grid[n:])
    stats = {
        "notes": n,
        "notes_dropped_pitch": dropped,
        "notes_folded": folded,
        "onsets_off_grid": int(grid[0]),
        "offsets_off_grid": int(grid[1]),
    }
    if n < total:  # tracks the spec's part selection leaves out
        stats["notes_unselected"] = total - n
    steps = int(notes[:, 2].max()) if len(notes) else int(steps_at[n:].max())
    downbeats = ticks_to_steps(np.asarray(downbeats, np.int64), tpq, spb)  # sorted
    return Song(notes, steps, downbeats, ts_arr, round(float(tempo), 3), stats, part)


def song_roll(song: Song, steps: int, spec: RollSpec, offset: int = 0) -> np.ndarray:
    """The song as a bool roll [C, P, steps] from ``offset``, its notes placed in the spec's parts."""
    roll = notes_to_roll(song.notes, steps, spec, offset, part=song.part)
    return skyline(roll, spec) if spec.part_mode == "skyline" else roll


def skyline(roll: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Roll [C, P, T] with every note in part 0 -> melody (the highest sounding pitch at each
    step) in part 0 and the rest in part 1. A note that changes part mid-way starts anew there."""
    k = spec.channels_per_part
    sus = roll[0]
    p = sus.shape[0]
    top = p - 1 - sus[::-1].argmax(axis=0)
    steps = np.nonzero(sus.any(axis=0))[0]
    out = np.zeros_like(roll)
    out[0, top[steps], steps] = True
    out[k] = sus & ~out[0]
    if k == 2:  # an onset stays with its cell, and a run that starts in a part starts with an onset
        for c in (0, k):
            prev = np.zeros_like(sus)
            prev[:, 1:] = out[c][:, :-1]
            out[c + 1] = out[c] & (roll[1] | ~prev)
    return out


def notes_to_roll(notes: np.ndarray, steps: int, spec: RollSpec, offset: int = 0,
                  part: np.ndarray | None = None) -> np.ndarray:
    """Notes (absolute steps) -> bool roll [C, P, steps] starting at ``offset``; parts outside are cut.

    ``part``: each note's part (default: all in part 0)."""
    roll = np.zeros((spec.channels, spec.pitches, steps), dtype=bool)
    if len(notes) == 0:
        return roll
    k = spec.channels_per_part
    chan = 0 if part is None else np.asarray(part, np.int64) * k
    row = notes[:, 0] - spec.low
    s, e = notes[:, 1] - offset, notes[:, 2] - offset
    if row.min() < 0 or row.max() >= spec.pitches:
        raise ValueError(f"notes_to_roll: pitch outside the spec's window {spec.low}..{spec.high}")
    inside = offset == 0 and notes[:, 1].min() >= 0 and notes[:, 2].max() <= steps and (notes[:, 2] > notes[:, 1]).all()
    if not inside:  # cut to the window; np.clip is slow on small arrays
        s, e = np.minimum(np.maximum(s, 0), steps), np.minimum(np.maximum(e, 0), steps)
        live = e > s
        row, s, e = row[live], s[live], e[live]
        chan = chan if part is None else chan[live]
        first_inside = (notes[live, 1] - offset) >= 0  # a note cut at the left edge has no onset here
    # Index every sounding cell directly: O(active cells), not O(pitches x steps).
    head = (chan * spec.pitches + row) * steps + s  # flat index of each note's first cell
    length = e - s
    end = np.cumsum(length)
    flat = roll.reshape(-1)
    flat[np.arange(int(end[-1]) if len(end) else 0) + np.repeat(head - (end - length), length)] = True
    if spec.onset:
        onset = head + spec.pitches * steps  # the part's onset channel follows its sustain channel
        flat[onset if inside else onset[first_inside]] = True
    return roll


def binarize(roll: np.ndarray, threshold: float = 0.5, rng: np.random.Generator | None = None) -> np.ndarray:
    """Probabilities in [0, 1] -> bool roll: by threshold, or Bernoulli draws when ``rng`` is given."""
    roll = np.asarray(roll)
    if roll.dtype == bool:
        return roll
    if rng is not None:
        return rng.random(roll.shape) < roll
    return roll >= threshold


def roll_to_notes(roll: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Bool roll [C, P, T] -> notes [N, 3] (pitch, start, end) of every part, part by part, each
    sorted by pitch then start.

    A note is a run of sustained steps; with the onset channel an onset inside a run starts a
    new note, so two repeated notes of one pitch come back as two. An onset without sustain
    counts as sounding (a model may emit one without the other).
    """
    return np.concatenate(roll_to_parts(roll, spec))


def roll_to_parts(roll: np.ndarray, spec: RollSpec) -> list[np.ndarray]:
    """Bool roll [C, P, T] -> one notes array [N, 3] per part (see roll_to_notes)."""
    roll = np.asarray(roll, dtype=bool)
    if roll.ndim == 2:
        roll = roll[None]
    return [_part_notes(roll[spec.part_channels(k)], spec) for k in range(spec.parts)]


def _part_notes(roll: np.ndarray, spec: RollSpec) -> np.ndarray:
    start, last = note_bounds(roll[0], roll[1] if spec.onset and roll.shape[0] > 1 else None)
    # Row-major order pairs each start with the end of the same note.
    sp, st = np.nonzero(start)
    _, en = np.nonzero(last)
    return np.stack([sp + spec.low, st, en + 1], axis=1).astype(np.int64)


def note_bounds(sustain: np.ndarray, onset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first step, last step) masks of every note in bool rolls [..., P, T].

    A note is a run of sustained steps; an onset inside a run starts a new note.
    """
    sus = sustain | onset if onset is not None else sustain
    prev = np.zeros_like(sus)
    prev[..., 1:] = sus[..., :-1]
    start = sus & ~prev if onset is None else sus & (~prev | onset)
    nxt = np.zeros_like(sus)
    nxt[..., :-1] = sus[..., 1:]
    nxt_start = np.zeros_like(sus)
    nxt_start[..., :-1] = start[..., 1:]
    return start, sus & (~nxt | nxt_start)


@dataclass
class Track:
    """One track to write: notes [N, 3] (pitch, start, end) in ticks, one velocity per note."""

    notes: np.ndarray
    velocity: np.ndarray
    program: int = 0
    name: str = ""
    drum: bool = False


def notes_to_midi(notes, spec: RollSpec, *, tempo: float = 120.0, program=0, velocity: float = 90,
                  velocity_std: float = 0.0, time_signature=(4, 4), rng: np.random.Generator | None = None,
                  names=None) -> symusic.Score:
    """Notes in steps -> a MIDI file: one array [N, 3] gives one track, a list of them (one per
    part) one track each. ``program`` is one for every track or one per track. Velocity is
    constant, or Gaussian when std > 0."""
    parts = [notes] if isinstance(notes, np.ndarray) or not isinstance(notes, (list, tuple)) else list(notes)
    programs = np.broadcast_to(np.asarray(program, int).reshape(-1), (len(parts),))
    names = names or [""] * len(parts)
    tpq = write_tpq(spec.steps_per_beat)
    tick = tpq // spec.steps_per_beat
    rng = rng or np.random.default_rng(0)
    tracks = []
    for part, prog, name in zip(parts, programs, names):
        part = np.asarray(part, dtype=np.int64).reshape(-1, 3)
        tracks.append(Track(part * np.array([1, tick, tick]), velocities(len(part), velocity, velocity_std, rng),
                            int(prog), name))
    return tracks_to_midi(tracks, tpq, tempo=tempo, time_signature=time_signature)


def write_tpq(steps_per_beat: int) -> int:
    """Ticks per beat of written files: WRITE_TPQ when a step is a whole number of its ticks."""
    return WRITE_TPQ if WRITE_TPQ % steps_per_beat == 0 else steps_per_beat * 120


def velocities(n: int, velocity: float, std: float, rng: np.random.Generator) -> np.ndarray:
    """n MIDI velocities: constant, or Gaussian around ``velocity`` when std > 0; in 1..127."""
    vel = rng.normal(velocity, std, n) if std > 0 else np.full(n, velocity, dtype=float)
    return np.clip(np.rint(vel), 1, 127).astype(int)


def tracks_to_midi(tracks: list[Track], tpq: int, *, tempo=120.0, time_signature=(4, 4)) -> symusic.Score:
    """A type-1 file, one MIDI track (and channel, skipping the drum channel 10) per Track; the
    first also carries the tempo and time signature: one value each, or lists of (tick, bpm) and
    (tick, numerator, denominator) for a file whose tempo or meter changes.

    Built with symusic, whose writer is about 7x faster than building one mido message object
    per event (docs/data.md); at one tick a repeated note is released before it is struck again.
    """
    tempos = [(0, tempo)] if np.ndim(tempo) == 0 else list(tempo)
    meters = [(0, *time_signature)] if np.ndim(time_signature) == 1 else list(time_signature)
    score = symusic.Score(int(tpq))
    for t, bpm in tempos:
        score.tempos.append(symusic.Tempo(int(t), float(bpm)))
    for t, n, d in meters:
        score.time_signatures.append(symusic.TimeSignature(int(t), int(n), int(d)))
    for tr in tracks:
        notes = np.asarray(tr.notes, dtype=np.int64).reshape(-1, 3)
        vel = np.broadcast_to(np.asarray(tr.velocity, dtype=np.int64).reshape(-1), (len(notes),))
        track = symusic.Track(tr.name, int(tr.program), bool(tr.drum))
        track.notes = symusic.Note.from_numpy(time=notes[:, 1].astype(np.int32),
                                              duration=(notes[:, 2] - notes[:, 1]).astype(np.int32),
                                              pitch=notes[:, 0].astype(np.int8), velocity=vel.astype(np.int8))
        score.tracks.append(track)
    return score


def save_midi(score: symusic.Score, path, durable: bool = True) -> None:
    """Write atomically so an interrupted run never leaves half a file under the final name.

    ``durable=False`` skips the fsync: for batches of regenerable files (samples, decoded
    windows), where an fsync per file would cost more than writing them."""
    atomic_write_bytes(Path(path), score.dumps_midi(), fsync=durable)


def match_notes(reference: np.ndarray, candidate: np.ndarray) -> int:
    """How many notes (pitch, start, end) the two lists share, counted as multisets."""
    ref, can = np.asarray(reference).reshape(-1, 3), np.asarray(candidate).reshape(-1, 3)
    if len(ref) == 0 or len(can) == 0:
        return 0
    uniq, inv = np.unique(np.concatenate([ref, can]), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    in_ref = np.bincount(inv[: len(ref)], minlength=len(uniq))
    in_can = np.bincount(inv[len(ref):], minlength=len(uniq))
    return int(np.minimum(in_ref, in_can).sum())


def check_programs(programs: list[int], spec) -> list[int]:
    """--program: one for every part or one per part, each 0..127."""
    if len(programs) not in (1, spec.parts) or not all(0 <= p <= 127 for p in programs):
        raise UserError(f"--program: one General MIDI program (0..127) for every part, or one per part "
                        f"({spec.parts}: {', '.join(spec.part_names)})")
    return programs * spec.parts if len(programs) == 1 else programs


def part_names(spec) -> list[str] | None:
    """Track names of written files: the part names when there are several parts."""
    return spec.part_names if spec.parts > 1 else None
