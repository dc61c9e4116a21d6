"""MIDI files (and PNGs) from a checkpoint of any model family; the model is rebuilt from the config in it.

    python -m apollogan.generate --checkpoint checkpoints/quick-001/last.pt --num 8 --out samples/quick --png
    python -m apollogan.generate --checkpoint quick-001 --bernoulli --tempo 100 --program 24
    python -m apollogan.generate --checkpoint quick-001 --interpolate 8 --out samples/walk
    python -m apollogan.generate --checkpoint lstm-001 --prime 16 --temperature 0.9 --top-p 0.95

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

from .checkpoint import family_from_checkpoint, resolve_checkpoint
from .cli import UserError, run
from .midi import binarize, notes_to_midi, roll_to_notes, save_midi
from .shards import ShardSet


def add_sampling_args(ap: argparse.ArgumentParser) -> None:
    """The options some families take when sampling (see their ``sample_options``)."""
    g = ap.add_argument_group("sampling options of the lstm family")
    g.add_argument("--prime", type=int, metavar="K",
                   help="start from the first K steps of real validation windows (default 16; 0: from silence)")
    g.add_argument("--temperature", type=float, metavar="T",
                   help="divide the logits by T before drawing (default 1; 0: every cell with p >= 0.5, no draw)")
    g.add_argument("--top-p", type=float, metavar="P",
                   help="per frame, keep the most probable cells holding share P of its probability mass (default 1)")


def sampling_options(family, a) -> dict:
    """The family's defaults updated with the options given; an option the family does not take is an error."""
    given = {k: v for k, v in (("prime", a.prime), ("temperature", a.temperature), ("top_p", a.top_p)) if v is not None}
    for k in given:
        if k not in family.sample_options:
            raise UserError(f"--{k.replace('_', '-')}: the {family.name} family has no such sampling option "
                            f"(it is for the lstm family)")
    opts = {**family.sample_options, **given}
    steps = family.spec.steps
    if not 0 <= opts.get("prime", 0) < steps:
        raise UserError(f"--prime: must be in 0..{steps - 1} steps")
    temperature, top_p = opts.get("temperature", 1.0), opts.get("top_p", 1.0)
    if not (math.isfinite(temperature) and temperature >= 0 and 0 < top_p <= 1):
        raise UserError("--temperature must be a number >= 0 and --top-p in (0, 1]")
    if temperature == 0 and top_p < 1:
        raise UserError("--top-p: --temperature 0 draws nothing (each cell is on when p >= 0.5), so there is no "
                        "tail to cut")
    return opts


def real_windows(root, spec, n: int, seed: int, why: str) -> torch.Tensor:
    """``n`` windows of the validation split (the training split when it has none), chosen with ``seed``."""
    try:
        shards = ShardSet(root, "val", spec=spec, verify=False)
        if len(shards) == 0:
            shards = ShardSet(root, "train", spec=spec, verify=False)
    except UserError as e:
        raise UserError(f"{why} needs real windows: {e} (pass --data CHUNKS)") from None
    return torch.from_numpy(shards.pick(n, seed))


def draw(family, n: int, seed: int, opts: dict, root, device="cpu") -> torch.Tensor:
    """``n`` rolls [n, C, P, T] in [0, 1] from the family, with its random draws seeded by ``seed``."""
    real = None
    if family.wants_real(**opts):
        real = real_windows(root, family.spec, n, seed, f"--prime {opts.get('prime')}")
    return family.sample(n, torch.Generator().manual_seed(seed), device=device, real=real, **opts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m apollogan.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file, folder or run name")
    ap.add_argument("--num", type=int, default=8, help="how many files (default %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--threshold", type=float, default=0.5, help="cell on when p >= T (default %(default)s)")
    mode.add_argument("--bernoulli", action="store_true", help="draw each cell with its probability")
    ap.add_argument("--tempo", type=float, default=120.0, help="BPM (default %(default)s)")
    ap.add_argument("--program", type=int, default=0, help="General MIDI program 0-127 (default %(default)s)")
    ap.add_argument("--velocity", type=float, default=90, help="mean velocity (default %(default)s)")
    ap.add_argument("--velocity-std", type=float, default=0.0, help="Gaussian velocity spread (default constant)")
    ap.add_argument("--png", action="store_true", help="also a PNG per file and a grid of all")
    ap.add_argument("--interpolate", type=int, metavar="K", help="K files along a line through the latent space")
    ap.add_argument("--raw", action="store_true", help="use the raw weights, not their moving average")
    ap.add_argument("--data", type=Path, help="shard set to take real windows from (default: the run's data.root)")
    add_sampling_args(ap)
    a = ap.parse_args(argv)
    if not 0 <= a.program <= 127 or a.tempo <= 0 or a.num < 1 or (a.interpolate is not None and a.interpolate < 2):
        raise UserError("--program must be 0..127, --tempo and --num positive, --interpolate at least 2")
    path, ckpt = resolve_checkpoint(a.checkpoint)
    family, spec, cfg = family_from_checkpoint(ckpt, ema=not a.raw)
    opts = sampling_options(family, a)
    root = a.data or Path(cfg.data.root)
    if a.interpolate:
        if family.latent is None:
            raise UserError(f"--interpolate: the {family.name} family has no latent space to walk "
                            "(it composes one step at a time)")
        ends = real_windows(root, spec, 2, a.seed, "--interpolate") if family.latent == "codes" else None
        probs = family.interpolate(a.interpolate, torch.Generator().manual_seed(a.seed), real=ends)
    else:
        probs = draw(family, a.num, a.seed, opts, root)
    rng = np.random.default_rng(a.seed)
    rolls = binarize(probs.numpy(), a.threshold, rng if a.bernoulli else None)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "interp" if a.interpolate else "sample"
    empty = 0
    for i, roll in enumerate(tqdm(rolls, desc="generate", unit="file", file=sys.stderr)):
        notes = roll_to_notes(roll, spec)
        empty += len(notes) == 0
        save_midi(notes_to_midi(notes, spec, tempo=a.tempo, program=a.program, velocity=a.velocity,
                                velocity_std=a.velocity_std, rng=rng), a.out / f"{stem}-{i:03d}.mid")
    if a.png:
        from .images import save_rolls_png, spec_look

        look = dict(spec_look(spec), meter=(4, 4))  # the files are written in 4/4
        for i, roll in enumerate(rolls):
            save_rolls_png(roll[None], a.out / f"{stem}-{i:03d}.png", nrow=1, **look)
        save_rolls_png(rolls, a.out / f"{stem}-grid.png", nrow=4, **look)
    print(f"wrote {len(rolls)} MIDI files to {a.out} from {path} ({family.name})"
          + (f" ({empty} without notes)" if empty else ""))
    return 0


if __name__ == "__main__":
    run(main)
