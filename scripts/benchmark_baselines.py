"""The trivial baselines of the Nottingham likelihood benchmark, computed from the benchmark file.

    python scripts/benchmark_baselines.py PATH/Nottingham.mat --out baselines.json
    python scripts/benchmark_baselines.py PATH/Nottingham.pickle --fit train

Each is scored on frames 1..T-1 of every test tune, each frame predicted from the ones before it,
in nats per frame summed over the 88 keys, exactly as evaluate --likelihood scores a model:

    uniform        every key on with probability 1/2 (88 ln 2)
    unigram        each key on with its frequency in the fitted tunes
    markov         each key on with its frequency given the same key in the frame before
    copy_previous  the frame before, as a prediction: frame accuracy TP / (TP + FP + FN)

Frequencies are counts with add-1/2 smoothing over the fitted tunes: the train and valid splits
(default: the data a final model may see), or --fit train. docs/benchmark.md has the figures.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apollogan.benchmark import baselines, read_benchmark
from apollogan.cli import atomic_write_json, run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/benchmark_baselines.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path, help="the benchmark file: Nottingham.mat or Nottingham.pickle")
    ap.add_argument("--fit", choices=("train+valid", "train"), default="train+valid",
                    help="the tunes the unigram and Markov frequencies are counted on (default %(default)s)")
    ap.add_argument("--out", type=Path, help="JSON file for the figures")
    a = ap.parse_args(argv)
    tunes = read_benchmark(a.file)
    fit = tunes["train"] + (tunes["val"] if a.fit == "train+valid" else [])
    res = {"file": str(a.file), "fit": a.fit, "split": "test", **baselines(fit, tunes["test"])}
    print(f"test split, {res['frames']} frames predicted (frequencies from {a.fit}):", file=sys.stderr)
    for k in ("uniform", "unigram", "markov"):
        print(f"{k:14s} NLL per frame {res[k]['nll_per_frame']:.2f}")
    print(f"copy_previous  frame accuracy {res['copy_previous']['frame_accuracy']:.1%}")
    if a.out:
        atomic_write_json(a.out, res)
        print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
