"""A file to draw melodies over (generate --condition): what is kept, what is replaced, and the windows.

The accompaniment is copied, never decoded: every kept note with its pitch, onset, offset and
velocity at the file's own resolution, each kept track with its program and name, the tempo map and
the time signatures. Which notes are the melody to replace:

- ``auto``: a file with one non-drum track is all accompaniment (a chords file); with several, the
  first non-drum track is the melody and every later one the accompaniment (the rule of
  ``preprocess --parts tracks``);
- ``none``: every note is accompaniment;
- ``skyline``: the top voice (each note with no higher note sounding at its onset) is the melody;
- a track number N (0-based among the non-drum tracks with notes): that track is the melody.

The model draws in windows that start on bar lines, from the first downbeat at or after the first
note (the time signatures give the bars); a pickup before it keeps its accompaniment and gets no
melody. Drum tracks are copied and never shown to the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .midi import DEFAULT_MAX_BEATS, MidiError, Track, check_length, load_score, notes_to_roll, read_bytes, ticks_to_steps
from .spec import RollSpec


@dataclass
class Condition:
    kept: list[Track]  # the tracks written back as given (file ticks): accompaniment, and drums (Track.drum)
    replaced: int  # notes of the file taken as the melody and replaced
    tpq: int
    tempo: list  # [(tick, bpm)]
    time_signature: list  # [(tick, numerator, denominator)]
    downbeat: int  # the first downbeat at or after the first note: where the windows start (ticks)
    end: int  # the last note's end (ticks)
    said: str  # one line: what was kept and what replaced

    def bars(self) -> np.ndarray:
        """Bar-line ticks from the first downbeat up to the end."""
        bars = bar_lines(self.time_signature, self.tpq, self.end)
        return bars[bars >= self.downbeat]


def bar_lines(time_signature: list, tpq: int, end: int) -> np.ndarray:
    """Every bar line in [0, end) from the time signatures (a change starts a new bar)."""
    out = []
    sigs = sorted(time_signature) or [(0, 4, 4)]
    if sigs[0][0] > 0:
        sigs = [(0, 4, 4), *sigs]
    for i, (t, num, den) in enumerate(sigs):
        stop = sigs[i + 1][0] if i + 1 < len(sigs) else end
        bar = max(1, round(num * 4 * tpq / den))
        out.extend(range(int(t), int(max(stop, t)), bar))
    return np.unique(np.asarray(out, np.int64))


def _top_voice(notes: np.ndarray, block: int = 512) -> np.ndarray:
    """Which notes [pitch, start, end] have no higher note sounding at their onset (in blocks of notes, so
    that memory stays at block x N whatever the file)."""
    pitch, start, end = notes[:, 0], notes[:, 1], notes[:, 2]
    out = np.empty(len(notes), bool)
    for lo in range(0, len(notes), block):
        s, p = start[lo: lo + block, None], pitch[lo: lo + block, None]
        out[lo: lo + block] = ~((start[None, :] <= s) & (s < end[None, :]) & (pitch[None, :] > p)).any(axis=1)
    return out


def read_condition(path, melody="auto", max_beats: int = DEFAULT_MAX_BEATS) -> Condition:
    """The file's tracks split into what is kept and what is replaced (module docstring); MidiError with
    the reason where there is nothing to draw over."""
    score = load_score(read_bytes(path))
    tpq = score.ticks_per_quarter
    tracks = [t for t in score.tracks if len(t.notes)]
    pitched = [t for t in tracks if not t.is_drum]
    if not tracks:
        raise MidiError("no notes")
    if not pitched:
        raise MidiError("only drum tracks: no chords to draw a melody over")
    notes = [t.notes.numpy() for t in pitched]
    arrays = [np.stack([n["pitch"].astype(np.int64), n["time"].astype(np.int64),
                        n["time"].astype(np.int64) + n["duration"].astype(np.int64)], 1) for n in notes]
    check_length(max(int(a[:, 2].max()) for a in arrays) / tpq, max_beats)
    mode = melody if melody != "auto" else ("none" if len(pitched) == 1 else 0)
    if isinstance(mode, int) and not 0 <= mode < len(pitched):
        raise MidiError(f"track {mode}: out of range; the file has {len(pitched)} non-drum track(s) with notes "
                        f"(0 to {len(pitched) - 1})")
    keep = [np.ones(len(a), bool) for a in arrays]
    if mode == "skyline":
        merged = np.concatenate(arrays)
        top = np.split(_top_voice(merged), np.cumsum([len(a) for a in arrays])[:-1])
        keep = [~t for t in top]
    elif isinstance(mode, int):
        keep[mode][:] = False
    kept = []
    for t, n, a, k in zip(pitched, notes, arrays, keep):
        if k.any():
            kept.append(Track(a[k], n["velocity"][k].astype(np.int64), int(t.program), t.name))
    if not kept:
        raise MidiError(f"no accompaniment left: {'its one track is' if len(pitched) == 1 else 'every track is'} "
                        f"the melody (--condition-melody none keeps it as the accompaniment)")
    drums = [Track(np.stack([d["pitch"], d["time"], d["time"] + d["duration"]], 1).astype(np.int64),
                   d["velocity"].astype(np.int64), int(t.program), t.name, drum=True)
             for t in tracks if t.is_drum for d in [t.notes.numpy()]]
    replaced = int(sum((~k).sum() for k in keep))
    first = min(int(tr.notes[:, 1].min()) for tr in kept)
    end = max(int(a[:, 2].max()) for a in arrays)
    meters = [(int(m.time), int(m.numerator), int(m.denominator)) for m in score.time_signatures] or [(0, 4, 4)]
    bars = bar_lines(meters, tpq, end)
    after = bars[bars >= first]
    if len(after):  # the bar that starts there, by the time signature in force (4/4 before the first one)
        _, num, den = max([m for m in meters if m[0] <= after[0]] or [(0, 4, 4)])
    if len(after) == 0 or end - int(after[0]) < round(num * 4 * tpq / den):
        raise MidiError("shorter than one bar after its first downbeat: nothing to draw a melody in")
    names = ", ".join(f"track {i} {t.name or '(unnamed)'!r} ({len(a)} notes)" for i, (t, a) in enumerate(zip(pitched, arrays)))
    if mode == "none":
        said = f"kept every note as the accompaniment ({names})"
    elif mode == "skyline":
        said = f"replaced the top voice ({replaced} notes), kept the {sum(len(t.notes) for t in kept)} notes under it"
    else:
        said = f"replaced track {mode} as the melody, kept the others as the accompaniment ({names})"
    tempo = [(int(t.time), 60_000_000.0 / t.mspq) for t in score.tempos] or [(0, 120.0)]
    return Condition(kept + drums, replaced, tpq, tempo, meters, int(after[0]), end, said)


def window_starts(cond: Condition, spec: RollSpec) -> np.ndarray:
    """Window starts in ticks, each on a bar line: the first at the first downbeat, each next one the
    last bar line within a window of the one before (whole bars, none skipped)."""
    length = round(spec.steps * cond.tpq / spec.steps_per_beat)
    bars = cond.bars()
    starts = [int(bars[0])]
    while starts[-1] + length < cond.end:
        nxt = bars[(bars > starts[-1]) & (bars <= starts[-1] + length)]
        starts.append(int(nxt[-1]) if len(nxt) else starts[-1] + length)  # a bar longer than a window: cut it
    return np.asarray(starts, np.int64)


def condition_rolls(cond: Condition, spec: RollSpec, starts: np.ndarray) -> np.ndarray:
    """The accompaniment part of each window [W, C, P, T] (melody empty), on the model's grid; notes
    outside the pitch window are left out of what the model hears (and still written back)."""
    grid = RollSpec(low=spec.low, pitches=spec.pitches, steps=spec.steps, steps_per_beat=spec.steps_per_beat,
                    onset=spec.onset)
    notes = np.concatenate([t.notes for t in cond.kept if not t.drum])  # the model never hears drums
    notes = notes[(notes[:, 0] >= spec.low) & (notes[:, 0] < spec.low + spec.pitches)]
    steps = np.column_stack([notes[:, 0], ticks_to_steps(notes[:, 1:], cond.tpq, spec.steps_per_beat)])
    steps = steps[steps[:, 2] > steps[:, 1]]  # shorter than half a step: nothing on the grid
    k = spec.channels_per_part
    out = np.zeros((len(starts), spec.channels, spec.pitches, spec.steps), np.float32)
    for w, s in enumerate(ticks_to_steps(starts, cond.tpq, spec.steps_per_beat)):
        out[w, k:] = notes_to_roll(steps, spec.steps, grid, offset=int(s))
    return out
