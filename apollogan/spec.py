"""The piano-roll spec: the one description of what a roll means.

It is written into every shard manifest and every checkpoint and read back from there,
so a model, its data and its decoder can never silently disagree.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

OUT_OF_RANGE_RULES = ("drop", "fold")


@dataclass(frozen=True)
class RollSpec:
    """A binary piano roll of shape [channels, pitches, steps].

    Row p is MIDI pitch ``low + p``. Time is quantised in beats (quarter notes, the unit of
    MIDI's ticks-per-beat), ``steps_per_beat`` steps to the beat. Channel 0 is the sustain
    roll (the cell is sounding); with ``onset`` a channel 1 marks the step each note starts,
    so repeated notes of one pitch stay separate. Drum tracks (MIDI channel 10) are always
    excluded; all other tracks are merged.
    """

    low: int = 30
    pitches: int = 64
    steps: int = 256
    steps_per_beat: int = 4
    onset: bool = False
    out_of_range: str = "drop"  # notes outside the pitch window: "drop" (counted) or "fold" by octaves

    def __post_init__(self):
        if not 0 <= self.low <= 127 or self.pitches < 1 or self.low + self.pitches > 128:
            raise ValueError(f"pitch window {self.low}..{self.low + self.pitches - 1} is not inside MIDI 0..127")
        if self.steps < 1 or self.steps_per_beat < 1:
            raise ValueError("steps and steps_per_beat must be positive")
        if self.out_of_range not in OUT_OF_RANGE_RULES:
            raise ValueError(f"out_of_range must be one of {OUT_OF_RANGE_RULES}, not {self.out_of_range!r}")
        if self.out_of_range == "fold" and self.pitches < 12:
            raise ValueError("folding by octaves needs a pitch window of at least 12 pitches")

    @property
    def channels(self) -> int:
        return 2 if self.onset else 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.pitches, self.steps)

    @property
    def high(self) -> int:
        """Highest MIDI pitch inside the window (inclusive)."""
        return self.low + self.pitches - 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RollSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown spec keys: {sorted(unknown)}")
        return cls(**d)

    def describe(self) -> str:
        return (f"[{self.channels}, {self.pitches}, {self.steps}] pitches {self.low}..{self.high}, "
                f"{self.steps_per_beat} steps/beat, {'onset+sustain' if self.onset else 'sustain'}, "
                f"out-of-range notes {self.out_of_range}")
