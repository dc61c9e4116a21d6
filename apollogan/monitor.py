"""What a run shows and keeps beside its training steps: TensorBoard (pictures, audio, statistics,
the full metric set), and best.pt, the scored step whose figure was lowest.

The training loop makes one Monitor (on rank 0) and calls it once per step, after the step;
everything here runs with the clock aside, so samples/s counts the training steps alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .checkpoint import reconcile_best, save_best, too_alike, with_weights
from .cli import UserError, atomic_write_json
from .config import Config, meter_of
from .data import summary
from .images import roll_grid, spec_look, window_look
from .metrics import TRAINING_STATS, steps_per_bar
from .scoring import FEATURE_SIZE, SPLIT_WORDS, compare, evaluate_rolls, feature_figures, reference_in_meter, same_meter
from .shards import ShardSet
from .spec import RollSpec


@dataclass
class Sampling:
    """The real windows a run samples and scores with, chosen once at its start."""

    has_val: bool  # the metrics against real data run (the validation split has windows in run.meter)
    best_on: str | None  # the windows best.pt is chosen on: "train", "val", or None (no best.pt)
    real_ref: np.ndarray  # training windows pictured beside free samples, and their statistics
    real_look: dict
    real_stats: dict
    val_windows: torch.Tensor | None = None  # the family's own held-out figures (NLL, reconstruction)
    grid_real: torch.Tensor | None = None  # primers / accompaniment of the pictured samples
    grid_look: dict | None = None
    metrics_real: torch.Tensor | None = None  # ... and of the scored samples, with their bars
    metrics_bars: np.ndarray | None = None
    features: object = None  # the feature network (FeatureNet), loaded once: Metrics/kd and Metrics/fd (None: not logged)
    val_tunes: list | None = None  # a benchmark set's whole validation tunes: a likelihood family's Val/tune_* figures


def look_of(look: dict, n: int) -> dict:
    """The meters and shifts of the first ``n`` pictured windows."""
    return {k: v[:n] for k, v in look.items()}


def roll_stats(rolls: np.ndarray, spec: RollSpec) -> dict:
    x = spec.sustain(rolls.astype(bool))  # every part
    vals = {k: f(x) for k, f in TRAINING_STATS.items()}
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in vals.items()}


class Monitor:
    """TensorBoard and best.pt for one run (rank 0 only)."""

    def __init__(self, cfg: Config, family, ema: dict, shards: ShardSet, usable: np.ndarray, run_name: str,
                 device, log, ckpt: dict | None):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.family, self.spec, self.device, self.log = cfg, family, shards.spec, device, log
        self.root, self.run_name = Path(cfg.data.root), run_name
        self.run_dir, self.ckpt_dir = Path(cfg.run.runs_dir) / run_name, Path(cfg.run.checkpoints_dir) / run_name
        self.nets = {**family.modules, **ema}  # what samples: the moving average where there is one
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.writer = SummaryWriter(str(self.run_dir))
        self.sampling = sampling_inputs(family, self.root, shards, usable, cfg, log)
        if not ckpt:
            s, n = self.sampling, cfg.run.num_samples
            self.writer.add_image("Real", roll_grid(s.real_ref[:n], **look_of(s.real_look, n), **spec_look(self.spec)), 0)
            as_text = lambda x: "    " + x.replace("\n", "\n    ")  # noqa: E731 - markdown code block
            self.writer.add_text("Run/config", as_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)), 0)
            self.writer.add_text("Run/spec", as_text(self.spec.describe()), 0)
            self.writer.add_text("Run/data", as_text(f"{self.root}\n" + summary(shards.manifest)), 0)
        # The lowest training-time figure so far and its step: checkpoints carry it, so a resumed run
        # goes on comparing with it.
        self.best = reconcile_best(self.ckpt_dir, ckpt.get("best"), log) if ckpt else None
        on = self.sampling.best_on
        if self.best and on and self.best.get("on", "val") != on:
            # figures against other windows do not compare: the next scored step starts afresh
            log(f"best.pt: step {self.best['step']} was chosen on the {SPLIT_WORDS[self.best.get('on', 'val')]} "
                f"windows; the next scored step replaces it, chosen on the {SPLIT_WORDS[on]} windows")
            self.best = None
        if self.best and on and self.best.get("metric", "overall") != cfg.run.best_metric:  # nor do other figures
            log(f"best.pt: step {self.best['step']} was chosen by {self.best.get('metric', 'overall')}; the next scored "
                f"step replaces it, chosen by {cfg.run.best_metric}")
            self.best = None

    def log_interval(self, step: int, figures: dict, optimizers: dict, speed: float) -> None:
        for k, v in figures.items():
            self.writer.add_scalar(k, v, step)
        for k, o in optimizers.items():
            self.writer.add_scalar(f"LR/{k}", o.param_groups[0]["lr"], step)
        self.writer.add_scalar("Speed/samples_per_s", speed, step)

    def after_step(self, step: int, last: bool, state, healthy) -> dict:
        """Samples and, when due, the full metrics of step ``step``, and best.pt when it is the best so far
        (``state(gather_rngs=False)``: the run's checkpoint; ``healthy()``: no non-finite loss so far)."""
        r, out = self.cfg.run, {}
        if step % r.sample_every == 0 or last:
            out.update(log_samples(self.writer, self.family, self.nets, self.sampling, self.spec, step, self.run_dir,
                                   self.cfg, self.device))
        if not ((r.metrics_every and step % r.metrics_every == 0) or last):
            return out
        if self.sampling.has_val:
            out.update(log_metrics(self.writer, self.family, self.nets, self.sampling, self.spec, self.root, step,
                                   self.cfg, self.device))
        if self.sampling.val_windows is not None:  # the family's own held-out figures (NLL, reconstruction)
            val = self.family.validate(self.sampling.val_windows, nets=self.nets, device=self.device)
            if self.sampling.val_tunes:  # the benchmark's way: whole tunes, frames 1..T-1, no padding
                from .benchmark import tune_likelihood
                tunes = tune_likelihood(self.family, self.sampling.val_tunes, nets=self.nets, device=self.device)
                val.update({"Val/tune_nll_per_frame": tunes["nll_per_frame"],
                            "Val/tune_frame_accuracy": tunes["frame_accuracy"]})
            for k, v in val.items():
                self.writer.add_scalar(k, v, step)
            out.update(val)
        if r.best_metric == "nll":  # early stopping on the validation split's likelihood: its whole tunes where kept
            candidates = [(False, out.get("Val/tune_nll_per_frame", out.get("Val/nll_per_frame", float("nan"))), "ema")]
        else:
            figure = ("train/" if self.sampling.best_on == "train" else "") + r.best_metric
            # (alike, figure, weights) of the moving average and, with run.best_raw, the raw weights; alike
            # ones come after every other; the limit is a property of the data (real windows' pair IoU, the
            # validation split's as in round 9), not of the step
            weights_of = [("ema", "Metrics/")] + ([("raw", "Metrics/raw/")] if r.best_raw else [])
            candidates = [(too_alike(out.get(f"{pre}pair_iou", 0.0), out.get("Metrics/pair_iou/real", 0.0),
                                     r.best_pair_iou), out.get(pre + figure, float("nan")), weights)
                          for weights, pre in weights_of]
        candidates = [c for c in candidates if math.isfinite(c[1])]
        # main rank only (it alone scores), so no collective here: its own losses judge finiteness
        if candidates and self.sampling.best_on and healthy():
            alike, figure_value, weights = min(candidates)
            if self.best is None or (alike, figure_value) < (self.best.get("alike", False), self.best["overall"]):
                self.best = {"step": step, "overall": figure_value, "alike": alike, "on": self.sampling.best_on,
                             "weights": weights}  # "overall": the figure it was chosen by (run.best_metric)
                if r.best_metric != "overall":
                    self.best["metric"] = r.best_metric
                # before the step's checkpoint: a kill between the two redoes this step after resume
                save_best(with_weights(state(gather_rngs=False), weights), self.ckpt_dir)
        return out

    def close(self, timing: dict, final: dict) -> None:
        """train.json, the run's hyperparameters beside its final figures, and the closing lines."""
        if self.best:
            timing["best"] = {**self.best, "checkpoint": str(self.ckpt_dir / "best.pt")}
        atomic_write_json(self.run_dir / "train.json", {"run_name": self.run_name, **timing, "figures": final})
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.cfg.flat().items()}
        self.writer.add_hparams(hp, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")
        self.writer.close()
        self.log(f"done: {timing['steps']} steps; checkpoint {self.ckpt_dir / 'last.pt'}; samples {self.run_dir / 'samples'}")
        if self.best:
            b, r = self.best, self.cfg.run
            note = (f"; the samples of every scored step were more alike than {r.best_pair_iou:g}x real windows"
                    if b.get("alike") else "")
            raw = " (the raw weights, not their moving average)" if b.get("weights") == "raw" else ""
            on = (f"{len(self.sampling.val_tunes)} whole tunes" if self.sampling.val_tunes
                  else f"{len(self.sampling.val_windows)} windows")
            by = (f"validation NLL per frame {b['overall']:.4f} ({on})"
                  if b.get("metric") == "nll" else
                  f"training-time {b.get('metric', 'overall')} figure {b['overall']:.3f} ({r.metrics_samples} samples "
                  f"against the {SPLIT_WORDS[b.get('on', 'val')]} windows)")
            log_line = f"best.pt: step {b['step']}{raw}, {by}{note}: {self.ckpt_dir / 'best.pt'}"
            self.log(log_line)


def feature_network(family, root: Path, train_shards: ShardSet, cfg: Config, log):
    """The feature network a run's scored steps use, or None (said in one line) where none fits or the
    scored samples are fewer than the figures' sample size; refused when run.best_metric needs it."""
    from .features import find_network

    try:
        if cfg.run.metrics_samples < FEATURE_SIZE:
            raise UserError(f"run.metrics_samples={cfg.run.metrics_samples} is under the feature distances' sample size "
                            f"{FEATURE_SIZE}")
        val = ShardSet(root, "val", verify=False)
        free = not family.wants_real(**family.sample_options)  # free samples: scored in run.meter
        n = int(val.in_meter(*meter_of(cfg.run.meter)).sum()) if free else len(val)
        if n < FEATURE_SIZE:
            raise UserError(f"{root}: {n} validation windows{f' in {cfg.run.meter}' if free else ''}, under the feature "
                            f"distances' sample size {FEATURE_SIZE}")
        net, line = find_network(root, train_shards.spec, train_shards.manifest)
    except UserError as e:
        if cfg.run.best_metric in ("kd", "fd"):
            raise UserError(f"run.best_metric={cfg.run.best_metric}: {e}") from None
        log(f"Metrics/kd and Metrics/fd are not logged: {e}")
        return None
    log(line)
    return net


def sampling_inputs(family, root: Path, train_shards: ShardSet, usable: np.ndarray, cfg: Config, log) -> Sampling:
    """The real windows that sampling and validation need, chosen once: validation windows when
    the data has them (training windows otherwise, for a primer only)."""
    val = ShardSet(root, "val")  # verified now: a corrupt split must not stop the run at its first scored step
    has_val = len(val) > 0
    if not has_val:
        log(f"{root} has no validation windows: the metrics against real data are skipped")
    elif not family.wants_real(**family.sample_options):
        try:
            same_meter(val, meter_of(cfg.run.meter))  # free samples are compared with real windows of their meter
        except UserError as e:
            log(f"{e}: the metrics against real data are skipped (set run.meter to one of them)")
            has_val = False
    best_on = cfg.run.best_on if has_val and cfg.run.keep_best and cfg.run.metrics_every else None
    if cfg.run.best_metric == "nll":  # the validation windows' likelihood, whatever the sample metrics can do
        best_on = "val" if len(val) and cfg.run.keep_best and cfg.run.metrics_every else None
    if best_on == "train" and not family.wants_real(**family.sample_options) and len(train_shards):
        try:
            same_meter(train_shards, meter_of(cfg.run.meter))
        except UserError as e:
            log(f"{e}: best.pt is chosen on the validation windows instead")
            best_on = "val"
    if has_val:
        out_features = feature_network(family, root, train_shards, cfg, log)
    else:
        out_features = None
    seed, r = cfg.train.seed, cfg.run
    pick = usable[np.random.default_rng(seed).choice(len(usable), min(len(usable), 512), replace=False)]
    real_ref = train_shards.get_in_order(pick)  # a sample of the corpus in drawn order, not its first tunes
    out = Sampling(has_val=has_val, best_on=best_on, real_ref=real_ref, real_look=window_look(train_shards.records, pick),
                   real_stats=roll_stats(real_ref, train_shards.spec),
                   val_windows=torch.from_numpy(val.pick(min(len(val), r.val_windows), seed)) if len(val) else None,
                   features=out_features)
    if getattr(family, "likelihood", False) and (train_shards.manifest.get("tunes") or {}).get("val"):
        from .benchmark import read_tunes
        out.val_tunes = read_tunes(root, "val")
    if family.wants_real(**family.sample_options):  # the LSTM's primers, the conditional GAN's chords
        source = val if has_val else train_shards
        grid = source.pick_indices(r.num_samples, seed + 12345)
        picked = source.pick_indices(r.metrics_samples, seed + 999)
        out.grid_real, out.grid_look = torch.from_numpy(source.get_in_order(grid)), window_look(source.records, grid)
        out.metrics_real = torch.from_numpy(source.get_in_order(picked))
        out.metrics_bars = steps_per_bar(source.records["ts_num"][picked], source.records["ts_den"][picked],
                                         source.spec.steps_per_beat)
    return out


@torch.no_grad()
def log_samples(writer, family, nets, sampling: Sampling, spec: RollSpec, step: int, run_dir: Path, cfg: Config,
                device) -> dict:
    """Image grid, audio and MIDI of the moving-average model on fixed random draws; statistics against real data."""
    from .audio import render
    from .midi import notes_to_midi, part_names, roll_to_parts, save_midi

    n = cfg.run.num_samples
    probs = family.sample(n, torch.Generator().manual_seed(cfg.train.seed + 12345), nets=nets,
                          device=device, real=sampling.grid_real, **family.sample_options).numpy()
    draw = spec_look(spec)
    if sampling.grid_look is not None:  # primed samples continue real windows: beside them, in their meter
        real, real_look = sampling.grid_real.numpy(), sampling.grid_look
        gen_look = real_look
    else:  # free samples are drawn in run.meter, beside a sample of the training windows
        real, real_look = sampling.real_ref[:n], look_of(sampling.real_look, n)
        gen_look = {"meter": np.tile(meter_of(cfg.run.meter), (n, 1)), "shift": np.zeros(n, int)}
    writer.add_image("Samples/ema", roll_grid(probs, binary=False, **gen_look, **draw), step)
    rolls = probs >= 0.5
    writer.add_image("Samples/ema_binary", roll_grid(rolls, **gen_look, **draw), step)
    k = min(len(real), len(rolls))

    def pairs(a, b):  # generated i, then real i
        return np.stack([np.asarray(a)[:k], np.asarray(b)[:k]], 1).reshape(-1, *np.shape(a)[1:])
    both = {key: pairs(gen_look[key], real_look[key]) for key in ("meter", "shift")}
    pairs_rolls = pairs(rolls, real.astype(bool))
    writer.add_image("Samples/vs_real", roll_grid(pairs_rolls, nrow=2, **both, **draw), step)
    out = run_dir / "samples" / f"step-{step:07d}"
    for i, roll in enumerate(rolls[: max(cfg.run.audio_samples, 4)]):
        parts = roll_to_parts(roll, spec)
        notes = np.concatenate(parts)
        save_midi(notes_to_midi(parts, spec, names=part_names(spec)), out / f"sample-{i:02d}.mid")
        if i < cfg.run.audio_samples:  # an empty roll is logged as silence: that is worth hearing too
            wave = render(notes, spec, sample_rate=16000)
            writer.add_audio(f"Audio/sample_{i}", torch.from_numpy(wave)[None], step, sample_rate=16000)
    stats = roll_stats(rolls, spec)
    for k, v in stats.items():
        writer.add_scalar(f"Stats/{k}/generated", v, step)
        writer.add_scalar(f"Stats/{k}/real", sampling.real_stats[k], step)
    return {f"Stats/{k}": v for k, v in stats.items()}


@torch.no_grad()
def log_metrics(writer, family, nets, sampling: Sampling, spec: RollSpec, root: Path, step: int, cfg: Config,
                device) -> dict:
    """The full metric set of samples against the cached real reference, memorisation, and the
    family's own validation figures (NLL, reconstruction), all of the moving-average model."""
    rolls = metric_rolls(family, nets, sampling, cfg, device)
    if sampling.metrics_real is not None:  # rolls that continue or accompany real windows: in their meters
        bar, meter = sampling.metrics_bars, None
    else:  # free samples: bars of run.meter, against the validation windows in it
        meter = meter_of(cfg.run.meter)
        bar = steps_per_bar(*meter, spec.steps_per_beat)
    res = evaluate_rolls(rolls, root, bar, progress=False, per_roll=True, meter=meter)
    for name, row in res["metrics"].items():
        writer.add_scalar(f"Metrics/{name}/generated", row["generated_mean"], step)
        writer.add_scalar(f"Metrics/{name}/gap", row["gap"], step)
        for side in ("generated", "real"):  # the distributions behind the means: a gap seen as two shapes
            v = res["per_roll"][side][name]
            if np.isfinite(v).any():
                writer.add_histogram(f"Metrics/{name}/hist_{side}", v[np.isfinite(v)], step)
    writer.add_scalar("Metrics/overall", res["overall"], step)
    for side in ("generated", "real"):  # a run drawing the same notes in every sample shows here, not in overall
        writer.add_scalar(f"Metrics/pair_iou/{side}", res["diversity"][f"{side}_pair_iou"], step)
    mem = res["memorisation"]
    for t in ("0.5", "0.8", "0.95"):
        writer.add_scalar(f"Metrics/memorisation_above_{t}", mem[f"above_{t}"], step)
    chosen_on, train_real = {}, None
    if sampling.best_on == "train":  # the same rolls' metrics against the training windows, which choose best.pt
        train_real = reference_in_meter(ShardSet(root, "train", verify=False), meter, progress=False)[1]
        chosen_on = {"Metrics/train/overall": compare(res["per_roll"]["generated"], train_real)["overall"]}
        writer.add_scalar("Metrics/train/overall", chosen_on["Metrics/train/overall"], step)
    if cfg.run.best_raw and sampling.best_on:
        chosen_on.update(score_raw(writer, family, sampling, root, step, cfg, device, bar, meter, train_real))
    chosen_on.update(log_features(writer, rolls, sampling, root, step, meter, "Metrics/"))
    return {"Metrics/overall": res["overall"], "Metrics/memorisation_above_0.8": mem["above_0.8"],
            "Metrics/pair_iou": res["diversity"]["generated_pair_iou"],
            "Metrics/pair_iou/real": res["diversity"]["real_pair_iou"], **chosen_on,
            **{f"Metrics/{k}/gap": v["gap"] for k, v in res["metrics"].items()}}


def log_features(writer, rolls: np.ndarray, sampling: Sampling, root: Path, step: int, meter, pre: str) -> dict:
    """KD and FD of the scored rolls in the feature network's space (no intervals: one figure a step),
    against the validation windows and, where best.pt is chosen on them, the training windows."""
    if not sampling.features:
        return {}
    out = {}
    for split, tag in (("val", ""), ("train", "train/"))[: 2 if sampling.best_on == "train" else 1]:
        try:
            f = feature_figures(rolls, root, meter, FEATURE_SIZE, sampling.features, rounds=0, split=split, floor=False)
        except UserError:
            continue  # too few windows of the split in this meter: the other figures stand
        out.update({f"{pre}{tag}kd": f["kd"]["value"], f"{pre}{tag}fd": f["fd"]["value"]})
        if not tag:
            out.update({f"{pre}precision": f["precision"], f"{pre}recall": f["recall"]})
    for k, v in out.items():
        writer.add_scalar(k, v, step)
    return out


def metric_rolls(family, nets, sampling: Sampling, cfg: Config, device) -> np.ndarray:
    """The run.metrics_samples binary rolls training scores, from the same noise at every scored step."""
    return family.sample(cfg.run.metrics_samples, torch.Generator().manual_seed(cfg.train.seed + 999), nets=nets,
                         device=device, real=sampling.metrics_real, **family.sample_options).numpy() >= 0.5


@torch.no_grad()
def score_raw(writer, family, sampling: Sampling, root: Path, step: int, cfg: Config, device, bar, meter,
              train_real: dict | None) -> dict:
    """run.best_raw: the raw weights' rolls (the moving average's noise), scored as log_metrics scores
    the moving average's, so that best.pt can choose them. Swinging runs leave their moving average
    drawing too few notes where the raw weights do not, and the reverse (round 35)."""
    modes = {k: m.training for k, m in family.modules.items()}
    for m in family.modules.values():
        m.eval()  # batch norm from its running statistics, as sampling from a checkpoint does
    try:
        rolls = metric_rolls(family, family.modules, sampling, cfg, device)
    finally:
        for k, m in family.modules.items():
            m.train(modes[k])
    res = evaluate_rolls(rolls, root, bar, progress=False, memo=False, per_roll=True, meter=meter)
    out = {"Metrics/raw/overall": res["overall"], "Metrics/raw/pair_iou": res["diversity"]["generated_pair_iou"]}
    if train_real is not None:
        out["Metrics/raw/train/overall"] = compare(res["per_roll"]["generated"], train_real)["overall"]
    for k, v in out.items():
        writer.add_scalar(k, v, step)
    return out | log_features(writer, rolls, sampling, root, step, meter, "Metrics/raw/")
