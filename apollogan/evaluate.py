"""Score generated music against real music with the same metrics, and check for copying.

    python -m apollogan.evaluate --checkpoint quick-001 --num 1000
    python -m apollogan.evaluate --midi some_folder/ --data chunks/nottingham --out eval.json
    python -m apollogan.evaluate --checkpoint lstm-001 --prime 16 --temperature 0.9
    python -m apollogan.evaluate --checkpoint cond_gan-001 --against parts-dcgan-001
    python -m apollogan.evaluate --checkpoint lstm-bench-001 --likelihood test --out test.json

Every model family is sampled the way generate samples it (the LSTM primed with real
validation windows, --prime 0 for none); a family with held-out figures of its own (the
LSTM's NLL per frame and frame accuracy, the autoencoders' reconstruction F1) also reports
them on the whole validation split.

For each metric: mean and std of the generated and the real validation windows, the gap
(generated minus real mean, in real standard deviations), the Wasserstein-1 distance and
the KS statistic between the two distributions. The overall figure is the mean over
metrics of W1 divided by the real std (0 for identical distributions; scale-free).
Memorisation: every generated roll's nearest training window by IoU of active cells,
found exactly; the share above 0.5 / 0.8 / 0.95 and the closest cases. --split train compares
with the training windows instead: a choice among a run's checkpoints made on them leaves the
validation windows unseen, so the chosen checkpoint's validation figure is not optimistic.

Rolls with parts (melody and accompaniment) are scored on the melody ("melody/..."), on all
parts merged ("merged/..."), and by chord-tone rate and melody-accompaniment tonal distance.
A conditional model (cond_gan) draws its melodies over the accompaniment of validation
windows, and is also scored beside the real melodies of the same windows and, with
--against RUN, beside another model's melodies over the same chords.

--likelihood SPLIT scores a likelihood family (lstm, every output) on the whole tunes of a
benchmark shard set's split instead, as the Nottingham benchmark does: NLL per frame in nats
over frames 1..T-1 of every tune, and frame accuracy (docs/benchmark.md).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from .arguments import evaluate_parser, meter_arg
from .checkpoint import family_from_checkpoint, resolve_checkpoint
from .cli import UserError, atomic_write_json, run
from .metrics import steps_per_bar
from .midi import binarize
from .sampling import draw, pick_device, real_windows, sampling_options
from .scoring import (
    FEATURE_SIZE,
    SPLIT_WORDS,
    VALIDATION_WINDOWS,
    conditioning,
    encode_midi_folder,
    evaluate_rolls,
    feature_figures,
    same_meter,
    window_bars,
)
from .shards import ShardSet
from .spec import RollSpec


def load_against(path, spec: RollSpec, num: int, seed: int, threshold: float, data,
                 device="cpu", ema: bool = True) -> tuple[str, np.ndarray, RollSpec]:
    """Rolls of another checkpoint (an unconditional model) to set beside a conditional one."""
    where, ckpt = resolve_checkpoint(path, best=True)
    family, other, cfg = family_from_checkpoint(ckpt, device=device, ema=ema)
    same = ("low", "pitches", "steps", "steps_per_beat")
    if any(getattr(other, k) != getattr(spec, k) for k in same):
        raise UserError(f"--against {path}: its rolls ({other.describe()}) are not on the grid of the "
                        f"conditional model ({spec.describe()})")
    rolls = draw(family, num, seed, dict(family.sample_options), data or Path(cfg.data.root), device).numpy() >= threshold
    return f"{ckpt.get('run_name') or where} ({family.name})", rolls, other


def markdown(result: dict) -> str:
    meter = f" in {result['meter']}" if result.get("meter", "").count("/") else ""
    which = SPLIT_WORDS[result.get("split", "val")]
    lines = [f"{result['samples']} samples vs {result['real_windows']} real {which} windows{meter}",
             "", "| metric | generated | real | gap (real std) | W1 | KS |", "| --- | --- | --- | --- | --- | --- |"]
    for k, v in result["metrics"].items():
        lines.append(f"| {k} | {v['generated_mean']:.3f} ± {v['generated_std']:.3f} | {v['real_mean']:.3f} ± "
                     f"{v['real_std']:.3f} | {v['gap']:+.2f} | {v['w1']:.3f} | {v['ks']:.3f} |")
    lines += ["", f"overall (mean W1 / real std over metrics): {result['overall']:.3f}"]
    if result.get("kd"):
        f = result["features"]

        def fig(k, digits):
            v = result[k]
            return f"{v['value']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]"
        lines += ["", f"feature distances, {f['size']} samples against {f['size']} real {which} windows "
                      f"(95% bootstrap intervals; the real floor is {f['size']} training windows against the same):",
                  "", "| figure | generated | real floor |", "| --- | --- | --- |",
                  f"| FD (headline) | {fig('fd', 2)} | {fig('fd_floor', 2)} |",
                  f"| KD | {fig('kd', 3)} | {fig('kd_floor', 3)} |",
                  f"| precision | {result['precision']:.3f} | {result['precision_floor']:.3f} |",
                  f"| recall | {result['recall']:.3f} | {result['recall_floor']:.3f} |", "", f["network"]]
    if result.get("structure"):
        lines += ["", "structure (beside the overall figure, not in it):", "",
                  "| metric | generated | real | gap (real std) | W1 |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {v['generated_mean']:.3f} | {v['real_mean']:.3f} | {v['gap']:+.2f} | {v['w1']:.3f} |"
                  for k, v in result["structure"].items()]
    d = result.get("diversity")
    if d:
        lines += ["", f"diversity: two samples share {d['generated_pair_iou']:.3f} of their active cells (IoU, mean over "
                      f"pairs), two real {which} windows {d['real_pair_iou']:.3f}"]
    m = result.get("memorisation")
    if m:
        lines += ["", f"memorisation: nearest training window IoU > 0.5: {m['above_0.5']:.1%}, > 0.8: "
                      f"{m['above_0.8']:.1%}, > 0.95: {m['above_0.95']:.1%} (mean nearest IoU {m['mean_nearest_iou']:.3f})",
                  "closest: " + "; ".join(f"sample {c['sample']} ~ train window {c['train_window']} "
                                           f"({c['source']} @ {c['offset']}) IoU {c['iou']:.3f}"
                                           for c in m["closest"])]
    cond = result.get("conditioning")
    if cond:
        lines += ["", f"melodies over the accompaniment of {cond['windows']} validation windows:", "",
                  "| melodies | chord-tone rate | tonal distance to the accompaniment |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v['chord_tone_rate']:.3f} | {v['tonal_distance_parts']:.3f} |" for k, v in cond["rows"].items()]
    if result.get("validation"):
        v = dict(result["validation"])
        lines += ["", f"the model's own figures on {v.pop('windows')} validation windows: " +
                  ", ".join(f"{k.split('/')[-1]} {x:.4f}" for k, x in v.items())]
    if result.get("twins_left_out"):
        lines += ["", f"left out {len(result['twins_left_out'])} file(s) named like a scored one (x.npz beside "
                      "x.mid): each tune scored once"]
    if result.get("skipped"):
        lines += ["", f"skipped {len(result['skipped'])} file(s): " +
                  "; ".join(f"{s['path']}: {s['reason']}" for s in result["skipped"])]
    return "\n".join(lines)


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def build_parser():
    return evaluate_parser(__doc__)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.num < 1:
        raise UserError("--num: must be at least 1")
    if a.feature_size is not None and a.feature_size < 3:
        raise UserError("--feature-size: must be at least 3 (a figure compares sets of windows)")
    if a.no_features and (a.features or a.feature_size):
        raise UserError("--no-features: skips the feature distances; --features and --feature-size ask for them")
    if a.meter:
        meter_arg(a.meter)  # before any work
    if a.likelihood:
        return likelihood_main(a)
    skipped, twins, validation, family_name, cond, meter = [], [], None, None, None, None
    device = pick_device(a.device)
    if a.checkpoint:
        path, ckpt = resolve_checkpoint(a.checkpoint, best=True)
        family, spec, cfg = family_from_checkpoint(ckpt, device=device, ema=not a.raw)
        num, den = meter_arg(a.meter or cfg.run.meter)
        opts = sampling_options(family, a)
        root = a.data or Path(cfg.data.root)
        val = ShardSet(root, "val", spec=spec)  # refuse data of another spec, or corrupt, before the work
        if len(val) and not family.wants_real(**opts):  # and a meter the compared split does not have
            same_meter(val if a.split == "val" else ShardSet(root, a.split, spec=spec, verify=False), (num, den))
        if a.against and not family.conditional:
            raise UserError(f"--against: compares a conditional model with another; {a.checkpoint} is {family.name}")
        against = None
        if a.against:
            against = load_against(a.against, spec, a.num, a.seed, a.threshold, a.data, device, ema=not a.raw)
        rng = np.random.default_rng(a.seed) if a.bernoulli else None
        rolls = binarize(draw(family, a.num, a.seed, opts, root, device).numpy(), a.threshold, rng)
        bar, meter = steps_per_bar(num, den, spec.steps_per_beat), (num, den)
        if family.conditional:  # the same windows draw() took the accompaniment from
            real = real_windows(root, spec, a.num, a.seed, "a conditional model")
            other = torch.roll(real, 1, dims=0)  # each window's melody drawn over its neighbour's chords
            control = binarize(family.sample(a.num, torch.Generator().manual_seed(a.seed), real=other,
                                             device=device).numpy(),
                               a.threshold, rng)
            cond = conditioning(rolls, real.numpy(), spec, against, control)
        if family.wants_real(**opts) and len(val):  # rolls that continue or accompany real windows keep their meters
            bar, meter = window_bars(val)[val.pick_indices(a.num, a.seed)], None
        source, family_name = str(path) + (" (raw weights)" if a.raw else ""), family.name
        if len(val):  # the family's own held-out figures (LSTM likelihood, reconstruction)
            windows = val.pick(min(len(val), VALIDATION_WINDOWS), a.seed)
            figures = family.validate(torch.from_numpy(windows), device=device)
            validation = {"windows": len(windows), **figures} if figures else None
    else:
        if a.against:
            raise UserError("--against: compares a conditional checkpoint with another; not for --midi")
        if any(v is not None for v in (a.prime, a.temperature, a.top_p)) or a.raw:
            raise UserError("--prime, --temperature, --top-p and --raw sample a checkpoint; --midi files are scored "
                            "as they are")
        root = a.data or Path("chunks/nottingham")
        spec = ShardSet(root, "val", verify=False).spec
        rolls, bar, skipped, twins = encode_midi_folder(a.midi, spec)
        source = str(a.midi)
    result = {"source": source, "family": family_name, "data": str(root),
              **evaluate_rolls(rolls, root, bar, memo=not a.no_memorisation, meter=meter, device=device,
                              split=a.split)}
    if not a.no_features:
        try:
            result.update(feature_figures(rolls, root, meter, a.feature_size or FEATURE_SIZE, a.features, seed=a.seed,
                                          split=a.split))
        except UserError as e:
            if a.features or a.feature_size:  # asked for: a refusal is an error
                raise
            print(f"feature distances skipped: {e}", file=sys.stderr)
            result["features"] = {"skipped": str(e)}
    result["skipped"] = skipped
    if twins:
        result["twins_left_out"] = twins
    if cond:
        result["conditioning"] = cond
    if validation:
        result["validation"] = validation
    print(markdown(result))
    if a.out:
        atomic_write_json(a.out, _nan_to_none(result))  # strict JSON: an undefined value is null
        print(f"wrote {a.out}")
    return 0


def likelihood_main(a) -> int:
    """evaluate --likelihood SPLIT: the benchmark's figure of a checkpoint, on whole tunes."""
    from .benchmark import read_tunes, tune_likelihood

    if not a.checkpoint:
        raise UserError("--likelihood: scores a checkpoint; --midi files have no likelihood")
    path, ckpt = resolve_checkpoint(a.checkpoint, best=True)
    device = pick_device(a.device)
    family, spec, cfg = family_from_checkpoint(ckpt, device=device, ema=not a.raw)
    if not getattr(family, "likelihood", False):
        raise UserError(f"--likelihood: the {family.name} family has no likelihood (the lstm family has)")
    root = a.data or Path(cfg.data.root)
    ShardSet(root, "train", spec=spec, verify=False)  # data of another spec is refused before the work
    tunes = read_tunes(root, a.likelihood)
    res = tune_likelihood(family, tunes, device=device)
    result = {"source": str(path) + (" (raw weights)" if a.raw else ""), "family": family.name, "data": str(root),
              "output": getattr(cfg.model, "output", None), "split": a.likelihood, "likelihood": res}
    print(f"{a.likelihood}: NLL per frame {res['nll_per_frame']:.4f} nats, frame accuracy {res['frame_accuracy']:.4f} "
          f"({res['frames']} frames predicted, {res['tunes']} tunes)")
    if a.out:
        atomic_write_json(a.out, _nan_to_none(result))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    run(main)
