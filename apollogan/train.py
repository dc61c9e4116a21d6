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
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from . import __version__
from .checkpoint import load_checkpoint, resolve_checkpoint, restore, rng_state, save_checkpoint
from .cli import Terminated, UserError, run, stop_flag, stopped
from .config import Config, RunConfig, config_keys, load_config, meter_of
from .data import DEFAULT_OUT, bundled_root, data_mismatch, ensure_shards
from .distributed import Dist, barrier, broadcast, first_bad_step, gather, setup_distributed, shutdown, wrap
from .models import StepContext, build_family
from .monitor import Monitor
from .shards import ShardSet, is_current
from .spec import RollSpec


class NonFiniteLoss(Exception):
    pass


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


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold an exclusive lock on a run's checkpoint folder (created if missing) while the run writes it: a
    second process with the same run is refused in one line. The lock goes with the process, so a killed
    run leaves no lock (only its empty file); a finished one removes the file. Without flock (Windows), no lock."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"{folder}: another process is writing this run now; wait for it, or choose "
                            f"another run.name") from None
        try:
            yield
        finally:
            (folder / ".lock").unlink(missing_ok=True)  # still held: the file goes before the lock does


def claim_numbered(cfg: Config) -> str:
    """The first free NAME-NNN, its checkpoint folder created here: two runs starting at once get two."""
    while True:
        name = next_run_name(cfg)
        try:
            (Path(cfg.run.checkpoints_dir) / name).mkdir(parents=True)
            return name
        except FileExistsError:
            continue


def resume_folder(cfg: Config, path: Path, log) -> str:
    """The run a resumed checkpoint writes into: the folder it was resumed from when that is a run of
    run.checkpoints_dir, else a new numbered run. A name stored in the checkpoint is never a place to write."""
    folder = Path(path).resolve().parent
    if folder.parent == Path(cfg.run.checkpoints_dir).resolve():
        return folder.name
    name = claim_numbered(cfg)
    log(f"{path}: resumed into a new run {name} (its folder is not a run of {cfg.run.checkpoints_dir})")
    return name


def fixed_run_name(cfg: Config) -> str:
    """run.numbered=false: the run is called run.name exactly (the ablation runner's cells), once."""
    last = Path(cfg.run.checkpoints_dir) / cfg.run.name / "last.pt"
    if last.exists():
        raise UserError(f"{last}: run {cfg.run.name} exists; continue it with --resume {last.parent} "
                        f"or choose another run.name")
    return cfg.run.name


def train_windows(shards: ShardSet, meter: str) -> np.ndarray:
    """Indices of the training windows a run draws from: all, or those in ``meter`` (data.meter)."""
    if not meter:
        return np.arange(len(shards))
    keep = np.flatnonzero(shards.in_meter(*meter_of(meter)))
    if len(keep) == 0:
        raise UserError(f"data.meter={meter}: {shards.root} has no training window in that meter")
    return keep


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


def training_shards(cfg: Config, ckpt: dict | None, env: Dist, log) -> ShardSet:
    """The training split of data.root: the bundled tunes preprocessed first where they are meant,
    and refused when the shards' manifest differs from what the config's data section asks for."""
    root = Path(cfg.data.root)
    if root == DEFAULT_OUT and bundled_root(cfg.data) != DEFAULT_OUT and not (root / "manifest.json").exists():
        raise UserError(f"{root} holds the bundled tunes made with the default data options; for these "
                        f"(data.onset, data.key_normalize, data.transpose, data.time_shifts) set data.root={bundled_root(cfg.data)}")
    if env.main and root == bundled_root(cfg.data) and not is_current(root):
        ensure_shards(root, cfg.data, log=log)
    barrier(env)  # the other ranks wait for rank 0's preprocessing
    shards = ShardSet(root, "train", spec=RollSpec.from_dict(ckpt["spec"]) if ckpt else None, verify=env.main)
    differs = data_mismatch(shards.manifest, cfg.data)
    if differs:  # never train on other data than the config says
        hint = (f"; data.root={bundled_root(cfg.data)} holds the bundled tunes made so"
                if root == DEFAULT_OUT else "; preprocess with those options into another folder")
        raise UserError(f"{root}: the config asks for {differs}{hint}")
    return shards


def build_networks(spec: RollSpec, cfg: Config, device, fmt, data=None) -> tuple:
    """The family's networks, initialised from train.seed, on the device; their moving averages; optimisers.
    ``data``: (train shards, usable indices) of a new run, for a family that learns something from the data
    before its first step (``prepare``: the token output's vocabulary); a resumed run has it in its checkpoint."""
    torch.manual_seed(cfg.train.seed)
    try:
        family = build_family(spec, cfg)
    except ValueError as e:
        raise UserError(f"{cfg.data.root}: its rolls do not fit the model: {e}") from None
    if data is not None and hasattr(family, "prepare"):
        family.prepare(*data)
    for m in family.modules.values():
        m.to(device)
        m.to(memory_format=fmt)
    ema = {k: copy.deepcopy(family.modules[k]).eval().requires_grad_(False) for k in family.ema_names}
    return family, ema, family.optimizers()


def set_lr(optimizers: dict, base_lr: dict, scale: float) -> None:
    for k, o in optimizers.items():
        for g, lr in zip(o.param_groups, base_lr[k]):
            g["lr"] = lr * scale


class Interval:
    """The training figures of the steps since the last log line, summed on the device: read (one host
    sync) only when logged."""

    def __init__(self, step: int):
        self.sums, self.grads, self.n, self.since, self.t0 = {}, {}, 0, step, time.perf_counter()

    @torch.no_grad()
    def add(self, figures: dict) -> None:
        for k, v in figures.items():
            if k.startswith("GradNorm/"):  # the last logged step's gradient norms
                self.grads[k] = v
            else:
                self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.n += 1

    def take(self, step: int, samples_per_step: int) -> tuple[dict, float]:
        """Means of the interval's figures (gradient norms as they are) and samples/s; starts the next one."""
        keys = list(self.sums) + list(self.grads)
        vals = dict(zip(keys, torch.stack([self.sums[k] / self.n for k in self.sums] + list(self.grads.values())).tolist()))
        now = time.perf_counter()
        speed = (step - self.since) * samples_per_step / (now - self.t0)
        self.__init__(step)
        self.t0 = now
        return vals, speed


def train(cfg: Config, resume: Path | str | None = None, log=print, progress: bool = True) -> dict:
    """Run (or continue, from a checkpoint file) training; returns the final figures.

    Rank 0 alone logs and saves.
    """
    env = setup_distributed()
    done = False
    try:
        with contextlib.ExitStack() as hold:
            out = _train(cfg, resume, env, log if env.main else (lambda *a, **k: None), progress and env.main, hold)
        done = True
        return out
    finally:
        shutdown(env, done)


def _train(cfg: Config, resume, env: Dist, log, progress, hold: contextlib.ExitStack) -> dict:
    t, device = cfg.train, env.device
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt and ckpt["family"] != cfg.model.family:
        raise UserError(f"model.family: the checkpoint is of family {ckpt['family']}; a resumed run keeps its family")
    if env.world > 1 and (t.loss == "wgan-gp" or t.r1 or t.time_limit):  # their double backward bypasses DDP; the
        raise UserError("train.loss=wgan-gp, train.r1 and train.time_limit are single-process only")  # clocks differ
    shards = training_shards(cfg, ckpt, env, log)
    spec = shards.spec
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    usable = train_windows(shards, cfg.data.meter)
    family, ema, opts = build_networks(spec, cfg, device, fmt, None if ckpt else (shards, usable))
    base_lr = {k: [g["lr"] for g in o.param_groups] for k, o in opts.items()}  # the config's, before a checkpoint's
    gen = torch.Generator(device).manual_seed(t.seed * 7919 + env.rank)  # every draw of the training steps
    step = batches = 0
    if ckpt:
        restore(ckpt, family, ema, opts, gen, env.rank, env.world)
        step, batches = ckpt["step"], ckpt["batches"]
    if env.main:
        run_name = (resume_folder(cfg, resume, log) if ckpt else claim_numbered(cfg) if cfg.run.numbered
                    else fixed_run_name(cfg))
    run_name = broadcast(run_name if env.main else None, env)
    ckpt_dir = Path(cfg.run.checkpoints_dir) / run_name
    if env.main:
        hold.enter_context(run_lock(ckpt_dir))  # until train() returns
    nets, no_sync = wrap(family.modules, env, t.compile)
    bf16 = use_bf16(cfg, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    stream = BatchStream(len(usable), t.batch_size, t.seed, env.rank, env.world)

    def real_batch():
        nonlocal batches
        idx = usable[stream.indices(batches)]  # sorted, as the stream's
        batches += 1
        return torch.from_numpy(shards.get(idx)).to(device, non_blocking=True).float().contiguous(memory_format=fmt)

    monitor = None
    if env.main:
        if not ckpt:
            log(f"run {run_name}: {family.name}, {family.describe()}, {len(usable)} train windows of "
                f"{list(spec.shape)}, device {device}{' bf16' if bf16 else ''}, {env.world} process(es)")
            log(f"tensorboard --logdir {cfg.run.runs_dir}   checkpoints: {ckpt_dir}")
        monitor = Monitor(cfg, family, ema, shards, usable, run_name, device, log, ckpt)
    clock = RunClock(**(ckpt.get("clock") or {}) if ckpt else {})

    def state(gather_rngs: bool = True) -> dict:  # without the gather (one rank interrupted), the others' RNGs restart
        return {"family": family.name, "modules": {k: m.state_dict() for k, m in family.modules.items()},
                "ema": {k: m.state_dict() for k, m in ema.items()},
                "optimizers": {k: o.state_dict() for k, o in opts.items()}, "step": step, "batches": batches,
                "rng": gather(rng_state(gen), env) if gather_rngs or env.world == 1 else [], "world": env.world,
                "config": cfg.to_dict(), "spec": spec.to_dict(), "run_name": run_name, "apollogan": __version__,
                "clock": clock.state(), "best": monitor.best if monitor else None}

    saved = {"step": None}

    def save(gather_rngs: bool = True):
        if saved["step"] == step:  # a stop right after the step's own checkpoint: it is on disk already
            return
        s = state(gather_rngs)  # every rank joins the RNG gather
        if env.main:
            save_checkpoint(s, ckpt_dir, step, cfg.run.keep)
        saved["step"] = step

    def check_finite():  # every rank stops at the first bad step of any rank
        bad = first_bad_step(first_bad, env)
        if bad >= 0:
            raise NonFiniteLoss(f"non-finite loss at step {bad}; the last good checkpoint is {ckpt_dir / 'last.pt'}")

    # Ctrl-C and SIGTERM stop the run between two steps, so that the checkpoint saved holds whole steps and
    # resumes exactly (one process; several are stopped the old way, issue of many processes)
    signals = contextlib.ExitStack()  # closed right after the loop: a signal later (scoring, closing) acts as usual
    flag = signals.enter_context(stop_flag(env.world == 1))
    first_bad, interval, final, between = torch.tensor(-1, device=device), Interval(step), {}, False
    bar = tqdm(total=t.steps, initial=step, desc=run_name, unit="step", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    try:
        while step < t.steps:
            for m in family.modules.values():
                m.train()
            logging_now = (step + 1) % cfg.run.log_every == 0 or step + 1 == t.steps
            if t.lr_decay:  # a function of the step alone, so a resumed run follows the same schedule
                set_lr(opts, base_lr, lr_scale(step, t.steps, t.lr_decay))
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
            interval.add(figures)
            bar.update()
            if logging_now or last:
                check_finite()  # the one host sync of the interval
                vals, speed = interval.take(step, t.batch_size * env.world)
                final = {k: v for k, v in vals.items() if not k.startswith("GradNorm/")}
                if monitor:
                    monitor.log_interval(step, vals, opts, speed)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in final.items() if k.startswith("Loss/")}
                                | {"sps": f"{speed:.0f}"}, refresh=False)
            with clock.aside():
                if monitor:
                    final.update(monitor.after_step(step, last, state, lambda bad=first_bad: int(bad) < 0))
                if step % cfg.run.checkpoint_every == 0 or last:
                    check_finite()
                    save()
            if last:
                break
            if flag["signal"] is not None:
                between = True
                raise stopped(flag)
    except KeyboardInterrupt as e:
        bar.close()
        # One process stops between two steps only (a second Ctrl-C stops at once: nothing is saved then, as
        # a step may be half done). Ranks may be interrupted at different points, so no collective here: under
        # DDP rank 0 saves its own copy of the (synchronised) weights, judged finite by its own losses.
        if env.world == 1 and not between:
            log(f"stopped during step {step + 1}; the last checkpoint is {ckpt_dir / 'last.pt'}")
        elif int(first_bad) < 0:
            save(gather_rngs=env.world == 1)
            what = "terminated" if isinstance(e, Terminated) else "interrupted"
            log(f"{what} at step {step}; saved {ckpt_dir / 'last.pt'} - resume with --resume {run_name}")
        raise
    except NonFiniteLoss as e:
        bar.close()
        raise UserError(str(e)) from None
    finally:
        signals.close()
    bar.close()
    timing = {"steps": step, "stopped_by": "steps" if step >= t.steps else "time_limit",
              "elapsed_s": round(clock.elapsed(), 3),
              "samples_per_s": round(step * t.batch_size * env.world / max(clock.training(), 1e-9), 2)}
    if monitor:
        monitor.close(timing, final)
    return {"run_name": run_name, "run_dir": str(Path(cfg.run.runs_dir) / run_name),
            "checkpoint": str(ckpt_dir / "last.pt"), **timing, **final}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apollogan.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="YAML preset, for example configs/quick.yaml")
    ap.add_argument("--resume", metavar="PATH", help="checkpoint file, checkpoint folder or run name")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="for example train.steps=100 run.name=try")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    path, ckpt = resolve_checkpoint(a.resume) if a.resume else (None, None)
    cfg = load_config(a.config, a.overrides, base=ckpt["config"] if ckpt else None)
    if ckpt:  # a stored path is never a place to write: the checkpoint's own place, or this command's folders
        given = {o.partition("=")[0] for o in a.overrides} | config_keys(a.config)
        if "run.checkpoints_dir" not in given:
            cfg.run.checkpoints_dir = str(Path(path).resolve().parent.parent)
        if "run.runs_dir" not in given:
            cfg.run.runs_dir = RunConfig().runs_dir
    if a.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    train(cfg, path)
    return 0


if __name__ == "__main__":
    run(main)
