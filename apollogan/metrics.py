"""Music metrics as a registry of pure, vectorised functions over batches of binary rolls.

Conventions (DESIGN.md section 4): a roll is bool [N, P, T] (pitch x time, the sustain
channel), row p is MIDI pitch ``low + p``; a note is a maximal run of ones in one row.
"""
from __future__ import annotations

import numpy as np


def note_density(x: np.ndarray, **_) -> np.ndarray:
    """Active cells over all cells."""
    return x.mean(axis=(1, 2))


def pitches_used(x: np.ndarray, **_) -> np.ndarray:
    """Distinct pitches active anywhere in the roll."""
    return x.any(axis=2).sum(axis=1).astype(float)


def polyphony(x: np.ndarray, **_) -> np.ndarray:
    """Active cells over time steps with at least one active cell (NaN for an empty roll)."""
    active_steps = x.any(axis=1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(active_steps > 0, x.sum(axis=(1, 2)) / np.maximum(active_steps, 1), np.nan)


TRAINING_STATS = {"note_density": note_density, "pitches_used": pitches_used, "polyphony": polyphony}
