"""MIDI files (and PNGs) from a checkpoint; the model is rebuilt from the config stored in it.

    python -m apollogan.generate --checkpoint checkpoints/quick-001/last.pt --num 8 --out samples/quick --png
    python -m apollogan.generate --checkpoint quick-001 --bernoulli --tempo 100 --program 24
    python -m apollogan.generate --checkpoint quick-001 --interpolate 8 --out samples/walk
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import generator_from_checkpoint, resolve_checkpoint
from .cli import UserError, run
from .midi import binarize, notes_to_midi, roll_to_notes, save_midi


@torch.no_grad()
def sample_rolls(g, n: int, seed: int, batch: int = 64, device="cpu") -> np.ndarray:
    """Probabilities [n, C, P, T] from noise drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = [g(g.noise(min(batch, n - i), gen).to(device)).float().cpu() for i in range(0, n, batch)]
    return torch.cat(out).numpy()


@torch.no_grad()
def interpolate_rolls(g, k: int, seed: int, device="cpu") -> np.ndarray:
    """k rolls along the straight line between two noise points."""
    gen = torch.Generator().manual_seed(seed)
    a, b = g.noise(1, gen), g.noise(1, gen)
    w = torch.linspace(0, 1, k).view(-1, *[1] * (a.dim() - 1))
    return g(((1 - w) * a + w * b).to(device)).float().cpu().numpy()


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
    ap.add_argument("--interpolate", type=int, metavar="K", help="K files along a line between two noise points")
    ap.add_argument("--raw", action="store_true", help="use the raw generator, not its EMA copy")
    a = ap.parse_args(argv)
    if not 0 <= a.program <= 127 or a.tempo <= 0 or a.num < 1 or (a.interpolate is not None and a.interpolate < 2):
        raise UserError("--program must be 0..127, --tempo and --num positive, --interpolate at least 2")
    path, ckpt = resolve_checkpoint(a.checkpoint)
    g, spec, _ = generator_from_checkpoint(ckpt, ema=not a.raw)
    probs = interpolate_rolls(g, a.interpolate, a.seed) if a.interpolate else sample_rolls(g, a.num, a.seed)
    rng = np.random.default_rng(a.seed)
    rolls = binarize(probs, a.threshold, rng if a.bernoulli else None)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "interp" if a.interpolate else "sample"
    empty = 0
    for i, roll in enumerate(tqdm(rolls, desc="generate", unit="file", file=sys.stderr)):
        notes = roll_to_notes(roll, spec)
        empty += len(notes) == 0
        save_midi(notes_to_midi(notes, spec, tempo=a.tempo, program=a.program, velocity=a.velocity,
                                velocity_std=a.velocity_std, rng=rng), a.out / f"{stem}-{i:03d}.mid")
    if a.png:
        from .images import save_rolls_png

        for i, roll in enumerate(rolls):
            save_rolls_png(roll[None], a.out / f"{stem}-{i:03d}.png", nrow=1)
        save_rolls_png(rolls, a.out / f"{stem}-grid.png", nrow=4)
    print(f"wrote {len(rolls)} MIDI files to {a.out} from {path}" + (f" ({empty} without notes)" if empty else ""))
    return 0


if __name__ == "__main__":
    run(main)
