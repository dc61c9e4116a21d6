"""Real windows broken in ways a listener hears at once, in graded strengths: the yardstick's proof.

Every function takes rolls [N, C, P, T] (any dtype; C may hold parts and onset channels) and returns
a new bool array of the same shape; random ones take a numpy Generator. The melody of a one-part
roll is its upper voice (the highest sounding pitch at each step) and the accompaniment the rest;
with parts, part 0 and the later parts. Onset channels are recomputed from the broken sustain.
No metric or feature network is ever trained on these (docs/metrics.md).
"""
from __future__ import annotations

import numpy as np

from .metrics import split_voices
from .midi import note_bounds
from .spec import RollSpec


def _sustain(x: np.ndarray, spec: RollSpec) -> np.ndarray:
    """[N, parts, P, T] bool: each part's sustain channel."""
    return np.asarray(x).astype(bool)[:, ::spec.channels_per_part]


def _rolls(sustain: np.ndarray, spec: RollSpec) -> np.ndarray:
    """Sustain [N, parts, P, T] back to rolls of ``spec``, onsets (where the spec has them) recomputed."""
    if not spec.onset:
        return sustain.copy()
    n, parts, p, t = sustain.shape
    out = np.zeros((n, parts, 2, p, t), bool)
    out[:, :, 0] = sustain
    out[:, :, 1] = note_bounds(sustain.reshape(n * parts, p, t))[0].reshape(n, parts, p, t)
    return out.reshape(n, parts * 2, p, t)


def melody_and_rest(x: np.ndarray, spec: RollSpec) -> tuple[np.ndarray, np.ndarray]:
    """(melody, accompaniment) sustain [N, P, T]: part 0 and the others, or a one-part roll's upper
    voice and everything under it."""
    s = _sustain(x, spec)
    if spec.parts > 1:
        return s[:, 0], s[:, 1:].any(axis=1)
    return split_voices(s[:, 0])


def _join(melody: np.ndarray, rest: np.ndarray, spec: RollSpec) -> np.ndarray:
    if spec.parts > 1:
        s = np.zeros((len(melody), spec.parts, *melody.shape[1:]), bool)
        s[:, 0], s[:, -1] = melody, rest  # the accompaniment goes back into the last part
        return _rolls(s, spec)
    return _rolls((melody | rest)[:, None], spec)


def shuffle_bars(x: np.ndarray, spec: RollSpec, bar: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """A share of each window's complete bars moved to each other's places (every chosen bar moves)."""
    s = _sustain(x, spec).copy()
    n, parts, p, t = s.shape
    k = t // bar
    chosen = int(round(share * k))
    if chosen < 2:
        return _rolls(s, spec)
    for i in range(n):
        pick = np.sort(rng.choice(k, chosen, replace=False))
        order = pick[rng.permutation(chosen)]
        while np.any(order == pick):  # a derangement: every chosen bar moves
            order = pick[rng.permutation(chosen)]
        bars = s[i, :, :, : k * bar].reshape(parts, p, k, bar).copy()
        moved = bars.copy()
        moved[:, :, pick] = bars[:, :, order]
        s[i, :, :, : k * bar] = moved.reshape(parts, p, k * bar)
    return _rolls(s, spec)


def reverse(x: np.ndarray, spec: RollSpec) -> np.ndarray:
    """The window played backwards."""
    return _rolls(_sustain(x, spec)[..., ::-1], spec)


def flip_register(x: np.ndarray, spec: RollSpec) -> np.ndarray:
    """The pitch axis upside down: the melody under the chords, every interval mirrored."""
    return _rolls(_sustain(x, spec)[:, :, ::-1], spec)


def move_melody(x: np.ndarray, spec: RollSpec, share: float, rng: np.random.Generator, semitones: int = 7) -> np.ndarray:
    """A share of the melody's notes, each moved by a random nonzero shift of at most ``semitones`` (inside
    the pitch window). Graded by the share, not the size: a semitone clash is harsher than a fifth."""
    melody, rest = melody_and_rest(x, spec)
    start, end = note_bounds(melody)
    n_idx, p_idx, t0 = np.nonzero(start)
    _, _, t1 = np.nonzero(end)  # row-major order pairs each start with its own end
    shift = rng.integers(1, semitones + 1, len(n_idx)) * rng.choice([-1, 1], len(n_idx))
    shift = np.where(rng.random(len(n_idx)) < share, shift, 0)
    target = np.clip(p_idx + shift, 0, melody.shape[1] - 1)
    moved = np.zeros_like(melody)
    for n, p, a, b in zip(n_idx, target, t0, t1):
        moved[n, p, a: b + 1] = True
    return _join(moved, rest, spec)


def swap_melodies(x: np.ndarray, spec: RollSpec, rng: np.random.Generator) -> np.ndarray:
    """Each window's melody over another window's accompaniment."""
    melody, rest = melody_and_rest(x, spec)
    n = len(melody)
    order = (np.arange(n) + rng.integers(1, max(n, 2))) % n if n > 1 else np.arange(n)
    return _join(melody[order], rest, spec)


def drop_melody(x: np.ndarray, spec: RollSpec) -> np.ndarray:
    """The accompaniment alone."""
    melody, rest = melody_and_rest(x, spec)
    return _join(np.zeros_like(melody), rest, spec)


def drop_accompaniment(x: np.ndarray, spec: RollSpec) -> np.ndarray:
    """The melody alone."""
    melody, rest = melody_and_rest(x, spec)
    return _join(melody, np.zeros_like(rest), spec)


def suite(bar: int) -> dict:
    """name -> f(rolls, spec, rng): every corruption of the yardstick report, graded ones by strength."""
    return {
        "bars shuffled 25%": lambda x, s, g: shuffle_bars(x, s, bar, 0.25, g),
        "bars shuffled 50%": lambda x, s, g: shuffle_bars(x, s, bar, 0.5, g),
        "bars shuffled 100%": lambda x, s, g: shuffle_bars(x, s, bar, 1.0, g),
        "25% of melody notes moved": lambda x, s, g: move_melody(x, s, 0.25, g),
        "50% of melody notes moved": lambda x, s, g: move_melody(x, s, 0.5, g),
        "100% of melody notes moved": lambda x, s, g: move_melody(x, s, 1.0, g),
        "time reversed": lambda x, s, g: reverse(x, s),
        "melody of another window": lambda x, s, g: swap_melodies(x, s, g),
        "register flipped": lambda x, s, g: flip_register(x, s),
        "melody dropped": lambda x, s, g: drop_melody(x, s),
        "accompaniment dropped": lambda x, s, g: drop_accompaniment(x, s),
    }


GRADED = {"bars shuffled": ("bars shuffled 25%", "bars shuffled 50%", "bars shuffled 100%"),
          "melody moved": ("25% of melody notes moved", "50% of melody notes moved", "100% of melody notes moved")}
