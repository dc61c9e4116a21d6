"""Train the feature network of a shard set: the space the headline figures (KD, FD) are measured in.

    python -m apollogan.embed --data chunks/nottingham            # writes chunks/nottingham/features.pt
    python -m apollogan.embed --data chunks/mine --steps 1500 --seed 1

The network learns from the set's training windows alone (every 5th source file held out, to
give the real floor windows it has never seen) by predicting each window's next bars from the
ones before; it is never shown broken music. evaluate, training's scored steps and ablate then
use it for the set's rolls. docs/metrics.md describes the task and how it was chosen; the
bundled tunes' network ships in apollogan/assets/.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from .cli import UserError, run
from .features import FILE, train_network
from .shards import ShardSet


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apollogan.embed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("chunks/nottingham"), help="shard set (default %(default)s)")
    ap.add_argument("--out", type=Path, help=f"where to write the network (default DATA/{FILE})")
    ap.add_argument("--steps", type=int, default=2000, help="training steps (default %(default)s: 4 minutes on a 2-core "
                    "AMD EPYC Zen 4 with AVX512, fp32)")
    ap.add_argument("--batch", type=int, default=64, help="windows per step (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.steps < 1 or a.batch < 2 or a.seed < 0:
        raise UserError("--steps must be at least 1, --batch at least 2 and --seed 0 or more")
    if a.threads:
        torch.set_num_threads(a.threads)
    shards = ShardSet(a.data, "train")
    out = a.out or a.data / FILE
    command = "python -m apollogan.embed " + shlex.join(sys.argv[1:] if argv is None else list(map(str, argv)))
    print(f"feature network for {a.data}: {len(shards)} training windows of {shards.spec.describe()}", file=sys.stderr)
    t0 = time.perf_counter()
    net = train_network(shards, steps=a.steps, batch=a.batch, seed=a.seed, progress=not a.quiet, command=command)
    net.info["train_seconds"] = round(time.perf_counter() - t0, 1)
    net.save(out)
    print(f"wrote {out}: {net.info['train_windows']} windows, {a.steps} steps in {net.info['train_seconds']} s, "
          f"final task accuracy {net.info['final_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    run(main)
