"""Train a model family on piano-roll shards, watched in TensorBoard.

    python -m apollogan.train --config configs/quick.yaml            # small DCGAN, a 2-core CPU
    python -m apollogan.train --config configs/lstm.yaml             # a baseline: lstm, vae, ae, lstm_gan
    python -m apollogan.train --config configs/apollogan.yaml        # the reference DCGAN (GPU)
    python -m apollogan.train --config configs/quick.yaml train.steps=200 run.name=try
    python -m apollogan.train --resume try-001                       # continue a run exactly
    python -m apollogan.train --config configs/quick.yaml --dry-run  # print the resolved config
    torchrun --nproc_per_node=2 -m apollogan.train --config configs/apollogan.yaml

Each run gets runs/NAME-NNN (config, TensorBoard events, MIDI samples) and
checkpoints/NAME-NNN (step-*.pt and last.pt).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from . import __version__
from .checkpoint import load_checkpoint, reconcile_best, resolve_checkpoint, save_best, save_checkpoint, too_alike, with_weights
from .cli import UserError, atomic_write_json, run
from .config import Config, load_config, meter_of
from .data import DEFAULT_OUT, bundled_root, data_mismatch, ensure_shards, summary
from .images import roll_grid, spec_look, window_look
from .metrics import TRAINING_STATS, steps_per_bar
from .models import StepContext, build_family
from .scoring import SPLIT_WORDS, compare, evaluate_rolls, reference_in_meter, same_meter
from .shards import ShardSet, is_current
from .spec import RollSpec


class NonFiniteLoss(Exception):
    pass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; otherwise one process on CUDA if present, else CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        return Dist(dist.get_rank(), world, device)
    return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))


class BatchStream:
    """Batch number b of a run, as window indices: a pure function of (seed, b, rank).

    A resumed run therefore sees exactly the batches it would have seen. Each epoch is a
    fresh permutation; each rank takes its own slice of every global batch.
    """

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.per_epoch = n // (batch * world)
        if self.per_epoch == 0:
            raise UserError(f"the train split has {n} windows, fewer than one batch of {batch} x {world} processes")
        self._epoch, self._perm = -1, None

    def indices(self, b: int) -> np.ndarray:
        epoch, i = divmod(b, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).numpy()
        start = (i * self.world + self.rank) * self.batch
        return np.sort(self._perm[start:start + self.batch])  # sorted: memmap reads in file order


class RunClock:
    """Wall time of a run's loop, summed over resumes, and the part of it spent aside from training
    steps (samples, metrics, checkpoints): samples/s counts the steps alone."""

    def __init__(self, elapsed_s: float = 0.0, aside_s: float = 0.0):
        self.before, self.aside_s, self.start = float(elapsed_s), float(aside_s), time.perf_counter()

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def training(self) -> float:
        return self.elapsed() - self.aside_s

    @contextlib.contextmanager
    def aside(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.aside_s += time.perf_counter() - t0

    def state(self) -> dict:
        return {"elapsed_s": self.elapsed(), "aside_s": self.aside_s}


def ema_decay_at(decay: float, step: int) -> float:
    """Warm-up: early on the average must forget the random initial weights quickly, or a short
    run's EMA generator mixes them with the batch-norm statistics of the trained one."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def next_run_name(cfg: Config) -> str:
    """NAME-001, NAME-002, ...: the first number free in both runs/ and checkpoints/."""
    used = set()
    for folder in (cfg.run.runs_dir, cfg.run.checkpoints_dir):
        for p in Path(folder).glob(f"{cfg.run.name}-*"):
            tail = p.name[len(cfg.run.name) + 1:]
            if tail.isdigit():
                used.add(int(tail))
    return f"{cfg.run.name}-{max(used, default=0) + 1:03d}"


def fixed_run_name(cfg: Config) -> str:
    """run.numbered=false: the run is called run.name exactly (the ablation runner's cells), once."""
    last = Path(cfg.run.checkpoints_dir) / cfg.run.name / "last.pt"
    if last.exists():
        raise UserError(f"{last}: run {cfg.run.name} exists; continue it with --resume {last.parent} "
                        f"or choose another run.name")
    return cfg.run.name


def rng_state(gen: torch.Generator) -> dict:
    """Every RNG a run draws from, as tensors and plain values (what a weights-only load accepts)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "noise": gen.get_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                int(has_gauss), float(cached)),
            "python": random.getstate()}


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["noise"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys).astype(np.uint32), *rest))
    random.setstate(state["python"])


def train_windows(shards: ShardSet, meter: str) -> np.ndarray:
    """Indices of the training windows a run draws from: all, or those in ``meter`` (data.meter)."""
    if not meter:
        return np.arange(len(shards))
    keep = np.flatnonzero(shards.in_meter(*meter_of(meter)))
    if len(keep) == 0:
        raise UserError(f"data.meter={meter}: {shards.root} has no training window in that meter")
    return keep


def look_of(look: dict, n: int) -> dict:
    """The meters and shifts of the first ``n`` pictured windows."""
    return {k: v[:n] for k, v in look.items()}


def roll_stats(rolls: np.ndarray, spec: RollSpec) -> dict:
    x = spec.sustain(rolls.astype(bool))  # every part
    vals = {k: f(x) for k, f in TRAINING_STATS.items()}
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in vals.items()}


def cpu_has_bf16() -> bool:
    """Native bf16 units (AVX512-BF16 or AMX): there bf16 autocast is faster; elsewhere it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell, stay in fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def lr_scale(step: int, steps: int, decay: float) -> float:
    """Learning-rate factor of step ``step`` (0-based) of ``steps``: 1, then over the last ``decay``
    of the steps a linear fall that reaches 1/n at the last step of those n (never 0)."""
    n = max(1, round(steps * decay))
    return min(1.0, (steps - step) / n)


def use_bf16(cfg: Config, device: torch.device) -> bool:
    if cfg.train.amp == "off":
        return False
    if cfg.train.amp == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def train(cfg: Config, resume: Path | dict | None = None, log=print, progress: bool = True) -> dict:
    """Run (or continue, from a checkpoint path or a loaded one) training; returns the final figures.

    Rank 0 alone logs and saves.
    """
    env = setup_distributed()
    done = False
    try:
        out = _train(cfg, resume, env, log if env.main else (lambda *a, **k: None), progress and env.main)
        done = True
        return out
    finally:
        if env.world > 1:
            if done:  # no rank closes gloo's connections while another still uses them (after a failure: no wait)
                dist.barrier()
            dist.destroy_process_group()


def _train(cfg: Config, resume, env: Dist, log, progress) -> dict:
    t, device = cfg.train, env.device
    ckpt = load_checkpoint(resume) if isinstance(resume, (str, Path)) else resume
    if ckpt and ckpt["family"] != cfg.model.family:
        raise UserError(f"model.family: the checkpoint is of family {ckpt['family']}; a resumed run keeps its family")
    root = Path(cfg.data.root)
    if root == DEFAULT_OUT and bundled_root(cfg.data) != DEFAULT_OUT and not (root / "manifest.json").exists():
        raise UserError(f"{root} holds the bundled tunes made with the default data options; for these "
                        f"(data.onset, data.key_normalize, data.transpose, data.time_shifts) set data.root={bundled_root(cfg.data)}")
    if env.main and root == bundled_root(cfg.data) and not is_current(root):
        ensure_shards(root, cfg.data, log=log)
    if env.world > 1:
        dist.barrier()  # the other ranks wait for rank 0's preprocessing
        if t.loss == "wgan-gp" or t.r1:
            raise UserError("train.loss=wgan-gp and train.r1 are single-process only (their double backward "
                            "bypasses DDP)")
        if t.time_limit:
            raise UserError("train.time_limit is single-process only (the ranks' clocks would stop them at different steps)")
    shards = ShardSet(root, "train", spec=RollSpec.from_dict(ckpt["spec"]) if ckpt else None, verify=env.main)
    differs = data_mismatch(shards.manifest, cfg.data)
    if differs:  # never train on other data than the config says
        hint = (f"; data.root={bundled_root(cfg.data)} holds the bundled tunes made so"
                if Path(cfg.data.root) == DEFAULT_OUT else "; preprocess with those options into another folder")
        raise UserError(f"{root}: the config asks for {differs}{hint}")
    spec = shards.spec
    torch.manual_seed(t.seed)
    try:
        family = build_family(spec, cfg)
    except ValueError as e:
        raise UserError(f"{root}: its rolls do not fit the model: {e}") from None
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    for m in family.modules.values():
        m.to(device)
        m.to(memory_format=fmt)
    ema = {k: copy.deepcopy(family.modules[k]).eval().requires_grad_(False) for k in family.ema_names}
    opts = family.optimizers()
    base_lr = {k: [g["lr"] for g in o.param_groups] for k, o in opts.items()}  # the config's, before a checkpoint's
    gen = torch.Generator(device).manual_seed(t.seed * 7919 + env.rank)  # every draw of the training steps
    step = batches = 0
    if ckpt:
        try:
            for k, m in family.modules.items():
                m.load_state_dict(ckpt["modules"][k])
            for k, m in ema.items():
                m.load_state_dict(ckpt["ema"][k])
            for k, o in opts.items():
                o.load_state_dict(ckpt["optimizers"][k])
            if env.world == ckpt.get("world", 1) and len(ckpt["rng"]) == env.world:
                set_rng_state(ckpt["rng"][env.rank], gen)
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise UserError(f"checkpoint does not fit its {cfg.model.family} config "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        step, batches, run_name = ckpt["step"], ckpt["batches"], ckpt["run_name"]
    elif env.main:
        run_name = next_run_name(cfg) if cfg.run.numbered else fixed_run_name(cfg)
    else:
        run_name = None
    if env.world > 1:
        names = [run_name]
        dist.broadcast_object_list(names, src=0)
        run_name = names[0]
    run_dir, ckpt_dir = Path(cfg.run.runs_dir) / run_name, Path(cfg.run.checkpoints_dir) / run_name

    nets = ddp_nets = dict(family.modules)  # as the step calls them
    if env.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        nets = ddp_nets = {k: torch.nn.parallel.DistributedDataParallel(m, device_ids=ids) for k, m in nets.items()}
    if t.compile:
        nets = {k: torch.compile(m) for k, m in nets.items()}
    bf16 = use_bf16(cfg, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def no_sync(name):
        return ddp_nets[name].no_sync() if env.world > 1 else contextlib.nullcontext()

    usable = train_windows(shards, cfg.data.meter)
    stream = BatchStream(len(usable), t.batch_size, t.seed, env.rank, env.world)

    def real_batch():
        nonlocal batches
        idx = usable[stream.indices(batches)]  # sorted, as the stream's
        batches += 1
        x = torch.from_numpy(shards.get(idx)).to(device, non_blocking=True).float()
        return x.contiguous(memory_format=fmt)

    writer, sampling = None, {"has_val": False, "best_on": None}
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir))
        if not ckpt:
            log(f"run {run_name}: {family.name}, {family.describe()}, {len(usable)} train windows of "
                f"{list(spec.shape)}, device {device}{' bf16' if bf16 else ''}, {env.world} process(es)")
            log(f"tensorboard --logdir {cfg.run.runs_dir}   checkpoints: {ckpt_dir}")
        pick = usable[np.random.default_rng(t.seed).choice(len(usable), min(len(usable), 512), replace=False)]
        real_ref = shards.get_in_order(pick)  # a sample of the corpus in drawn order, not its first tunes
        real_look = window_look(shards.records, pick)
        if not ckpt:
            n = cfg.run.num_samples
            writer.add_image("Real", roll_grid(real_ref[:n], **look_of(real_look, n), **spec_look(spec)), 0)
            as_text = lambda x: "    " + x.replace("\n", "\n    ")  # noqa: E731 - markdown code block
            writer.add_text("Run/config", as_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)), 0)
            writer.add_text("Run/spec", as_text(spec.describe()), 0)
            writer.add_text("Run/data", as_text(f"{root}\n" + summary(shards.manifest)), 0)
        sampling = sampling_inputs(family, root, shards, cfg, log)
        sampling.update(real_stats=roll_stats(real_ref, spec), real_ref=real_ref, real_look=real_look)
    sample_nets = {**family.modules, **ema}

    def state(gather: bool = True) -> dict:
        rngs = [rng_state(gen)]
        if env.world > 1:
            rngs = [None] * env.world
            if gather:
                dist.all_gather_object(rngs, rng_state(gen))
            else:
                rngs = []  # the other ranks' states are out of reach: a resume starts their RNGs afresh
        return {"family": family.name, "modules": {k: m.state_dict() for k, m in family.modules.items()},
                "ema": {k: m.state_dict() for k, m in ema.items()},
                "optimizers": {k: o.state_dict() for k, o in opts.items()}, "step": step, "batches": batches,
                "rng": rngs, "world": env.world, "config": cfg.to_dict(), "spec": spec.to_dict(),
                "run_name": run_name, "apollogan": __version__, "clock": clock.state(), "best": best}

    def save(gather: bool = True):
        s = state(gather)  # every rank joins the RNG gather
        if env.main:
            save_checkpoint(s, ckpt_dir, step, cfg.run.keep)

    clock = RunClock(**(ckpt.get("clock") or {}) if ckpt else {})
    # The lowest training-time overall figure so far and its step: checkpoints carry it, so a resumed
    # run goes on comparing with it.
    best = ckpt.get("best") if ckpt else None
    if ckpt and env.main:
        best = reconcile_best(ckpt_dir, best, log)
        if best and sampling["best_on"] and best.get("on", "val") != sampling["best_on"]:
            # figures against other windows do not compare: the next scored step starts afresh
            log(f"best.pt: step {best['step']} was chosen on the {SPLIT_WORDS[best.get('on', 'val')]} windows; "
                f"the next scored step replaces it, chosen on the {SPLIT_WORDS[sampling['best_on']]} windows")
            best = None
    first_bad = torch.tensor(-1, device=device)
    acc, grads = {}, {}  # figures summed over the log interval; gradient norms of the last logged step
    acc_n, last_log, last_time = 0, step, time.perf_counter()
    final = {}
    bar = tqdm(total=t.steps, initial=step, desc=run_name, unit="step", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)

    def check_finite():
        bad = first_bad
        if env.world > 1:  # every rank stops at the first bad step of any rank
            never = torch.iinfo(torch.int64).max
            bad = torch.where(first_bad < 0, never, first_bad)
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
            bad = torch.where(bad == never, -1, bad)
        bad = int(bad)
        if bad >= 0:
            raise NonFiniteLoss(f"non-finite loss at step {bad}; the last good checkpoint is {ckpt_dir / 'last.pt'}")

    try:
        while step < t.steps:
            for m in family.modules.values():
                m.train()
            logging_now = (step + 1) % cfg.run.log_every == 0 or step + 1 == t.steps
            if t.lr_decay:  # a function of the step alone, so a resumed run follows the same schedule
                scale = lr_scale(step, t.steps, t.lr_decay)
                for k, o in opts.items():
                    for g, lr in zip(o.param_groups, base_lr[k]):
                        g["lr"] = lr * scale
            figures = family.train_step(StepContext(
                nets=nets, optimizers=opts, real_batch=real_batch, generator=gen, device=device, step=step,
                log_now=logging_now, autocast=autocast, no_sync=no_sync, fmt=fmt))
            for k, m in ema.items():
                ema_update(m, family.modules[k], ema_decay_at(t.ema_decay, step))
            step += 1
            last = step == t.steps or (t.time_limit > 0 and clock.training() >= 60 * t.time_limit)
            with torch.no_grad():
                loss = sum(v for k, v in figures.items() if k.startswith("Loss/"))
                first_bad = torch.where((~torch.isfinite(loss)) & (first_bad < 0), step, first_bad)
                for k, v in figures.items():
                    if k.startswith("GradNorm/"):
                        grads[k] = v
                    else:
                        acc[k] = acc[k] + v if k in acc else v.clone()
            acc_n += 1
            bar.update()

            if logging_now or last:
                check_finite()  # the one host sync of the interval
                keys = list(acc) + list(grads)
                vals = dict(zip(keys, torch.stack([acc[k] / acc_n for k in acc] + list(grads.values())).tolist()))
                now = time.perf_counter()
                speed = (step - last_log) * t.batch_size * env.world / (now - last_time)
                final = {k: vals[k] for k in acc}
                if writer:
                    for k, v in vals.items():
                        writer.add_scalar(k, v, step)
                    for k, o in opts.items():
                        writer.add_scalar(f"LR/{k}", o.param_groups[0]["lr"], step)
                    writer.add_scalar("Speed/samples_per_s", speed, step)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in final.items() if k.startswith("Loss/")}
                                | {"sps": f"{speed:.0f}"}, refresh=False)
                acc, grads = {}, {}
                acc_n, last_log, last_time = 0, step, now
            with clock.aside():
                if writer and (step % cfg.run.sample_every == 0 or last):
                    final.update(log_samples(writer, family, sample_nets, sampling, spec, step, run_dir, cfg, device))
                if writer and sampling["has_val"] and (
                        (cfg.run.metrics_every and step % cfg.run.metrics_every == 0) or last):
                    final.update(log_metrics(writer, family, sample_nets, sampling, spec, root, step, cfg, device))
                    figure = "train/overall" if sampling["best_on"] == "train" else "overall"
                    # (alike, overall, weights) of the moving average and, with run.best_raw, the raw weights;
                    # alike ones come after every other; the limit is a property of the data (real windows'
                    # pair IoU, the validation split's as in round 9), not of the step
                    weights_of = [("ema", "Metrics/")] + ([("raw", "Metrics/raw/")] if cfg.run.best_raw else [])
                    candidates = [(too_alike(final.get(f"{pre}pair_iou", 0.0), final.get("Metrics/pair_iou/real", 0.0),
                                             cfg.run.best_pair_iou), final[pre + figure], weights)
                                  for weights, pre in weights_of if math.isfinite(final.get(pre + figure, float("nan")))]
                    # main rank only (it alone scores), so no collective here: its own losses judge finiteness
                    if candidates and cfg.run.keep_best and cfg.run.metrics_every and int(first_bad) < 0:
                        alike, overall, weights = min(candidates)
                        if best is None or (alike, overall) < (best.get("alike", False), best["overall"]):
                            best = {"step": step, "overall": overall, "alike": alike, "on": sampling["best_on"],
                                    "weights": weights}
                            # before the step's checkpoint: a kill between the two redoes this step after resume
                            save_best(with_weights(state(gather=False), weights), ckpt_dir)
                if step % cfg.run.checkpoint_every == 0 or last:
                    check_finite()
                    save()
            if last:
                break
    except KeyboardInterrupt:
        bar.close()
        # Ranks may be interrupted at different points, so no collective here: under DDP rank 0 saves
        # its own copy of the (synchronised) weights, judged finite by its own losses.
        if int(first_bad) < 0:
            save(gather=env.world == 1)
            log(f"interrupted at step {step}; saved {ckpt_dir / 'last.pt'} - resume with --resume {run_name}")
        raise
    except NonFiniteLoss as e:
        bar.close()
        raise UserError(str(e)) from None
    bar.close()
    timing = {"steps": step, "stopped_by": "steps" if step >= t.steps else "time_limit",
              "elapsed_s": round(clock.elapsed(), 3),
              "samples_per_s": round(step * t.batch_size * env.world / max(clock.training(), 1e-9), 2)}
    if writer:
        if best:
            timing["best"] = {**best, "checkpoint": str(ckpt_dir / "best.pt")}
        atomic_write_json(run_dir / "train.json", {"run_name": run_name, **timing, "figures": final})
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.flat().items()}
        writer.add_hparams(hp, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")
        writer.close()
        log(f"done: {step} steps; checkpoint {ckpt_dir / 'last.pt'}; samples {run_dir / 'samples'}")
        if best:
            note = (f"; the samples of every scored step were more alike than {cfg.run.best_pair_iou:g}x real windows"
                    if best.get("alike") else "")
            on = SPLIT_WORDS[best.get("on", "val")]
            raw = " (the raw weights, not their moving average)" if best.get("weights") == "raw" else ""
            log(f"best.pt: step {best['step']}{raw}, training-time overall figure {best['overall']:.3f} "
                f"({cfg.run.metrics_samples} samples against the {on} windows){note}: {ckpt_dir / 'best.pt'}")
    return {"run_name": run_name, "run_dir": str(run_dir), "checkpoint": str(ckpt_dir / "last.pt"), **timing, **final}


def sampling_inputs(family, root: Path, train_shards: ShardSet, cfg: Config, log) -> dict:
    """The real windows that sampling and validation need, chosen once: validation windows when
    the data has them (training windows otherwise, for a primer only)."""
    val = ShardSet(root, "val", verify=False)
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
    if best_on == "train" and not family.wants_real(**family.sample_options) and len(train_shards):
        try:
            same_meter(train_shards, meter_of(cfg.run.meter))
        except UserError as e:
            log(f"{e}: best.pt is chosen on the validation windows instead")
            best_on = "val"
    seed, r = cfg.train.seed, cfg.run
    out = {"has_val": has_val, "best_on": best_on, "grid_real": None, "grid_look": None, "metrics_real": None,
           "val_windows": torch.from_numpy(val.pick(min(len(val), r.val_windows), seed)) if has_val else None}
    if family.wants_real(**family.sample_options):  # the LSTM's primers, the conditional GAN's chords
        source = val if has_val else train_shards
        grid = source.pick_indices(r.num_samples, seed + 12345)
        picked = source.pick_indices(r.metrics_samples, seed + 999)
        out.update(grid_real=torch.from_numpy(source.get_in_order(grid)), grid_look=window_look(source.records, grid),
                   metrics_real=torch.from_numpy(source.get_in_order(picked)),
                   metrics_bars=steps_per_bar(source.records["ts_num"][picked], source.records["ts_den"][picked],
                                              source.spec.steps_per_beat))
    return out


@torch.no_grad()
def log_samples(writer, family, nets, sampling: dict, spec: RollSpec, step: int, run_dir: Path, cfg: Config,
                device) -> dict:
    """Image grid, audio and MIDI of the moving-average model on fixed random draws; statistics against real data."""
    from .audio import render
    from .midi import notes_to_midi, part_names, roll_to_parts, save_midi

    n = cfg.run.num_samples
    probs = family.sample(n, torch.Generator().manual_seed(cfg.train.seed + 12345), nets=nets,
                          device=device, real=sampling["grid_real"], **family.sample_options).numpy()
    draw = spec_look(spec)
    if sampling["grid_look"] is not None:  # primed samples continue real windows: beside them, in their meter
        real, real_look = sampling["grid_real"].numpy(), sampling["grid_look"]
        gen_look = real_look
    else:  # free samples are drawn in run.meter, beside a sample of the training windows
        real, real_look = sampling["real_ref"][:n], look_of(sampling["real_look"], n)
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
        writer.add_scalar(f"Stats/{k}/real", sampling["real_stats"][k], step)
    return {f"Stats/{k}": v for k, v in stats.items()}


@torch.no_grad()
def log_metrics(writer, family, nets, sampling: dict, spec: RollSpec, root: Path, step: int, cfg: Config,
                device) -> dict:
    """The full metric set of samples against the cached real reference, memorisation, and the
    family's own validation figures (NLL, reconstruction), all of the moving-average model."""
    rolls = metric_rolls(family, nets, sampling, cfg, device)
    if sampling["metrics_real"] is not None:  # rolls that continue or accompany real windows: in their meters
        bar, meter = sampling["metrics_bars"], None
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
    if sampling["best_on"] == "train":  # the same rolls' metrics against the training windows, which choose best.pt
        train_real = reference_in_meter(ShardSet(root, "train", verify=False), meter, progress=False)[1]
        chosen_on = {"Metrics/train/overall": compare(res["per_roll"]["generated"], train_real)["overall"]}
        writer.add_scalar("Metrics/train/overall", chosen_on["Metrics/train/overall"], step)
    if cfg.run.best_raw and sampling["best_on"]:
        chosen_on.update(score_raw(writer, family, sampling, root, step, cfg, device, bar, meter, train_real))
    val = family.validate(sampling["val_windows"], nets=nets, device=device)
    for k, v in val.items():
        writer.add_scalar(k, v, step)
    return {"Metrics/overall": res["overall"], "Metrics/memorisation_above_0.8": mem["above_0.8"],
            "Metrics/pair_iou": res["diversity"]["generated_pair_iou"],
            "Metrics/pair_iou/real": res["diversity"]["real_pair_iou"], **chosen_on,
            **{f"Metrics/{k}/gap": v["gap"] for k, v in res["metrics"].items()}, **val}


def metric_rolls(family, nets, sampling: dict, cfg: Config, device) -> np.ndarray:
    """The run.metrics_samples binary rolls training scores, from the same noise at every scored step."""
    return family.sample(cfg.run.metrics_samples, torch.Generator().manual_seed(cfg.train.seed + 999), nets=nets,
                         device=device, real=sampling["metrics_real"], **family.sample_options).numpy() >= 0.5


@torch.no_grad()
def score_raw(writer, family, sampling: dict, root: Path, step: int, cfg: Config, device, bar, meter,
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
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m apollogan.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="YAML preset, for example configs/quick.yaml")
    ap.add_argument("--resume", metavar="PATH", help="checkpoint file, checkpoint folder or run name")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="for example train.steps=100 run.name=try")
    a = ap.parse_args(argv)
    resume = resolve_checkpoint(a.resume)[1] if a.resume else None
    cfg = load_config(a.config, a.overrides, base=resume["config"] if resume else None)
    if a.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    train(cfg, resume)
    return 0


if __name__ == "__main__":
    run(main)
