"""The yardstick's proof: real windows against broken ones, in graded strengths, on every figure.

    python scripts/yardstick_report.py                                   # bundled data, its shipped network
    python scripts/yardstick_report.py --data chunks/mine --out report.json

Sets: held-out training windows of one meter (files the feature network never trained on: the real
floor), and the same windows broken by each corruption of apollogan/corrupt.py. Each set is scored
against the validation windows of that meter: KD and FD in the feature network's space (95% bootstrap
intervals), precision and recall, FD over the hand-made per-roll statistics (the 15 of the overall
figure and the structure metrics, standardised on the real windows), the overall figure, and the
structure metrics' means. Prints a markdown table (docs/metrics.md holds one).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from apollogan import corrupt
from apollogan.cli import UserError, run
from apollogan.features import bootstrap, distances, find_network, frechet_distance, held_out, shard_digest
from apollogan.metrics import STRUCTURE, roll_metrics, steps_per_bar, structure_metrics
from apollogan.scoring import compare, reference_in_meter
from apollogan.shards import ShardSet


def hand_made(rolls, spec, bar) -> np.ndarray:
    """Per-roll statistics as a feature vector [N, 19]: the overall figure's 15 and the structure metrics."""
    m = roll_metrics(rolls, spec, bar) | structure_metrics(rolls, spec, bar)
    return np.stack([np.nan_to_num(v, nan=-1.0) for v in m.values()], axis=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("chunks/nottingham"))
    ap.add_argument("--features", type=Path, help="feature network (default: as evaluate finds it)")
    ap.add_argument("--meter", default="4/4")
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="JSON of every figure")
    a = ap.parse_args(argv)
    num, den = (int(v) for v in a.meter.split("/"))
    train, val = ShardSet(a.data, "train"), ShardSet(a.data, "val")
    spec = train.spec
    net, line = find_network(a.data, spec, train.manifest, a.features)
    print(line, file=sys.stderr)
    own = net.info.get("train_digest") == shard_digest(train.manifest)
    pool = np.flatnonzero(train.in_meter(num, den) & (held_out(train, net.info.get("holdout", 5)) if own else True))
    vpool = np.flatnonzero(val.in_meter(num, den))
    if min(len(pool), len(vpool)) < a.size:
        raise UserError(f"{a.data}: {len(pool)} held-out training and {len(vpool)} validation windows in {a.meter}, "
                        f"fewer than --size {a.size}")
    rng = np.random.default_rng(a.seed)
    base = train.get(np.sort(rng.choice(pool, a.size, replace=False)))
    real = val.get(np.sort(rng.choice(vpool, a.size, replace=False)))
    bar = int(steps_per_bar(num, den, spec.steps_per_beat))
    seen = np.flatnonzero(train.in_meter(num, den) & ~held_out(train, net.info.get("holdout", 5))) if own else pool
    sets = {"real (held-out training windows)": base,
            "real (training windows the network learned from)": train.get(np.sort(rng.choice(seen, a.size, replace=False))),
            **{k: f(base, spec, np.random.default_rng(a.seed + 1)) for k, f in corrupt.suite(bar).items()}}
    real_f = net.features(real)
    real_h = hand_made(real, spec, bar)
    mu, sd = real_h.mean(0), real_h.std(0) + 1e-9
    _, real_metrics = reference_in_meter(val, (num, den), progress=False)
    rows, t0 = {}, time.perf_counter()
    for name, x in sets.items():
        d = distances(net.features(x), real_f, rounds=a.rounds, seed=a.seed)
        hand = bootstrap(frechet_distance, (hand_made(x, spec, bar) - mu) / sd, (real_h - mu) / sd, a.rounds, a.seed)
        overall = compare(roll_metrics(x, spec, bar), real_metrics)["overall"]
        struct = {k: float(np.nanmean(v)) for k, v in structure_metrics(x, spec, bar).items()}
        rows[name] = {**d, "fd_hand_made": hand, "overall": overall, **struct}
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    def iv(v, digits):
        return f"{v['value']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]"
    head = ["set", "FD (headline)", "KD", "precision", "recall", "FD, hand-made", "overall", *STRUCTURE]
    print(f"{a.size} windows per set against {a.size} validation windows in {a.meter}; {line}\n")
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for name, r in rows.items():
        cells = [name, iv(r["fd"], 1), iv(r["kd"], 2), f"{r['precision']:.2f}", f"{r['recall']:.2f}",
                 iv(r["fd_hand_made"], 1), f"{r['overall']:.3f}", *(f"{r[k]:.3f}" for k in STRUCTURE)]
        print("| " + " | ".join(cells) + " |")
    if a.out:
        a.out.write_text(json.dumps({"network": line, "size": a.size, "meter": a.meter, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    run(main)
