"""Evaluation speed: the metric set and the exact nearest-window search, on the bundled data.

    python scripts/bench_eval.py                        # 1,000 samples vs chunks/nottingham train
    python scripts/bench_eval.py --num 5000 --data chunks/mine

Goals on a 2-core CPU: 1,000 samples against the whole bundled training set in under a
minute; the yardstick (structure metrics, feature distances with their bootstrap intervals and
the real floor) adds at most 5 s. Samples are random rolls at the data's note density (the search costs the same
whatever they hold); the memorisation figure is checked by planting one training window.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from apollogan.data import ensure_shards
from apollogan.metrics import compute_metrics, structure_metrics
from apollogan.scoring import feature_figures, memorisation, reference_metrics
from apollogan.shards import ShardSet


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--data", type=Path, default=Path("chunks/nottingham"))
    a = ap.parse_args(argv)
    root = ensure_shards(a.data) if a.data == Path("chunks/nottingham") else a.data
    train = ShardSet(root, "train")
    spec = train.spec
    rng = np.random.default_rng(0)
    samples = rng.random((a.num, spec.pitches, spec.steps)) < 0.064
    samples[7] = train.get([len(train) // 2])[0, 0]
    print(f"{a.num} samples vs {len(train)} training windows of {spec.pitches}x{spec.steps}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t = time.perf_counter()
    compute_metrics(samples, spec.low, spec.steps_per_beat, 16)
    print(f"metric set ({len(compute_metrics(samples[:1], spec.low, spec.steps_per_beat, 16))} metrics): "
          f"{time.perf_counter() - t:.2f} s")
    rolls = samples[:, None]
    t = time.perf_counter()
    structure_metrics(rolls, spec, 16)
    structure_s = time.perf_counter() - t
    t = time.perf_counter()
    f = feature_figures(rolls, root, (4, 4))
    feature_s = time.perf_counter() - t
    print(f"yardstick: structure metrics {structure_s:.2f} s, feature distances {feature_s:.2f} s "
          f"({f['features']['size']} per set, {f['features']['rounds']} resamplings; {f['features']['network']}): "
          f"{structure_s + feature_s:.2f} s added")
    (Path(root) / "reference-val.npz").unlink(missing_ok=True)
    t = time.perf_counter()
    reference_metrics(root, "val", progress=False)
    print(f"real reference (val split, uncached): {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    m = memorisation(samples, train, progress=False)
    dt = time.perf_counter() - t
    print(f"nearest-window search: {dt:.2f} s ({a.num * len(train) / dt / 1e6:.1f}M pairs/s); "
          f"planted copy found: sample {m['closest'][0]['sample']} IoU {m['closest'][0]['iou']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
