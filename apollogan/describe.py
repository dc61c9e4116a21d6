"""What is in a shard set: counts, density, pitch histograms, losses, and a picture.

    python -m apollogan.describe chunks/nottingham
    python -m apollogan.describe chunks/nottingham --png inspect.png --samples 16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cli import UserError, run
from .shards import ShardSet

PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def split_stats(shards: ShardSet, batch: int = 1024) -> dict:
    """Streamed over batches of windows, so a large set needs little memory."""
    spec, n = shards.spec, len(shards)
    cells = np.zeros(n)
    part_cells = np.zeros(spec.parts)
    pitch_hist = np.zeros(spec.pitches, np.int64)
    for lo in tqdm(range(0, n, batch), desc=f"inspect {shards.split}", unit="batch", file=sys.stderr, leave=False):
        rolls = shards.get(np.arange(lo, min(lo + batch, n)))
        x = spec.sustain(rolls)  # every part's sustain [B, P, T]
        cells[lo:lo + len(x)] = x.sum(axis=(1, 2))
        pitch_hist += x.sum(axis=(0, 2))
        part_cells += rolls[:, :: spec.channels_per_part].sum(axis=(0, 2, 3))
    pc_hist = np.bincount(spec.pitch_classes, weights=pitch_hist, minlength=12)
    density = cells / (spec.pitches * spec.steps)
    return {"windows": n, "density_mean": float(density.mean()) if n else float("nan"),
            "density_std": float(density.std()) if n else float("nan"),
            "pitch_hist": pitch_hist, "pc_hist": pc_hist,
            "part_density": part_cells / max(n * spec.pitches * spec.steps, 1)}


def _bar(frac: float, width: int = 40) -> str:
    return "#" * int(round(frac * width))


def report(root) -> tuple[str, dict]:
    m = ShardSet(root, "train", verify=False).manifest
    splits = [s for s in ("train", "val", "test") if s in m["shards"]]  # a benchmark file's set has a test split
    stats = {s: split_stats(ShardSet(root, s)) for s in splits}
    spec, c, st = m["spec"], m["counts"], m["stats"]
    spec_obj = ShardSet(root, "train", verify=False).spec
    notes = max(st.get("notes", 0), 1)
    lines = [f"shard set {root}: spec {spec}",
             f"files: {c['converted']} converted of {c['files']}, skipped {c['skipped'] or 'none'}"]
    for s in splits:
        d = stats[s]
        lines.append(f"{s}: {d['windows']} windows from {c['sources_per_split'][s]} files; "
                     f"note density {d['density_mean']:.4f} +- {d['density_std']:.4f} (active cells / cells)"
                     + ("; by part: " + ", ".join(f"{name} {v:.4f}" for name, v in zip(spec_obj.part_names,
                                                                                     d["part_density"]))
                        if spec_obj.parts > 1 else ""))
    lines.append(f"notes outside the pitch window: {st.get('notes_dropped_pitch', 0)} dropped, "
                 f"{st.get('notes_folded', 0)} folded (of {st.get('notes', 0)})")
    lines.append(f"quantisation loss: {st.get('onsets_off_grid', 0) / notes:.2%} of onsets and "
                 f"{st.get('offsets_off_grid', 0) / notes:.2%} of offsets off the {spec['steps_per_beat']}-steps-per-beat grid")
    lines.append(f"sparse windows dropped: {st.get('windows_dropped_sparse', 0)}")
    ph = stats["train"]["pitch_hist"]
    pc = stats["train"]["pc_hist"]
    lines.append("train pitch-class histogram (active cells):")
    for i in range(12):
        f = pc[i] / max(pc.sum(), 1)
        lines.append(f"  {PITCH_NAMES[i]:<2} {f:6.2%} {_bar(f / max(pc.max() / max(pc.sum(), 1), 1e-9))}")
    lines.append("train pitch histogram (active cells, rows with any):")
    for p in np.nonzero(ph)[0][::-1]:
        midi = spec["low"] + p
        f = ph[p] / ph.sum()
        lines.append(f"  {PITCH_NAMES[midi % 12] + str(midi // 12 - 1):<4} {midi:3d} {f:6.2%} {_bar(ph[p] / ph.max())}")
    return "\n".join(lines), stats


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apollogan.describe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chunks", type=Path, metavar="CHUNKS_DIR")
    ap.add_argument("--png", type=Path, help="grid of sample rolls (default CHUNKS_DIR/inspect.png)")
    ap.add_argument("--samples", type=int, default=16, help="rolls in the grid (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="which windows are pictured (default %(default)s)")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.samples < 0:
        raise UserError("--samples: must be 0 (no picture) or more")
    text, _ = report(a.chunks)
    print(text)
    shards = ShardSet(a.chunks, "train", verify=False)
    if len(shards) and a.samples:
        from .images import save_rolls_png, spec_look, window_look

        pick = np.sort(np.random.default_rng(a.seed).choice(len(shards), min(a.samples, len(shards)), replace=False))
        png = a.png or a.chunks / "inspect.png"
        save_rolls_png(shards.get(pick), png, nrow=4, **spec_look(shards.spec), **window_look(shards.records, pick))
        print(f"sample rolls (train windows {pick.tolist()}): {png}")
    return 0


if __name__ == "__main__":
    run(main)
