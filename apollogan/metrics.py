"""Music metrics: a registry of pure functions over batches of binary rolls, vectorised.

Conventions (docs/metrics.md). A batch is bool [N, P, T] (pitch x time: the sustain
channel); row p is MIDI pitch ``low + p`` and its pitch class is (low + p) mod 12, never a
reshape of the pitch axis. ``r`` is steps per beat and ``bar`` steps per bar (an int, or
one per roll: 6/8 at 4 steps per beat is 12). Bars and beats are the complete ones from
the window's start; a trailing partial bar is not counted. A note is a maximal run of ones
in one pitch row. Each function returns one float per roll; NaN where the value is
undefined (the pitch range of an empty roll, say).
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .midi import note_bounds

MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
MINOR = np.array([0, 2, 3, 5, 7, 8, 10])  # natural minor
KEY_NAMES = [f"{n} major" for n in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")] + \
            [f"{n} minor" for n in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")]


def _scales() -> np.ndarray:
    """[24, 12] membership: rows 0-11 major keys on C..B, rows 12-23 minor keys."""
    m = np.zeros((24, 12), bool)
    for tonic in range(12):
        m[tonic, (tonic + MAJOR) % 12] = True
        m[12 + tonic, (tonic + MINOR) % 12] = True
    return m


SCALES = _scales()


def _pc_matrix(pitches: int, low: int) -> np.ndarray:
    """[P, 12] one-hot pitch class of each row."""
    m = np.zeros((pitches, 12))
    m[np.arange(pitches), (low + np.arange(pitches)) % 12] = 1
    return m


def onsets(x: np.ndarray) -> np.ndarray:
    """[N, P, T] bool: the first step of every note."""
    return note_bounds(x)[0]


def note_lengths(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(roll index, length in steps) of every note in the batch."""
    start, end = note_bounds(x)
    n, _, s = np.nonzero(start)
    _, _, e = np.nonzero(end)  # row-major order pairs each start with its own end
    return n, e - s + 1


def _per_roll(values: np.ndarray, rolls: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(rolls, weights=values, minlength=n) if len(rolls) else np.zeros(n)


def _div(a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _bars(x: np.ndarray, bar) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group rolls by bar length: [(roll indices, rolls as [n, P, bars, bar])] with complete bars only."""
    n, p, t = x.shape
    bar = np.broadcast_to(np.asarray(bar), (n,))
    out = []
    for b in np.unique(bar):
        idx = np.nonzero(bar == b)[0]
        k = t // int(b)
        out.append((idx, x[idx, :, : k * int(b)].reshape(len(idx), p, k, int(b))))
    return out


def _by_bar(x: np.ndarray, bar, fn) -> np.ndarray:
    """Apply ``fn(rolls [n, P, bars, bar]) -> [n]`` to each bar-length group."""
    out = np.full(len(x), np.nan)
    for idx, xb in _bars(x, bar):
        out[idx] = fn(xb)
    return out


# --- the metrics -------------------------------------------------------------------------

def note_density(x, **_):
    """Active cells over all cells."""
    return x.mean(axis=(1, 2))


def empty_bar_rate(x, bar=16, **_):
    """Bars with no active cell over bars."""
    return _by_bar(x, bar, lambda xb: (~xb.any(axis=(1, 3))).mean(axis=1) if xb.shape[2] else np.nan)


def used_pitch_classes(x, bar=16, low=30, **_):
    """Mean over bars of the number of distinct pitch classes active in the bar, in [0, 12]."""
    pcm = _pc_matrix(x.shape[1], low)

    def per_bar(xb):
        active = xb.any(axis=3).astype(float)  # [n, P, bars]
        return ((np.einsum("npk,pc->nkc", active, pcm) > 0).sum(axis=2)).mean(axis=1) if xb.shape[2] else np.nan
    return _by_bar(x, bar, per_bar)


def pitches_used(x, **_):
    """Distinct pitches active anywhere in the roll."""
    return x.any(axis=2).sum(axis=1).astype(float)


def pitch_classes_used(x, low=30, **_):
    """Distinct pitch classes active anywhere in the roll."""
    return ((x.any(axis=2).astype(float) @ _pc_matrix(x.shape[1], low)) > 0).sum(axis=1).astype(float)


def pitch_range(x, **_):
    """Highest minus lowest active pitch; NaN for an empty roll."""
    rows = x.any(axis=2)
    has = rows.any(axis=1)
    hi = x.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    lo = rows.argmax(axis=1)
    return np.where(has, hi - lo, np.nan).astype(float)


def qualified_note_rate(x, q, **_):
    """Notes at least ``q`` steps long over all notes; NaN without notes."""
    rolls, length = note_lengths(x)
    return _div(_per_roll(length >= q, rolls, len(x)), np.bincount(rolls, minlength=len(x)))


def polyphony(x, **_):
    """Active cells over time steps with at least one active cell; NaN for an empty roll."""
    return _div(x.sum(axis=(1, 2)), x.any(axis=1).sum(axis=1))


def polyphony_rate(x, k, **_):
    """Time steps with at least ``k`` active pitches over all time steps."""
    return (x.sum(axis=1) >= k).mean(axis=1)


def _onset_pc_hist(x, low):
    return onsets(x).sum(axis=2).astype(float) @ _pc_matrix(x.shape[1], low)  # [N, 12]


def in_scale_rate(x, key: str, low=30, **_):
    """Notes whose pitch class is in ``key``'s scale ("D major", "E minor") over all notes."""
    hist = _onset_pc_hist(x, low)
    return _div(hist @ SCALES[KEY_NAMES.index(key)], hist.sum(axis=1))


def scale_consistency(x, low=30, **_):
    """The in-scale rate of the best-fitting of the 24 major and minor keys."""
    hist = _onset_pc_hist(x, low)
    return _div((hist @ SCALES.T.astype(float)).max(axis=1), hist.sum(axis=1))


def _entropy(hist):
    p = hist / np.where(hist.sum(axis=1, keepdims=True) > 0, hist.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0).sum(axis=1)
    return np.where(hist.sum(axis=1) > 0, h, np.nan)


def pitch_entropy(x, **_):
    """Shannon entropy (bits) of the histogram of note onsets over pitches; NaN without notes."""
    return _entropy(onsets(x).sum(axis=2).astype(float))


def pitch_class_entropy(x, low=30, **_):
    """Shannon entropy (bits) of the histogram of note onsets over pitch classes; NaN without notes."""
    return _entropy(_onset_pc_hist(x, low))


def empty_beat_rate(x, r=4, **_):
    """Beats with no active cell over the T / r beats of the roll."""
    n, p, t = x.shape
    k = t // r
    return (~x[:, :, : k * r].reshape(n, p, k, r).any(axis=(1, 3))).mean(axis=1)


def groove_consistency(x, bar=16, **_):
    """1 minus the mean Hamming distance between onset patterns of consecutive bars, over the bar length.

    NaN with fewer than two complete bars.
    """
    def per_group(ob):
        pattern = ob.any(axis=1)  # [n, bars, bar]: a step with any onset
        if pattern.shape[1] < 2:
            return np.full(len(ob), np.nan)
        ham = (pattern[:, 1:] != pattern[:, :-1]).mean(axis=2)  # divided by the bar length
        return 1.0 - ham.mean(axis=1)
    return _by_bar(onsets(x), bar, per_group)


def tonal_centroid_matrix(radii=(1.0, 1.0, 0.5)) -> np.ndarray:
    """[6, 12] Harte et al. (2006): fifths, minor thirds and major thirds circles."""
    pc = np.arange(12)
    r1, r2, r3 = radii
    return np.stack([r1 * np.sin(pc * 7 * np.pi / 6), r1 * np.cos(pc * 7 * np.pi / 6),
                     r2 * np.sin(pc * 3 * np.pi / 2), r2 * np.cos(pc * 3 * np.pi / 2),
                     r3 * np.sin(pc * 2 * np.pi / 3), r3 * np.cos(pc * 2 * np.pi / 3)])


def tonal_distance_parts(a, b, r=4, low=30, **_):
    """Mean Euclidean distance between per-beat tonal centroids of two parts [N, P, T].

    Chroma per beat counts active cells per pitch class, normalised to sum 1. Beats where
    either part is silent are left out; NaN when no beat has both.
    """
    n, p, t = a.shape
    k = t // r
    pcm = _pc_matrix(p, low)

    def centroids(x):
        chroma = np.einsum("npkr,pc->nkc", x[:, :, : k * r].reshape(n, p, k, r).astype(float), pcm)
        total = chroma.sum(axis=2, keepdims=True)
        return chroma / np.where(total > 0, total, 1) @ tonal_centroid_matrix().T, total[..., 0] > 0
    ca, ha = centroids(a)
    cb, hb = centroids(b)
    both = ha & hb
    dist = np.linalg.norm(ca - cb, axis=2)
    return _div(np.where(both, dist, 0).sum(axis=1), both.sum(axis=1))


def chord_tone_rate(melody, accompaniment, low=30, **_):
    """Over the melody notes whose onset step has the accompaniment sounding, the share whose pitch
    class is among the accompaniment's sounding pitch classes at that step; NaN when no melody
    onset has a sounding accompaniment. Two parts [N, P, T] of one pitch window."""
    pcm = _pc_matrix(melody.shape[1], low)
    struck = np.einsum("npt,pc->nct", onsets(melody).astype(float), pcm)  # onsets per pitch class and step
    chord = np.einsum("npt,pc->nct", accompaniment.astype(float), pcm) > 0
    sounding = accompaniment.any(axis=1)  # [N, T]
    return _div((struck * chord).sum(axis=(1, 2)), (struck.sum(axis=1) * sounding).sum(axis=1))


def top_rows(x: np.ndarray) -> np.ndarray:
    """[N, T]: the highest active row at each step, -1 where the step is silent."""
    return np.where(x.any(axis=1), x.shape[1] - 1 - x[:, ::-1, :].argmax(axis=1), -1)


def split_voices(x):
    """(upper, lower): at each step the highest active pitch, and everything under it."""
    top = top_rows(x)
    upper = np.zeros_like(x)
    ni, ti = np.nonzero(top >= 0)
    upper[ni, top[ni, ti], ti] = True
    return upper, x & ~upper


def tonal_distance(x, r=4, low=30, **_):
    """Tonal distance between the upper voice (highest note at each step) and the voices below it."""
    upper, lower = split_voices(x)
    return tonal_distance_parts(upper, lower, r=r, low=low)


# --- structure: order, phrases and whether melody and chords belong together -------------------

def phrase_repetition(x, bar=16, lags=(4, 8), **_):
    """Mean over bars of the best IoU of active cells with the bar ``lags`` bars earlier (4 or 8: where a
    folk tune's phrases repeat), over bars that have such a bar and are not both empty; NaN without any.
    Shuffled bars lose it; a per-roll statistic of bar contents cannot see it."""
    def per_roll(xb):  # [n, P, k, bar]
        n, p, k, b = xb.shape
        cells = xb.transpose(0, 2, 1, 3).reshape(n, k, p * b).astype(float)
        size = cells.sum(axis=2)
        best, seen = np.zeros((n, k)), np.zeros((n, k), bool)
        for lag in lags:
            if lag >= k:
                continue
            inter = (cells[:, lag:] * cells[:, :-lag]).sum(axis=2)
            union = size[:, lag:] + size[:, :-lag] - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
            best[:, lag:] = np.maximum(best[:, lag:], iou)
            seen[:, lag:] |= union > 0
        return _div((best * seen).sum(axis=1), seen.sum(axis=1))
    return _by_bar(x, bar, per_roll)


def _upper_moves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(move [N, T], has [N, T]): the upper voice's interval at each step where its pitch changes from the
    last sounding one (silent steps skipped), in semitones."""
    top = top_rows(x)
    n, t = top.shape
    last = np.maximum.accumulate(np.where(top >= 0, np.arange(t), -1), axis=1)  # last sounding step <= t
    prev = np.concatenate([np.full((n, 1), -1), last[:, :-1]], axis=1)  # ... < t
    before = np.take_along_axis(top, np.maximum(prev, 0), axis=1)
    move = top - before
    return move, (top >= 0) & (prev >= 0) & (move != 0)


def melodic_step_rate(x, **_):
    """Of the upper voice's moves, the share that are steps (1 or 2 semitones) rather than leaps; NaN
    without a move. Melodies move mostly by step; random or displaced notes leap."""
    move, has = _upper_moves(x)
    return _div((has & (np.abs(move) <= 2)).sum(axis=1), has.sum(axis=1))


def step_descent(x, **_):
    """Of the upper voice's steps (moves of 1 or 2 semitones), the share that go down; NaN without a step.
    Tunes step down more than up (and leap up): reversed in time, the share flips."""
    move, has = _upper_moves(x)
    step = has & (np.abs(move) <= 2)
    return _div((step & (move < 0)).sum(axis=1), step.sum(axis=1))


def strong_beat_chord_tones(x, bar=16, r=4, low=30, **_):
    """At the strong beats (each bar's first step, and its middle when it has an even number of beats),
    among those where the upper voice has other notes under it: the share whose upper pitch class sounds
    among them too. NaN without such a beat. A melody over another tune's chords falls."""
    upper, lower = split_voices(x)
    pcm = _pc_matrix(x.shape[1], low)
    agree = (np.einsum("npt,pc->nct", upper.astype(float), pcm) * np.einsum("npt,pc->nct", lower.astype(float), pcm)
             ).any(axis=1)  # [N, T]: the top note's pitch class is among those under it
    has = lower.any(axis=1)
    steps = np.arange(x.shape[2])
    out = np.full(len(x), np.nan)
    bars = np.broadcast_to(np.asarray(bar), (len(x),))
    for b in np.unique(bars):  # one mask of strong steps per bar length
        b = int(b)
        strong = (steps % b == 0) | ((b // r) % 2 == 0) & (steps % b == b // 2)
        strong &= steps < x.shape[2] - x.shape[2] % b
        idx = bars == b
        out[idx] = _div((agree[idx] & has[idx] & strong).sum(axis=1), (has[idx] & strong).sum(axis=1))
    return out


# The registry: name -> f(x [N, P, T] bool, *, low, r, bar) -> [N]. Parameters are explicit in the name.
METRICS = {
    "empty_bar_rate": empty_bar_rate,
    "used_pitch_classes": used_pitch_classes,
    "pitches_used": pitches_used,
    "pitch_classes_used": pitch_classes_used,
    "pitch_range": pitch_range,
    "qualified_note_rate_q2": partial(qualified_note_rate, q=2),
    "polyphony": polyphony,
    "polyphony_rate_k2": partial(polyphony_rate, k=2),
    "scale_consistency": scale_consistency,
    "pitch_entropy": pitch_entropy,
    "pitch_class_entropy": pitch_class_entropy,
    "empty_beat_rate": empty_beat_rate,
    "groove_consistency": groove_consistency,
    "tonal_distance": tonal_distance,
    "note_density": note_density,
}

# Structure: time order, phrases, melody against chords. Reported beside the overall figure, not in it
# (the overall figure keeps the 15 statistics every round was ranked with).
STRUCTURE = {
    "phrase_repetition": phrase_repetition,
    "melodic_step_rate": melodic_step_rate,
    "step_descent": step_descent,
    "strong_beat_chord_tones": strong_beat_chord_tones,
}

# Two-part metrics f(melody, accompaniment [N, P, T], *, low, r) -> [N], for rolls with parts.
PART_METRICS = {
    "chord_tone_rate": chord_tone_rate,
    "tonal_distance_parts": tonal_distance_parts,
}

# cheap statistics logged with every sample grid during training
TRAINING_STATS = {k: METRICS[k] for k in ("note_density", "pitches_used", "polyphony")}


def steps_per_bar(numerator, denominator, steps_per_beat: int) -> np.ndarray:
    """Bar length in steps from a time signature: 4/4 at 4 steps a beat is 16, 6/8 is 12."""
    return np.maximum(np.rint(np.asarray(numerator) * 4 / np.asarray(denominator) * steps_per_beat), 1).astype(int)


def metric_names(spec) -> list[str]:
    """The metrics of rolls of ``spec``: the registry's for one part; with parts, the registry's on
    the melody ("melody/...") and on all parts merged ("merged/..."), and the two-part metrics."""
    if spec.parts == 1:
        return list(METRICS)
    return [f"melody/{k}" for k in METRICS] + [f"merged/{k}" for k in METRICS] + list(PART_METRICS)


def structure_metrics(rolls: np.ndarray, spec, bar) -> dict[str, np.ndarray]:
    """The STRUCTURE metrics of rolls [N, C, P, T] of ``spec``, on every part merged (the upper voice
    is then the melody wherever it sounds)."""
    x = np.asarray(rolls).astype(bool)[:, ::spec.channels_per_part].any(axis=1)
    bar = np.broadcast_to(np.asarray(bar), (len(x),))
    return {k: f(x, bar=bar, r=spec.steps_per_beat, low=spec.low) for k, f in STRUCTURE.items()}


def split_parts(rolls: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """(melody, accompaniment) sustain [N, P, T] of rolls [N, C, P, T] with parts: part 0, and
    every later part merged."""
    k = spec.channels_per_part
    rolls = np.asarray(rolls).astype(bool, copy=False)
    return rolls[:, 0], rolls[:, k::k].any(axis=1)


def roll_metrics(rolls: np.ndarray, spec, bar, names=None, batch: int = 512) -> dict[str, np.ndarray]:
    """The metrics (``metric_names(spec)``, or ``names`` of them) of rolls [N, C, P, T] of ``spec``."""
    if spec.parts == 1:
        return compute_metrics(rolls, spec.low, spec.steps_per_beat, bar, names, batch)
    names = list(names or metric_names(spec))
    bar = np.broadcast_to(np.asarray(bar), (len(rolls),))
    out = {k: np.empty(len(rolls)) for k in names}
    for lo in range(0, len(rolls), batch):
        sl = slice(lo, lo + batch)
        melody, accompaniment = split_parts(rolls[sl], spec)
        views = {"melody": melody, "merged": melody | accompaniment}
        for k in names:
            view, _, metric = k.rpartition("/")
            if view:
                out[k][sl] = METRICS[metric](views[view], low=spec.low, r=spec.steps_per_beat, bar=bar[sl])
            else:
                out[k][sl] = PART_METRICS[metric](melody, accompaniment, low=spec.low, r=spec.steps_per_beat)
    return out


def compute_metrics(x: np.ndarray, low: int, r: int, bar, names=None, batch: int = 512) -> dict[str, np.ndarray]:
    """All (or ``names``) metrics of rolls x [N, P, T] (or [N, C, P, T]: channel 0 is used), in batches."""
    x = np.asarray(x)
    if x.ndim == 4:
        x = x[:, 0]
    x = x.astype(bool)
    bar = np.broadcast_to(np.asarray(bar), (len(x),))
    names = list(names or METRICS)
    out = {k: np.empty(len(x)) for k in names}
    for lo in range(0, len(x), batch):
        sl = slice(lo, lo + batch)
        for k in names:
            out[k][sl] = METRICS[k](x[sl], low=low, r=r, bar=bar[sl])
    return out
