"""Train a GAN on piano-roll shards, watched in TensorBoard.

    python -m apollogan.train --config configs/quick.yaml            # small model, a 2-core CPU
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
from .checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from .cli import UserError, run
from .config import Config, load_config
from .data import RollDataset
from .losses import d_fake_term, d_real_term, feature_matching, generator_loss, gradient_penalty
from .metrics import TRAINING_STATS
from .models import build_models, count_params
from .preprocess import DEFAULT_OUT, ensure_shards
from .shards import ShardSet
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


def rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "noise": gen.get_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["noise"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def roll_stats(rolls: np.ndarray) -> dict:
    x = rolls[:, 0].astype(bool)
    vals = {k: f(x) for k, f in TRAINING_STATS.items()}
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in vals.items()}


def cpu_has_bf16() -> bool:
    """Native bf16 units (AVX512-BF16 or AMX): there bf16 autocast is faster; elsewhere it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell, stay in fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
    try:
        return _train(cfg, resume, env, log if env.main else (lambda *a, **k: None), progress and env.main)
    finally:
        if env.world > 1:
            dist.destroy_process_group()


def _train(cfg: Config, resume, env: Dist, log, progress) -> dict:
    t, device = cfg.train, env.device
    ckpt = load_checkpoint(resume) if isinstance(resume, (str, Path)) else resume
    root = Path(cfg.data.root)
    if env.main and root == DEFAULT_OUT and not (root / "manifest.json").exists():
        ensure_shards(root, RollSpec(onset=cfg.data.onset), log=log)
    if env.world > 1:
        dist.barrier()  # the other ranks wait for rank 0's preprocessing
        if t.loss == "wgan-gp":
            raise UserError("train.loss=wgan-gp is single-process only (its double backward bypasses DDP)")
    data = RollDataset(root, "train", spec=RollSpec.from_dict(ckpt["spec"]) if ckpt else None, verify=env.main)
    spec = data.spec
    torch.manual_seed(t.seed)
    try:
        G, D = build_models(spec, cfg.model)
    except ValueError as e:
        raise UserError(f"{root}: its rolls do not fit the model: {e}") from None
    G.to(device), D.to(device)
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    G.to(memory_format=fmt), D.to(memory_format=fmt)
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
    gen = torch.Generator(device).manual_seed(t.seed * 7919 + env.rank)  # noise of the training steps
    step = batches = 0
    if ckpt:
        G.load_state_dict(ckpt["G"]), D.load_state_dict(ckpt["D"]), ema.load_state_dict(ckpt["G_ema"])
        opt_g.load_state_dict(ckpt["opt_g"]), opt_d.load_state_dict(ckpt["opt_d"])
        step, batches, run_name = ckpt["step"], ckpt["batches"], ckpt["run_name"]
        if env.world == ckpt.get("world", 1):
            set_rng_state(ckpt["rng"][min(env.rank, len(ckpt["rng"]) - 1)], gen)
    else:
        run_name = next_run_name(cfg) if env.main else None
    if env.world > 1:
        names = [run_name]
        dist.broadcast_object_list(names, src=0)
        run_name = names[0]
    run_dir, ckpt_dir = Path(cfg.run.runs_dir) / run_name, Path(cfg.run.checkpoints_dir) / run_name

    g_run, d_run = G, D
    if env.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        g_run, d_run = ddp(G, device_ids=ids), ddp(D, device_ids=ids)
    if t.compile:
        g_run, d_run = torch.compile(g_run), torch.compile(d_run)
    bf16 = use_bf16(cfg, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    no_sync_d = d_run.no_sync if env.world > 1 else contextlib.nullcontext
    stream = BatchStream(len(data), t.batch_size, t.seed, env.rank, env.world)
    fixed_z = G.noise(cfg.run.num_samples, torch.Generator().manual_seed(t.seed + 12345)).to(device)

    def real_batch():
        nonlocal batches
        idx = stream.indices(batches)
        batches += 1
        x = torch.from_numpy(data.shards.get(idx)).to(device, non_blocking=True).float()
        return x.contiguous(memory_format=fmt)

    writer = None
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir))
        if not ckpt:
            log(f"run {run_name}: G {count_params(G) / 1e6:.2f}M, D {count_params(D) / 1e6:.2f}M parameters, "
                f"{len(data)} train windows of {list(spec.shape)}, device {device}{' bf16' if bf16 else ''}, "
                f"{env.world} process(es)")
            log(f"tensorboard --logdir {cfg.run.runs_dir}   checkpoints: {ckpt_dir}")
        pick = np.random.default_rng(t.seed).choice(len(data), min(len(data), 512), replace=False)
        real_ref = data.shards.get(np.sort(pick))  # a sample of the corpus, not its first tunes
        if not ckpt:
            from .images import roll_grid

            writer.add_image("Real", roll_grid(real_ref[: cfg.run.num_samples]), 0)
        real_stats = roll_stats(real_ref)
        has_val = len(ShardSet(root, "val", verify=False)) > 0
        if not has_val:
            log(f"{root} has no validation windows: the metrics against real data are skipped")
    else:
        real_stats, has_val = {}, False

    def state() -> dict:
        rngs = [rng_state(gen)]
        if env.world > 1:
            rngs = [None] * env.world
            dist.all_gather_object(rngs, rng_state(gen))
        return {"G": G.state_dict(), "D": D.state_dict(), "G_ema": ema.state_dict(), "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(), "step": step, "batches": batches, "rng": rngs, "world": env.world,
                "config": cfg.to_dict(), "spec": spec.to_dict(), "run_name": run_name, "apollogan": __version__}

    def save():
        s = state()  # every rank joins the RNG gather
        if env.main:
            save_checkpoint(s, ckpt_dir, step, cfg.run.keep)

    first_bad = torch.tensor(-1, device=device)
    acc = torch.zeros(4, device=device)  # Loss/D, Loss/G, D(x), D(G(z)) summed over the log interval
    acc_n, last_log, last_time = 0, step, time.perf_counter()
    final = {}
    bar = tqdm(total=t.steps, initial=step, desc=run_name, unit="step", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)

    def check_finite():
        bad = int(first_bad)
        if bad >= 0:
            raise NonFiniteLoss(f"non-finite loss at step {bad}; the last good checkpoint is {ckpt_dir / 'last.pt'}")

    try:
        while step < t.steps:
            G.train(), D.train()
            logging_now = (step + 1) % cfg.run.log_every == 0 or step + 1 == t.steps
            for _ in range(t.d_steps):
                real = real_batch()
                with torch.no_grad(), autocast():
                    fake = g_run(G.noise(real.shape[0], gen, device)).float()
                opt_d.zero_grad(set_to_none=True)
                # real and fake go through D separately (the reference's batch norm statistics),
                # each forward followed by its own backward, as DDP needs
                with autocast():
                    real_logits = d_run(real).float()
                    loss_real = d_real_term(t.loss, real_logits, t.label_smoothing)
                loss_real.backward()
                with autocast():
                    fake_logits = d_run(fake.contiguous(memory_format=fmt)).float()
                    loss_fake = d_fake_term(t.loss, fake_logits)
                loss_fake.backward()
                loss_d = loss_real.detach() + loss_fake.detach()
                if t.loss == "wgan-gp":
                    gp = t.gp_weight * gradient_penalty(D, real, fake, gen)
                    gp.backward()
                    loss_d = loss_d + gp.detach()
                if logging_now:
                    grad_d = _grad_norm(D)  # of the last D step of the interval
                opt_d.step()
            opt_g.zero_grad(set_to_none=True)
            with autocast():
                fake = g_run(G.noise(t.batch_size, gen, device))
                with no_sync_d():  # D's gradients from this pass are discarded; skip their all-reduce
                    if t.feature_matching > 0:
                        fake_logits_g, f_fake = d_run(fake.float().contiguous(memory_format=fmt), features=True)
                        _, f_real = d_run(real, features=True)
                    else:
                        fake_logits_g = d_run(fake.float().contiguous(memory_format=fmt))
                loss_g = generator_loss(t.loss, fake_logits_g.float())
                if t.feature_matching > 0:
                    loss_g = loss_g + t.feature_matching * feature_matching(f_real.float(), f_fake.float())
            loss_g.backward()
            if logging_now:
                grad_g = _grad_norm(G)
            opt_g.step()
            ema_update(ema, G, ema_decay_at(t.ema_decay, step))
            step += 1
            with torch.no_grad():
                first_bad = torch.where((~torch.isfinite(loss_d + loss_g)) & (first_bad < 0), step, first_bad)
                acc[:4] += torch.stack([loss_d, loss_g.detach(), torch.sigmoid(real_logits.detach()).mean(),
                                        torch.sigmoid(fake_logits.detach()).mean()])
            acc_n += 1
            bar.update()

            if logging_now:
                check_finite()  # the one host sync of the interval
                vals = (acc / acc_n).tolist()
                now = time.perf_counter()
                speed = (step - last_log) * t.batch_size * env.world / (now - last_time)
                final = {"Loss/D": vals[0], "Loss/G": vals[1], "D(x)": vals[2], "D(G(z))": vals[3]}
                if writer:
                    for k, v in final.items():
                        writer.add_scalar(k, v, step)
                    writer.add_scalar("GradNorm/D", float(grad_d), step)
                    writer.add_scalar("GradNorm/G", float(grad_g), step)
                    writer.add_scalar("LR/G", opt_g.param_groups[0]["lr"], step)
                    writer.add_scalar("LR/D", opt_d.param_groups[0]["lr"], step)
                    writer.add_scalar("Speed/samples_per_s", speed, step)
                bar.set_postfix(D=f"{vals[0]:.3f}", G=f"{vals[1]:.3f}", sps=f"{speed:.0f}", refresh=False)
                acc.zero_()
                acc_n, last_log, last_time = 0, step, now
            if writer and (step % cfg.run.sample_every == 0 or step == t.steps):
                final.update(log_samples(writer, ema, fixed_z, spec, step, run_dir, real_stats, cfg))
            if writer and has_val and ((cfg.run.metrics_every and step % cfg.run.metrics_every == 0) or step == t.steps):
                final.update(log_metrics(writer, ema, spec, root, step, cfg, device))
            if step % cfg.run.checkpoint_every == 0 or step == t.steps:
                check_finite()
                save()
    except KeyboardInterrupt:
        bar.close()
        if int(first_bad) < 0:
            save()
            log(f"interrupted at step {step}; saved {ckpt_dir / 'last.pt'} - resume with --resume {run_name}")
        raise
    except NonFiniteLoss as e:
        bar.close()
        raise UserError(str(e)) from None
    bar.close()
    if writer:
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.flat().items()}
        writer.add_hparams(hp, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")
        writer.close()
        log(f"done: {step} steps; checkpoint {ckpt_dir / 'last.pt'}; samples {run_dir / 'samples'}")
    return {"run_name": run_name, "run_dir": str(run_dir), "checkpoint": str(ckpt_dir / "last.pt"), **final}


def _grad_norm(m: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(m.parameters()).device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


@torch.no_grad()
def log_samples(writer, ema, fixed_z, spec: RollSpec, step: int, run_dir: Path, real_stats: dict, cfg: Config) -> dict:
    """Image grid, audio and MIDI of the EMA generator on fixed noise; statistics against real data."""
    from .audio import render
    from .images import roll_grid
    from .midi import notes_to_midi, roll_to_notes, save_midi

    probs = ema(fixed_z).float().cpu()
    writer.add_image("Samples/ema", roll_grid(probs), step)
    rolls = (probs >= 0.5).numpy()
    writer.add_image("Samples/ema_binary", roll_grid(torch.from_numpy(rolls).float()), step)
    out = run_dir / "samples" / f"step-{step:07d}"
    for i, roll in enumerate(rolls[: max(cfg.run.audio_samples, 4)]):
        notes = roll_to_notes(roll, spec)
        save_midi(notes_to_midi(notes, spec), out / f"sample-{i:02d}.mid")
        if i < cfg.run.audio_samples:  # an empty roll is logged as silence: that is worth hearing too
            wave = render(notes, spec, sample_rate=16000)
            writer.add_audio(f"Audio/sample_{i}", torch.from_numpy(wave)[None], step, sample_rate=16000)
    stats = roll_stats(rolls)
    for k, v in stats.items():
        writer.add_scalar(f"Stats/{k}/generated", v, step)
        writer.add_scalar(f"Stats/{k}/real", real_stats[k], step)
    return {f"Stats/{k}": v for k, v in stats.items()}


@torch.no_grad()
def log_metrics(writer, ema, spec: RollSpec, root: Path, step: int, cfg: Config, device) -> dict:
    """The full metric set of EMA samples against the cached real reference, and memorisation."""
    from .evaluate import evaluate_rolls
    from .generate import sample_rolls
    from .metrics import steps_per_bar

    rolls = sample_rolls(ema, cfg.run.metrics_samples, seed=cfg.train.seed + 999, device=device) >= 0.5
    res = evaluate_rolls(rolls, root, steps_per_bar(4, 4, spec.steps_per_beat), progress=False)
    for name, row in res["metrics"].items():
        writer.add_scalar(f"Metrics/{name}/generated", row["generated_mean"], step)
        writer.add_scalar(f"Metrics/{name}/gap", row["gap"], step)
    writer.add_scalar("Metrics/overall", res["overall"], step)
    mem = res["memorisation"]
    for t in ("0.5", "0.8", "0.95"):
        writer.add_scalar(f"Metrics/memorisation_above_{t}", mem[f"above_{t}"], step)
    return {"Metrics/overall": res["overall"], "Metrics/memorisation_above_0.8": mem["above_0.8"],
            **{f"Metrics/{k}/gap": v["gap"] for k, v in res["metrics"].items()}}


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
