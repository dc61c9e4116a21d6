"""MIDI files (and PNGs) from a checkpoint of any model family; the model is rebuilt from the config in it.

    python -m apollogan.generate --checkpoint quick-001 --num 8 --out samples/quick --png
    python -m apollogan.generate --checkpoint quick-001 --bernoulli --tempo 100 --program 24
    python -m apollogan.generate --checkpoint quick-001 --interpolate 8 --out samples/walk
    python -m apollogan.generate --checkpoint lstm-001 --prime 16 --temperature 0.9 --top-p 0.95
    python -m apollogan.generate --checkpoint cond_gan-001 --condition tune.mid --num 4 --out samples/over
    python -m apollogan.generate --checkpoint cond_gan-001 --condition song.mid --condition-melody skyline
    python -m apollogan.generate --checkpoint quick-001 --num 1000 --format mid npz --device cpu

--condition FILE (cond_gan): melodies over the accompaniment of FILE, which is copied as given
(every note, track, program, tempo and time signature). A file of one track is all accompaniment;
with several, track 0 is the melody that is replaced (--condition-melody skyline|none|track N says
otherwise). The model draws in windows from the first downbeat, each starting on a bar line.

The LSTM is primed with the first K steps of real validation windows of the run's data
(--data to use another shard set of the same spec; --prime 0 starts from silence).
--interpolate walks between two noise points (dcgan, lstm_gan) or between the codes of two
validation windows (vae, ae); the LSTM has no latent space to walk.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .arguments import add_device_arg, add_sampling_args
from .checkpoint import family_from_checkpoint, resolve_checkpoint
from .cli import UserError, run
from .condition import condition_rolls, read_condition, window_starts
from .midi import (
    MidiError,
    Track,
    binarize,
    check_programs,
    notes_to_midi,
    part_names,
    roll_to_parts,
    save_midi,
    tracks_to_midi,
    velocities,
)
from .sampling import draw, pick_device, real_windows, sampling_options

FORMATS = ("mid", "npz")


def write_over_condition(a, family, spec, gen: torch.Generator, rng, programs) -> int:
    """generate --condition: n files, each the file's kept tracks as given and a melody drawn window by
    window over them (apollogan/condition.py says what is kept)."""
    if not family.conditional:
        raise UserError(f"--condition: the {family.name} family draws without a condition; train model.family=cond_gan")
    if spec.parts != 2:
        raise UserError(f"--condition: takes the chords of a file as one accompaniment part; this model's rolls "
                        f"have {spec.parts} parts")
    try:
        cond = read_condition(a.condition, a.condition_melody)
    except MidiError as e:
        raise UserError(f"{a.condition}: {e}") from None
    print(f"{a.condition}: {cond.said}", file=sys.stderr)
    starts = window_starts(cond, spec)
    w = len(starts)
    real = torch.from_numpy(np.tile(condition_rolls(cond, spec, starts), (a.num, 1, 1, 1)))
    rolls = binarize(family.sample(len(real), gen, real=real, device=a.device).numpy(), a.threshold,
                     rng if a.bernoulli else None)
    tpq = math.lcm(cond.tpq, spec.steps_per_beat)  # the file's ticks and the melody's steps both exact
    up, tick = tpq // cond.tpq, tpq // spec.steps_per_beat
    kept = [Track(t.notes * np.array([1, up, up]), t.velocity, t.program, t.name, t.drum) for t in cond.kept]
    tempo = [(t * up, b) for t, b in cond.tempo]
    meter = [(t * up, n, d) for t, n, d in cond.time_signature]
    bounds = np.r_[starts, cond.end] * up  # each window's melody runs to the next window's start
    a.out.mkdir(parents=True, exist_ok=True)
    stem = Path(a.condition).stem
    for i in tqdm(range(a.num), desc="generate", unit="file", file=sys.stderr):
        parts = []
        for j in range(w):
            n = roll_to_parts(rolls[i * w + j], spec)[0] * np.array([1, tick, tick]) + np.array([0, bounds[j], bounds[j]])
            n = n[n[:, 1] < bounds[j + 1]]
            n[:, 2] = np.minimum(n[:, 2], bounds[j + 1])
            parts.append(n)
        melody = np.concatenate(parts)
        tune = Track(melody, velocities(len(melody), a.velocity, a.velocity_std, rng), programs[0], "melody")
        save_midi(tracks_to_midi([tune, *kept], tpq, tempo=tempo, time_signature=meter),
                  a.out / f"{stem}-melody-{i:03d}.mid", durable=False)
    if a.png:
        from .images import save_rolls_png, spec_look

        save_rolls_png(rolls[:w * min(a.num, 4)], a.out / f"{stem}-grid.png", nrow=w if w <= 4 else 4,
                       meter=cond.time_signature[0][1:], **spec_look(spec))
    print(f"wrote {a.num} MIDI files to {a.out}: melodies over {a.condition} ({w} window(s) from its first downbeat, "
          f"each of {spec.steps} steps), from {family.name}")
    return 0


def melody_choice(words: list[str]):
    """--condition-melody: auto, none, skyline or track N."""
    if words in (["auto"], ["none"], ["skyline"]):
        return words[0]
    if len(words) == 2 and words[0] == "track" and words[1].isdigit():
        return int(words[1])
    raise UserError(f"--condition-melody {' '.join(words)}: one of auto, none, skyline or track N (N a track number)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apollogan.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint file, or a run's folder or name: its best.pt (the step training chose) "
                             "where it has one, else its last checkpoint")
    ap.add_argument("--num", type=int, default=8, help="how many files (default %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--threshold", type=float, default=0.5, help="cell on when p >= T (default %(default)s)")
    how.add_argument("--bernoulli", action="store_true", help="draw each cell with its probability")
    ap.add_argument("--tempo", type=float, default=120.0, help="BPM (default %(default)s)")
    ap.add_argument("--program", type=int, nargs="+", default=[0], metavar="P",
                    help="General MIDI program 0-127, one for every part or one per part (default 0)")
    ap.add_argument("--velocity", type=float, default=90, help="mean velocity (default %(default)s)")
    ap.add_argument("--velocity-std", type=float, default=0.0, help="Gaussian velocity spread (default constant)")
    ap.add_argument("--png", action="store_true", help="also a PNG per file and a grid of all")
    ap.add_argument("--format", nargs="+", choices=FORMATS, default=["mid"], metavar="F",
                    help="mid (MIDI files, default) and/or npz (pypianoroll Multitrack files: one binary track per "
                         "part at the model's steps per beat; repeated notes without a gap merge there)")
    add_device_arg(ap)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--interpolate", type=int, metavar="K", help="K files along a line through the latent space")
    ap.add_argument("--raw", action="store_true", help="use the raw weights, not their moving average")
    ap.add_argument("--data", type=Path, help="shard set to take real windows from (default: the run's data.root)")
    mode.add_argument("--condition", type=Path, metavar="FILE.mid",
                      help="cond_gan: melodies over the accompaniment of this file, copied as given")
    ap.add_argument("--condition-melody", nargs="+", default=["auto"], metavar="MODE",
                    help="with --condition, which notes are a melody to replace: auto (default: none for a file of "
                         "one track, else track 0), none (every note is accompaniment), skyline (the top voice), "
                         "track N")
    add_sampling_args(ap)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.tempo <= 0 or a.num < 1 or (a.interpolate is not None and a.interpolate < 2):
        raise UserError("--tempo and --num must be positive, --interpolate at least 2")
    a.device = pick_device(a.device)
    if a.condition and "npz" in a.format:
        raise UserError("--format npz: --condition writes the chords as given in the file, which a pianoroll "
                        "cannot hold at the model's grid; use --format mid")
    path, ckpt = resolve_checkpoint(a.checkpoint, best=True)
    family, spec, cfg = family_from_checkpoint(ckpt, device=a.device, ema=not a.raw)
    programs = check_programs(a.program, spec)
    opts = sampling_options(family, a)
    root = a.data or Path(cfg.data.root)
    rng = np.random.default_rng(a.seed)
    a.condition_melody = melody_choice(a.condition_melody)
    if a.condition_melody != "auto" and not a.condition:
        raise UserError("--condition-melody: says which notes of the --condition file to replace; give --condition too")
    if a.condition:
        return write_over_condition(a, family, spec, torch.Generator().manual_seed(a.seed), rng, programs)
    if a.interpolate:
        if family.latent is None:
            raise UserError(f"--interpolate: the {family.name} family has no latent space to walk "
                            "(it composes one step at a time)")
        ends = None
        if family.latent == "codes" or family.conditional:  # two windows' codes; one window's chords
            ends = real_windows(root, spec, 2, a.seed, "--interpolate")
        key = {"key": opts["key"]} if opts.get("key") is not None else {}
        probs = family.interpolate(a.interpolate, torch.Generator().manual_seed(a.seed), real=ends, device=a.device,
                                   **key)
    else:
        probs = draw(family, a.num, a.seed, opts, root, device=a.device)
    rolls = binarize(probs.numpy(), a.threshold, rng if a.bernoulli else None)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "interp" if a.interpolate else "sample"
    empty = 0
    if "npz" in a.format:
        from .pianoroll import rolls_to_multitrack, save_npz  # pypianoroll and scipy: about a second
    for i, roll in enumerate(tqdm(rolls, desc="generate", unit="file", file=sys.stderr)):
        parts = roll_to_parts(roll, spec)
        empty += sum(map(len, parts)) == 0
        if "mid" in a.format:
            save_midi(notes_to_midi(parts, spec, tempo=a.tempo, program=programs, velocity=a.velocity,
                                    velocity_std=a.velocity_std, rng=rng, names=part_names(spec)),
                      a.out / f"{stem}-{i:03d}.mid", durable=False)
        if "npz" in a.format:
            save_npz(rolls_to_multitrack(roll, spec, tempo=a.tempo, programs=programs), a.out / f"{stem}-{i:03d}.npz")
    if a.png:
        from .images import save_rolls_png, spec_look

        look = dict(spec_look(spec), meter=(4, 4))  # the files are written in 4/4
        for i, roll in enumerate(rolls):
            save_rolls_png(roll[None], a.out / f"{stem}-{i:03d}.png", nrow=1, **look)
        save_rolls_png(rolls, a.out / f"{stem}-grid.png", nrow=4, **look)
    what = " and ".join({"mid": "MIDI", "npz": ".npz"}[f] for f in dict.fromkeys(a.format))
    print(f"wrote {len(rolls)} {what} files to {a.out} from {path} ({family.name})"
          + (f" ({empty} without notes)" if empty else ""))
    return 0


if __name__ == "__main__":
    run(main)
