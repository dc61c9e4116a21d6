"""The piano-roll spec: the one description of what a roll means.

It is written into every shard manifest and every checkpoint and read back from there,
so a model, its data and its decoder can never silently disagree.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

OUT_OF_RANGE_RULES = ("drop", "fold")
PART_MODES = ("merge", "tracks", "skyline")


@dataclass(frozen=True)
class RollSpec:
    """A binary piano roll of shape [channels, pitches, steps].

    Row p is MIDI pitch ``low + p``. Time is quantised in beats (quarter notes, the unit of
    MIDI's ticks-per-beat), ``steps_per_beat`` steps to the beat. Channel 0 is the sustain
    roll (the cell is sounding); with ``onset`` a channel 1 marks the step each note starts,
    so repeated notes of one pitch stay separate. Drum tracks (MIDI channel 10) are always
    excluded.

    Parts: ``part_mode`` "merge" (one part, every track merged), "tracks" (part k is the
    k-th non-drum track with notes, in file order; the last part also takes every later
    track) or "skyline" (two parts: the highest sounding pitch at each step, and the rest).
    Channels go part by part, each part's sustain channel and then its onset channel, so
    C = parts x (1 or 2). Part 0 is the melody; the parts after it are the accompaniment.
    """

    low: int = 30
    pitches: int = 64
    steps: int = 256
    steps_per_beat: int = 4
    onset: bool = False
    out_of_range: str = "drop"  # notes outside the pitch window: "drop" (counted) or "fold" by octaves
    parts: int = 1
    part_mode: str = "merge"
    # With part_mode "tracks": one selector per part, comma-separated track names (any case; "name:808"
    # for a name of digits) or General MIDI programs and ranges ("Guitar", "Piano,Strings", "32-39");
    # a track goes to the first part it matches; () takes tracks in order.
    part_tracks: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "part_tracks", tuple(str(s) for s in self.part_tracks))
        if self.part_tracks and (self.part_mode != "tracks" or len(self.part_tracks) != self.parts):
            raise ValueError(f"part_tracks: one selector per part with part_mode 'tracks' "
                             f"({len(self.part_tracks)} given, {self.parts} part(s) by {self.part_mode})")
        for sel in self.part_tracks:
            _selector(sel)
        if not 0 <= self.low <= 127 or self.pitches < 1 or self.low + self.pitches > 128:
            raise ValueError(f"pitch window {self.low}..{self.low + self.pitches - 1} is not inside MIDI 0..127")
        if self.steps < 1 or self.steps_per_beat < 1:
            raise ValueError("steps and steps_per_beat must be positive")
        if self.out_of_range not in OUT_OF_RANGE_RULES:
            raise ValueError(f"out_of_range must be one of {OUT_OF_RANGE_RULES}, not {self.out_of_range!r}")
        if self.out_of_range == "fold" and self.pitches < 12:
            raise ValueError("folding by octaves needs a pitch window of at least 12 pitches")
        if self.part_mode not in PART_MODES:
            raise ValueError(f"part_mode must be one of {PART_MODES}, not {self.part_mode!r}")
        if self.parts < 1 or (self.part_mode == "merge") != (self.parts == 1) or \
                (self.part_mode == "skyline" and self.parts != 2):
            raise ValueError(f"{self.parts} part(s) with part_mode {self.part_mode!r}: merge has one part, "
                             "skyline two, tracks two or more")

    def part_of_track(self, name: str, program: int) -> int:
        """The part a track goes to by ``part_tracks`` (the first selector it matches), or -1."""
        for k, sel in enumerate(self.part_tracks):
            names, programs = _selector(sel)
            if name.strip().lower() in names or any(a <= program <= b for a, b in programs):
                return k
        return -1

    @property
    def channels_per_part(self) -> int:
        return 2 if self.onset else 1

    @property
    def channels(self) -> int:
        return self.parts * self.channels_per_part

    def part_channels(self, part) -> slice:
        """The channels of one part (an int) or of parts ``part.start`` onwards (a slice)."""
        k = self.channels_per_part
        if isinstance(part, slice):
            return slice(part.start * k, (part.stop if part.stop is not None else self.parts) * k)
        return slice(part * k, (part + 1) * k)

    @property
    def part_names(self) -> list[str]:
        if self.parts == 1:
            return ["all"]
        if self.parts == 2:
            return ["melody", "accompaniment"]
        return ["melody"] + [f"part{k}" for k in range(1, self.parts)]

    @property
    def channel_names(self) -> list[str]:
        kinds = ["sustain", "onset"][: self.channels_per_part]
        return [f"{p}/{k}" for p in self.part_names for k in kinds]

    def sustain(self, rolls):
        """Merged sustain [..., P, T] of rolls [..., C, P, T]: any part sounding (numpy bool or torch)."""
        s = rolls[..., :: self.channels_per_part, :, :]
        return s.any(axis=-3) if isinstance(s, np.ndarray) else s.amax(dim=-3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.pitches, self.steps)

    @property
    def high(self) -> int:
        """Highest MIDI pitch inside the window (inclusive)."""
        return self.low + self.pitches - 1

    @property
    def pitch_classes(self) -> list[int]:
        """The pitch class (0 = C) of each pitch row, low to high."""
        return [(self.low + p) % 12 for p in range(self.pitches)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["part_tracks"] = list(self.part_tracks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RollSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown spec keys: {sorted(unknown)}")
        return cls(**d)

    def describe(self) -> str:
        by = self.part_mode + (f" {' / '.join(self.part_tracks)}" if self.part_tracks else "")
        parts = "" if self.parts == 1 else f", {self.parts} parts by {by} ({', '.join(self.part_names)})"
        return (f"[{self.channels}, {self.pitches}, {self.steps}] pitches {self.low}..{self.high}, "
                f"{self.steps_per_beat} steps/beat, {'onset+sustain' if self.onset else 'sustain'}, "
                f"out-of-range notes {self.out_of_range}{parts}")


def _selector(sel: str) -> tuple[set, list]:
    """A part_tracks selector -> (track names in lower case, program ranges [(a, b)])."""
    names, programs = set(), []
    for item in (x.strip() for x in sel.split(",")):
        a, dash, b = item.partition("-")
        if item.lower().startswith("name:") and item[5:].strip():
            names.add(item[5:].strip().lower())
        elif a.isdigit() and (not dash or b.isdigit()):
            lo, hi = int(a), int(b if dash else a)
            if not 0 <= lo <= hi <= 127:
                raise ValueError(f"part_tracks: program range {item!r} is not inside 0..127")
            programs.append((lo, hi))
        elif item:
            names.add(item.lower())
        else:
            raise ValueError(f"part_tracks: empty item in selector {sel!r}")
    return names, programs
