"""Checkpoint selection measured: the last checkpoint, best.pt's rule and a pair-IoU rule, per run.

    python -m apollogan.ablate configs/ablations/rounds/r09-quick-select.yaml --jobs 2
    python scripts/select_checkpoints.py r09-quick-select --k 3 --num 1000
    python scripts/select_checkpoints.py r12-quick-long --curve

For every run of an ablation (runs/ablations/NAME/RUN, checkpoints/ablations/NAME/RUN) it reads
the training-time figures logged to TensorBoard at each kept checkpoint (``Metrics/overall`` and
``Metrics/pair_iou/generated|real``, from ``run.metrics_samples`` samples), scores every kept
checkpoint with ``python -m apollogan.evaluate --num N --seed 0 --no-memorisation``, and prints,
per run and as means, the figures of three choices:

- ``last``: the last checkpoint;
- ``best``: the lowest training-time overall figure (what training writes as best.pt);
- ``rule``: the lowest training-time overall figure among the checkpoints whose training-time
  pair IoU is at most K times the real windows' (``best`` when none is).

With ``--curve`` it scores every kept checkpoint instead and prints, per step, each run's
1,000-sample overall figure (pair IoU) and, per cell, their mean over its runs: how a preset's runs go on
with more steps (round 12, ``r12-quick-long``).

Each checkpoint's scores are cached as JSON beside it (``step-NNNNNNN.eval-N.json``), so a second
call only prints. Both rules choose on the validation windows the checkpoints are then scored
against, so their figures are optimistic; the comparison between them is the point. With
``--choose-on train`` they choose on figures of each kept checkpoint against the training windows
instead (``--select-num`` samples, seed 1, cached the same way; the pair IoU limit stays K times
the validation windows' own pair IoU, a property of the data rather than of any checkpoint), and
the chosen checkpoint's 1,000-sample validation figure is an honest one:

    python scripts/select_checkpoints.py r31-quick-key7 --k 3 --choose-on train
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import sys
from pathlib import Path

from apollogan.checkpoint import step_checkpoints, too_alike

ROOT = Path(__file__).resolve().parent.parent


def cell_of(run: str) -> str:
    """An ablation run's cell: its name without the -sSEED the runner appends."""
    return re.sub(r"-s\d+$", "", run)


def training_figures(run_dir: Path) -> dict[int, dict]:
    """step -> {overall, pair_iou, real_pair_iou} from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = {"overall": "Metrics/overall", "pair_iou": "Metrics/pair_iou/generated",
            "real_pair_iou": "Metrics/pair_iou/real"}
    if not set(tags.values()) <= set(acc.Tags()["scalars"]):
        raise SystemExit(f"{run_dir}: no training-time metrics in its events (train with run.metrics_every)")
    out: dict[int, dict] = {}
    for key, tag in tags.items():
        for ev in acc.Scalars(tag):  # a resumed run logs a step again: the later value wins
            out.setdefault(ev.step, {})[key] = ev.value
    return out


def scored(ckpt: Path, num: int, split: str = "val", seed: int = 0) -> dict:
    """``num``-sample evaluation of one checkpoint against the windows of ``split``, cached beside it."""
    cache = ckpt.with_suffix(f".eval-{num}.json" if (split, seed) == ("val", 0) else f".eval-{split}-{num}-s{seed}.json")
    if not cache.exists():
        from apollogan.evaluate import main as evaluate

        with contextlib.redirect_stdout(io.StringIO()):
            rc = evaluate(["--checkpoint", str(ckpt), "--num", str(num), "--seed", str(seed), "--no-memorisation",
                           "--split", split, "--out", str(cache)])
        if rc:
            raise SystemExit(f"{ckpt}: evaluate exited with {rc}")
    res = json.loads(cache.read_text())
    return {"overall": res["overall"], "pair_iou": res["diversity"]["generated_pair_iou"],
            "real_pair_iou": res["diversity"]["real_pair_iou"],
            "density": res["metrics"]["note_density"]["generated_mean"]}


def choose(train: dict[int, dict], steps: list[int], k: float) -> dict[str, int]:
    best = min(steps, key=lambda s: train[s]["overall"])
    ok = [s for s in steps if not too_alike(train[s]["pair_iou"], train[s]["real_pair_iou"], k)]
    return {"last": max(steps), "best": best, "rule": min(ok, key=lambda s: train[s]["overall"]) if ok else best}


def curve(runs: list[Path], ckpt_root: Path, num: int, k: float) -> int:
    """Every kept checkpoint of every run scored; a table of runs x steps and each cell's mean per step."""
    table: dict[str, dict[int, dict]] = {}
    for run in runs:
        kept = step_checkpoints(ckpt_root / run.name)
        if not kept:
            print(f"{run.name}: no kept checkpoint in {ckpt_root / run.name}; left out", file=sys.stderr)
        for s in sorted(kept):
            print(f"{run.name}: scoring step {s}", file=sys.stderr)
            table.setdefault(run.name, {})[s] = scored(kept[s], num)
    steps = sorted({s for figs in table.values() for s in figs})
    print("| run | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("| --- |" + " --- |" * len(steps))
    for name, figs in table.items():
        print(f"| {name} | " + " | ".join(f"{figs[s]['overall']:.2f} ({figs[s]['pair_iou']:.2f})" if s in figs else "-"
                                          for s in steps) + " |")
    for cell in dict.fromkeys(cell_of(name) for name in table):  # one mean row per cell
        figs_of = [figs for name, figs in table.items() if cell_of(name) == cell]
        means = []
        for s in steps:
            fs = [figs[s] for figs in figs_of if s in figs]
            over = sum(too_alike(f["pair_iou"], f["real_pair_iou"], k) for f in fs)
            means.append(f"{statistics.mean(f['overall'] for f in fs):.2f} ({over} of {len(fs)} above {k:g}x)" if fs
                         else "-")
        print(f"| mean of {cell} (runs with pair IoU above the limit) | " + " | ".join(means) + " |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/select_checkpoints.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ablation", help="the ablation's name (runs/ablations/NAME)")
    ap.add_argument("--k", type=float, default=3.0, help="pair IoU limit, times the real windows' (default 3)")
    ap.add_argument("--num", type=int, default=1000, help="samples per checkpoint evaluation (default 1000)")
    ap.add_argument("--runs", default="runs", type=Path, help="runs folder (default runs)")
    ap.add_argument("--checkpoints", default="checkpoints", type=Path, help="checkpoints folder (default checkpoints)")
    ap.add_argument("--curve", action="store_true", help="score every kept checkpoint and print the figures per step")
    ap.add_argument("--choose-on", choices=("tensorboard", "train"), default="tensorboard",
                    help="the figures the choices are made on: the training-time ones logged against the validation "
                         "windows (default), or SELECT_NUM samples (seed 1) of each kept checkpoint against the "
                         "training windows, which leaves the validation windows unseen until the chosen one is scored")
    ap.add_argument("--select-num", type=int, default=256, help="samples per checkpoint with --choose-on train "
                                                                 "(default 256, as training's run.metrics_samples)")
    a = ap.parse_args(argv)
    runs = sorted((a.runs / "ablations" / a.ablation).glob("*-s*"), key=lambda p: (
        cell_of(p.name), int(p.name.rsplit("-s", 1)[1])))
    runs = [r for r in runs if r.is_dir()]
    if not runs:
        raise SystemExit(f"{a.runs / 'ablations' / a.ablation}: no runs")
    if a.curve:
        return curve(runs, a.checkpoints / "ablations" / a.ablation, a.num, a.k)
    made_on = "training-time" if a.choose_on == "tensorboard" else f"{a.select_num} samples vs training windows"
    print(f"| run | checkpoints: step overall (pair IoU), {made_on} | last | best.pt | rule |")
    print("| --- | --- | --- | --- | --- |")
    picks = {c: [] for c in ("last", "best", "rule")}
    for run in runs:
        ckpt_dir = a.checkpoints / "ablations" / a.ablation / run.name
        kept = step_checkpoints(ckpt_dir)
        if a.choose_on == "train":
            print(f"{run.name}: scoring {len(kept)} checkpoints against the training windows", file=sys.stderr)
            train = {s: scored(p, a.select_num, "train", seed=1) for s, p in kept.items()}
            # the pair IoU limit stays the validation windows' (a property of the data, as in training)
            real = scored(kept[max(kept)], a.num)["real_pair_iou"] if kept else 0.0
            train = {s: {**f, "real_pair_iou": real} for s, f in train.items()}
        else:
            train = training_figures(run)
        steps = sorted(s for s in kept if s in train)
        if not steps:
            print(f"{run.name}: no kept checkpoint with training-time figures; skipped", file=sys.stderr)
            continue
        chosen = choose(train, steps, a.k)
        figs = {}
        for s in dict.fromkeys(chosen.values()):
            print(f"{run.name}: scoring step {s}", file=sys.stderr)
            figs[s] = scored(kept[s], a.num)
        cells = []
        for c, s in chosen.items():
            f = figs[s]
            picks[c].append(f)
            cells.append(f"{s}: {f['overall']:.2f} ({f['pair_iou']:.2f})")
        trail = ", ".join(f"{s} {train[s]['overall']:.2f} ({train[s]['pair_iou']:.2f})" for s in steps)
        print(f"| {run.name} | {trail} | " + " | ".join(cells) + " |")
    real = statistics.mean(f["real_pair_iou"] for fs in picks.values() for f in fs)
    print(f"\nreal pair IoU {real:.3f}; limit k = {a.k:g}")
    for c, fs in picks.items():
        over = sum(too_alike(f["pair_iou"], f["real_pair_iou"], a.k) for f in fs)
        print(f"{c}: mean overall {statistics.mean(f['overall'] for f in fs):.3f} over {len(fs)} runs, "
              f"{over} with pair IoU above {a.k:g}x real")
    return 0


if __name__ == "__main__":
    sys.exit(main())
