"""Shard windows back to MIDI (and PNG), to hear and see exactly what a model trains on.

    python -m apollogan.decode chunks/nottingham --out decoded --limit 8 --png
    python -m apollogan.decode chunks/nottingham --out decoded --split val --index 0 5 9
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cli import UserError, run
from .midi import check_programs, notes_to_midi, part_names, roll_to_parts, save_midi
from .shards import ShardSet


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apollogan.decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chunks", type=Path, metavar="CHUNKS_DIR", help="a shard set made by apollogan.preprocess")
    ap.add_argument("--out", type=Path, required=True, help="folder for the MIDI (and PNG) files")
    ap.add_argument("--split", choices=["train", "val"], default="train")
    ap.add_argument("--index", type=int, nargs="+", metavar="I", help="window indices (default: the first --limit)")
    ap.add_argument("--limit", type=int, default=16, help="how many windows when no --index (default %(default)s)")
    ap.add_argument("--png", action="store_true", help="also write a PNG per window and a grid of all")
    ap.add_argument("--program", type=int, nargs="+", default=[0], metavar="P",
                    help="General MIDI program, one for every part or one per part (default 0: piano)")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    shards = ShardSet(a.chunks, a.split)
    programs = check_programs(a.program, shards.spec)
    n = len(shards)
    idx = np.asarray(a.index if a.index else range(min(a.limit, n)), dtype=np.int64)
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        raise UserError(f"--index {bad[0]} is out of range: the {a.split} split has {n} windows")
    if len(idx) == 0:
        raise UserError(f"the {a.split} split of {a.chunks} has no windows")
    rolls = shards.get(idx)
    a.out.mkdir(parents=True, exist_ok=True)
    from .images import save_rolls_png, spec_look, window_look

    draw = spec_look(shards.spec)
    look = window_look(shards.records, idx)  # each window's meter and shift from its bar line

    for j, (i, roll) in enumerate(zip(tqdm(idx, desc="decode", unit="window", file=sys.stderr), rolls)):
        rec = {k: int(v[i]) for k, v in shards.records.items()}
        src = shards.source_of(i)
        mid = notes_to_midi(roll_to_parts(roll, shards.spec), shards.spec, tempo=src["tempo"], program=programs,
                            time_signature=(rec["ts_num"], rec["ts_den"]), names=part_names(shards.spec))
        stem = f"{a.split}-{i:06d}"
        save_midi(mid, a.out / f"{stem}.mid", durable=False)
        if a.png:
            save_rolls_png(roll[None], a.out / f"{stem}.png", nrow=1, meter=look["meter"][j], shift=look["shift"][j],
                           **draw)
        print(f"{stem}.mid  {src['path']} at step {rec['offset']}, transpose {rec['transpose']:+d}, "
              f"shift {rec['shift']:+d}, {rec['ts_num']}/{rec['ts_den']}")
    if a.png:
        save_rolls_png(rolls, a.out / f"{a.split}-grid.png", nrow=4, **look, **draw)
    print(f"wrote {len(idx)} MIDI files to {a.out}")
    return 0


if __name__ == "__main__":
    run(main)
