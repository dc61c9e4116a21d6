"""Ablations: train and evaluate variants of one preset on the same data, with the same metrics.

    python -m apollogan.ablate configs/ablations/smoke.yaml
    python -m apollogan.ablate configs/ablations/loss.yaml --seeds 3 --steps 600
    python -m apollogan.ablate configs/ablations/loss.yaml --dry-run        # the cells and their commands
    python -m apollogan.ablate configs/ablations/models.yaml --executor slurm --partition gpu \\
        --gpus-per-node 1 --cpus-per-task 8 --time 120 --jobs 16

An ablation file names a base preset and its cells: a grid (the Cartesian product of config
values) and/or named variants (each a list of KEY=VALUE overrides, and optionally extra
evaluate arguments), crossed with each other. Every cell x seed is one run with a fixed name,
runs/ablations/NAME/CELL-sSEED (checkpoints in checkpoints/ablations/NAME/CELL-sSEED): it is
trained with `python -m apollogan.train`, then scored with `python -m apollogan.evaluate`
(the same number of samples and the same evaluation seed for every run), and its figures go
to final.json. Running the command again skips finished runs and resumes interrupted ones from
their last checkpoint. A cell's shards follow its data options (data.onset, data.key_normalize,
data.transpose, data.time_shifts): the bundled tunes are preprocessed once per set of options and shared.

Results: runs/ablations/NAME/results.csv (one row per run: overrides, seed, steps, wall time,
samples/s, every metric's generated value and gap, the overall figure, memorisation, pair IoU) and
summary.md (mean ± std over seeds per cell, the best value of each column in bold).
`tensorboard --logdir runs/ablations/NAME` shows every run; its HParams tab compares them.

Executors: local (--jobs J runs at a time, as subprocesses) or slurm (a job array through
submitit; --executor submitit-local runs the same path on this machine, without Slurm).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from .arguments import evaluate_parser
from .cli import REPO_ROOT, UserError, atomic_write_bytes, atomic_write_json, run, stopped
from .config import load_config, read_yaml
from .data import DEFAULT_OUT, bundled_root, data_mismatch, ensure_shards
from .shards import read_manifest

FILE_KEYS = {"base", "seeds", "first_seed", "steps", "overrides", "grid", "variants", "evaluate", "description"}
EVALUATE_KEYS = {"num", "seed", "args", "checkpoint"}
NO_DECIMALS = ("steps", "wall_s", "samples_per_s")


@dataclass
class Cell:
    name: str
    overrides: list[str]  # KEY=VALUE, after the file's common overrides
    evaluate: list[str] = field(default_factory=list)  # extra evaluate arguments (for example --bernoulli)


@dataclass
class Ablation:
    name: str
    base: str
    cells: list[Cell]
    seeds: list[int]
    steps: int | None
    overrides: list[str]
    cli_steps: int | None = None  # --steps: every run's, over the cells' and the file's
    eval_num: int = 1000
    eval_seed: int = 0
    eval_checkpoint: str = "last"  # or best: best.pt, chosen during training on the training windows
    eval_args: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def runs_dir(self) -> Path:
        return Path("runs") / "ablations" / self.name

    @property
    def checkpoints_dir(self) -> Path:
        return Path("checkpoints") / "ablations" / self.name


@dataclass
class Job:
    """One cell x seed: everything a worker (a thread here, a Slurm task there) needs, as plain data."""

    ablation: str
    cell: str
    seed: int
    run: str
    train_cmd: list[str]
    resume_cmd: list[str]
    eval_cmd: list[str]
    overrides: list[str]
    eval_args: list[str]
    steps: int
    run_dir: str
    ckpt_dir: str
    cwd: str
    threads: int = 0  # OMP/MKL threads for the subprocesses (0: torch's default)
    eval_checkpoint: str = "last"
    config: dict = field(default_factory=dict)  # the run's resolved config, to tell a changed base preset


# --- the ablation file ---------------------------------------------------------------------------

SEED_RULE = "train.seed is set by the runner for every run (seeds come from `seeds:` and `first_seed:`)"


def _override(where: str, key: str, value) -> str:
    if not isinstance(key, str) or "." not in key:
        raise UserError(f"{where}: {key!r} is not a config key such as train.loss")
    if key == "train.seed":  # the runner's own train.seed would win over it
        raise UserError(f"{where}: {SEED_RULE}")
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}={text}"


def _overrides(where: str, items) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(x, str) and "=" in x for x in items):
        raise UserError(f"{where}: expected a list of KEY=VALUE strings, for example [train.loss=hinge]")
    for x in items:
        if x.partition("=")[0].strip() == "train.seed":
            raise UserError(f"{where}: {x}: {SEED_RULE}")
    return list(items)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text)


def _eval_args(where: str, args: list[str]) -> list[str]:
    """Evaluate arguments checked by evaluate's own parser now, not after every run has trained."""
    ap = evaluate_parser()

    def fail(message):
        raise UserError(f"{where}: {message}")
    ap.error = fail
    ap.parse_args(["--checkpoint", "RUN", *map(str, args)])
    return args


def load_ablation(path: Path, seeds: int | None = None, steps: int | None = None) -> Ablation:
    """Read and check an ablation file; cells are checked against the config (one line per problem)."""
    doc = read_yaml(path)
    if isinstance(doc, dict) and doc and set(doc) <= {"data", "model", "train", "run"}:
        raise UserError(f"{path}: a training preset (python -m apollogan.train --config {path}); an ablation "
                        f"file names one as `base:` and lists its cells")
    if not isinstance(doc, dict) or "base" not in doc:
        raise UserError(f"{path}: expected a mapping with at least `base: configs/PRESET.yaml`")
    unknown = set(doc) - FILE_KEYS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(FILE_KEYS))})")
    given = Path(str(doc["base"]))  # relative to the working folder, else to the repository (configs/...)
    base = next((p for p in (given, REPO_ROOT / given) if p.is_file()), None)
    if base is None:
        raise UserError(f"{path}: base {given}: no such preset")
    grid = doc.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"{path}: grid: expected a mapping of config keys to non-empty lists of values")
    axes = [[(k, _override(f"{path}: grid", k, v)) for v in values] for k, values in grid.items()]
    variants = doc.get("variants") or {}
    if not isinstance(variants, dict):
        raise UserError(f"{path}: variants: expected a mapping of names to lists of KEY=VALUE overrides")
    named = []
    for name, spec in variants.items():
        where = f"{path}: variants.{name}"
        if isinstance(spec, dict):
            extra = set(spec) - {"overrides", "evaluate"}
            if extra:
                raise UserError(f"{where}: unknown key(s) {', '.join(sorted(extra))} (known: overrides, evaluate)")
            ev = spec.get("evaluate") or []
            if not isinstance(ev, list) or not all(isinstance(x, str) for x in ev):
                raise UserError(f"{where}.evaluate: expected a list of evaluate arguments, for example [--bernoulli]")
            named.append((str(name), _overrides(where, spec.get("overrides") or []), _eval_args(f"{where}.evaluate", ev)))
        else:
            named.append((str(name), _overrides(where, spec or []), []))
    cells = []
    for variant in named or [None]:
        for combo in itertools.product(*axes):
            parts = ([variant[0]] if variant else []) + [f"{k.split('.')[-1]}={o.split('=', 1)[1]}" for k, o in combo]
            cells.append(Cell(_slug(",".join(parts) or "base"),
                              (variant[1] if variant else []) + [o for _, o in combo], variant[2] if variant else []))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: two cells would share the run name {next(n for n in names if names.count(n) > 1)}")
    ev = doc.get("evaluate") or {}
    if not isinstance(ev, dict) or set(ev) - EVALUATE_KEYS:
        raise UserError(f"{path}: evaluate: expected a mapping with num, seed, args and/or checkpoint")
    if ev.get("checkpoint", "last") not in ("last", "best"):
        raise UserError(f"{path}: evaluate.checkpoint: expected last or best, got {ev['checkpoint']!r}")
    n_seeds = seeds if seeds is not None else doc.get("seeds", 1)
    n_steps = doc.get("steps")
    first = doc.get("first_seed", 0)  # fresh seeds for a confirmation round: first_seed, first_seed + 1, ...
    for key, v, low in (("seeds", n_seeds, 1), ("first_seed", first, 0), ("steps", n_steps, 1),
                        ("evaluate.num", ev.get("num", 1000), 1), ("evaluate.seed", ev.get("seed", 0), 0)):
        if (v is not None or key != "steps") and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise UserError(f"{path}: {key}: expected an integer >= {low}, got {v!r}")
    if not isinstance(ev.get("args", []), list) or not all(isinstance(x, str) for x in ev.get("args", [])):
        raise UserError(f"{path}: evaluate.args: expected a list of evaluate arguments, for example [--bernoulli]")
    _eval_args(f"{path}: evaluate.args", ev.get("args", []))
    return Ablation(name=_slug(Path(path).stem), base=str(base), cells=cells, seeds=list(range(first, first + n_seeds)),
                    steps=n_steps, cli_steps=steps, overrides=_overrides(f"{path}: overrides", doc.get("overrides") or []),
                    eval_num=ev.get("num", 1000), eval_seed=ev.get("seed", 0), eval_checkpoint=ev.get("checkpoint", "last"),
                    eval_args=[str(x) for x in ev.get("args", [])], description=str(doc.get("description", "")))


def plan(ab: Ablation, build_data: bool, jobs: int = 1, log=print) -> list[Job]:
    """Every cell x seed as a Job, each config checked first; the bundled data each cell needs is built
    (once per set of data options) when ``build_data``."""
    out, built = [], set()
    py = sys.executable if build_data else "python"  # a dry run prints the command as a user would type it
    # the bundled tunes' folders: the default one, and the base's own when it names the folder made with its
    # data options (data.root=chunks/nottingham-key with data.key_normalize=true); a cell on either gets the
    # folder of its own options
    bundled = {DEFAULT_OUT}
    try:
        base = load_config(ab.base, ab.overrides).data
        if Path(base.root) == bundled_root(base):
            bundled.add(Path(base.root))
    except UserError:  # valid only with each cell's overrides: the cells below report what is wrong
        pass
    for cell in ab.cells:
        overrides = ab.overrides + cell.overrides
        try:
            cfg = load_config(ab.base, overrides)
        except UserError as e:
            raise UserError(f"cell {cell.name}: {e}") from None
        if Path(cfg.data.root) in bundled:
            root = bundled_root(cfg.data)
            if root != Path(cfg.data.root):
                overrides = overrides + [f"data.root={root}"]
            if build_data and root not in built:
                ensure_shards(root, cfg.data, log=log)
                built.add(root)
        elif build_data:
            differs = data_mismatch(read_manifest(Path(cfg.data.root)), cfg.data)
            if differs:
                raise UserError(f"cell {cell.name}: {cfg.data.root}: the cell asks for {differs}")
        own = any(o.startswith("train.steps=") for o in cell.overrides)  # a cell's own budget beats the file's
        steps = ab.cli_steps or (cfg.train.steps if own else ab.steps or cfg.train.steps)
        for seed in ab.seeds:
            run_name = f"{cell.name}-s{seed}"
            run_dir, ckpt_dir = ab.runs_dir / run_name, ab.checkpoints_dir / run_name
            fixed = [f"train.seed={seed}", f"train.steps={steps}", f"run.runs_dir={ab.runs_dir}",
                     f"run.checkpoints_dir={ab.checkpoints_dir}"]
            train_cmd = [py, "-m", "apollogan.train", "--config", ab.base, *overrides, *fixed,
                         f"run.name={run_name}", "run.numbered=false"]
            resume_cmd = [py, "-m", "apollogan.train", "--resume", str(ckpt_dir), f"train.steps={steps}",
                          f"run.runs_dir={ab.runs_dir}"]  # a resumed run's folders are the command's, never stored ones
            scored = ckpt_dir / ("best.pt" if ab.eval_checkpoint == "best" else "last.pt")
            eval_cmd = [py, "-m", "apollogan.evaluate", "--checkpoint", str(scored), "--num", str(ab.eval_num),
                        "--seed", str(ab.eval_seed), "--meter", cfg.run.meter, *ab.eval_args, *cell.evaluate,
                        "--out", str(run_dir / "evaluate.json")]
            resolved = load_config(ab.base, overrides + fixed + [f"run.name={run_name}", "run.numbered=false"])
            if ab.eval_checkpoint == "best" and not (resolved.run.metrics_every and resolved.run.keep_best):
                raise UserError(f"cell {cell.name}: evaluate.checkpoint best needs run.metrics_every > 0 and "
                                f"run.keep_best, which write best.pt")
            out.append(Job(ab.name, cell.name, seed, run_name, train_cmd, resume_cmd, eval_cmd, overrides,
                           ab.eval_args + cell.evaluate, steps, str(run_dir), str(ckpt_dir), os.getcwd(),
                           threads=max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0,
                           config=resolved.to_dict(), eval_checkpoint=ab.eval_checkpoint))
    return out


# --- one run -----------------------------------------------------------------------------------

def hardware() -> str:
    """The device a run used, in words: the GPU's name, or the CPU's model and its vector units."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or "CPU"
    model, flags = re.search(r"model name\s*:\s*(.+)", info), re.search(r"flags\s*:\s*(.+)", info)
    flags = set(flags.group(1).split()) if flags else set()
    units = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model.group(1).strip() if model else 'CPU'}, {os.cpu_count()} cores ({' '.join(units) or 'no AVX2'})"


def source_commit() -> dict:
    """The commit the code ran at and whether its tree had changes: {"commit", "dirty"} (None where the
    code is not in a git checkout), so that a result says what reproduces it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _without_steps(config: dict) -> dict:
    """A resolved config without train.steps: a run continued to more steps is the same run."""
    return {**config, "train": {k: v for k, v in config.get("train", {}).items() if k != "steps"}}


def _same_config(job: Job, config: dict | None, what: Path) -> None:
    """Refuse a run made (or begun) with another config than the ablation now asks for."""
    if config is None:
        return
    try:  # a key added to the config since the run was made counts at its default
        config = load_config(base=config).to_dict()
    except UserError:
        pass  # a key since removed: compared as stored, so the run is refused
    if _without_steps(config) != _without_steps(job.config):
        theirs, ours = _without_steps(config), _without_steps(job.config)
        diff = [f"{s}.{k}" for s in ours for k in ours[s] if theirs.get(s, {}).get(k) != ours[s][k]]
        raise UserError(f"{what}: this run was made with another config ({', '.join(diff[:4]) or 'other keys'} "
                        f"differ: the ablation file or its base preset changed); remove {job.run_dir} and "
                        f"{job.ckpt_dir} to run it again")


def _finished(job: Job) -> dict | None:
    path = Path(job.cwd, job.run_dir, "final.json")
    if not path.is_file():
        return None
    final = json.loads(path.read_text())
    if final.get("evaluated_checkpoint", "last") != job.eval_checkpoint:
        raise UserError(f"{path}: this run was evaluated at its {final.get('evaluated_checkpoint', 'last')} checkpoint; "
                        f"remove {path} to evaluate its {job.eval_checkpoint} one")
    if final.get("evaluate_args") != job.eval_args:
        raise UserError(f"{path}: this run was evaluated with other arguments ({' '.join(final.get('evaluate_args', []))}); "
                        f"remove {path} to evaluate it again")
    _same_config(job, final.get("config"), path)
    return final if final.get("steps") == job.steps else None


class LocalStop:
    """Ctrl-C or SIGTERM of a local ablation. The runs go in sessions of their own, so that a Ctrl-C at the
    terminal reaches this process alone; it passes the signal on to each running run once (each stops between
    two steps and saves) and starts no other. A second Ctrl-C is passed on too: the runs stop at once."""

    def __init__(self):
        self.signal, self.procs, self.lock = None, set(), threading.RLock()  # re-entrant: a handler may interrupt a holder

    def handler(self, signum, frame):
        if signum == getattr(signal, "SIGHUP", None):  # the terminal went away: the runs save and stop, as for SIGTERM
            signum = signal.SIGTERM
        self.signal = signum
        for p in list(self.procs):  # a copy without the lock: the main thread may hold it when the signal comes
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signum)

    def popen(self, cmd, **kwargs) -> int:
        with self.lock:
            if self.signal is not None:
                raise _Stopped("stopped before it started")
            p = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self.procs.add(p)
        try:
            return p.wait()
        finally:
            with self.lock:
                self.procs.discard(p)


class _Stopped(Exception):
    pass


def _call(cmd: list[str], log: Path, job: Job, stop: LocalStop | None = None) -> None:
    env = dict(os.environ)
    if job.threads:  # J runs side by side share the cores instead of each taking all of them
        env.update(OMP_NUM_THREADS=str(job.threads), MKL_NUM_THREADS=str(job.threads))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        kw = dict(cwd=job.cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
        code = stop.popen(cmd, **kw) if stop else subprocess.call(cmd, **kw)
    if code and stop is not None and stop.signal is not None:
        raise _Stopped(f"{cmd[2].split('.')[-1]} stopped (exit {code})")
    if code:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        raise RuntimeError(f"{cmd[2]} exited with {code}: {tail[0] if tail else 'no output'} (log: {log})")


def run_job(job: Job, stop: LocalStop | None = None) -> dict:
    """Train (or resume) and evaluate one cell x seed; returns its final figures (module level, so
    submitit can pickle it). Failures come back as {"failed": reason}, a run stopped by ``stop`` (a local
    ablation's Ctrl-C) as {"stopped": reason, "started": whether it had begun}."""
    try:
        done = _finished(job)
        if done:
            return {**done, "skipped": True}
        if stop is not None and stop.signal is not None:
            return {"stopped": f"{job.run}: not started", "started": False, "run": job.run, "cell": job.cell,
                    "seed": job.seed}
        run_dir, ckpt = Path(job.cwd, job.run_dir), Path(job.cwd, job.ckpt_dir)
        t0 = time.perf_counter()
        if (ckpt / "last.pt").exists():  # an interrupted run, or one continued to more steps
            begun = run_dir / "config.yaml"
            _same_config(job, yaml.safe_load(begun.read_text()) if begun.is_file() else None, begun)
            _call(job.resume_cmd, run_dir / "train.log", job, stop)
        else:  # a run that never saved leaves nothing worth keeping
            for folder in (run_dir, ckpt):
                if folder.exists():
                    for p in sorted(folder.rglob("*"), reverse=True):
                        p.rmdir() if p.is_dir() else p.unlink()
            _call(job.train_cmd, run_dir / "train.log", job, stop)
        wall_file = run_dir / "wall.json"
        wall = json.loads(wall_file.read_text())["train_s"] if wall_file.exists() else 0.0
        atomic_write_json(wall_file, {"train_s": wall + time.perf_counter() - t0})
        trained = json.loads((run_dir / "train.json").read_text())
        if trained["steps"] > job.steps or (trained["steps"] < job.steps and trained.get("stopped_by") != "time_limit"):
            raise RuntimeError(f"the checkpoint has {trained['steps']} steps, the ablation asks for {job.steps}; "
                               f"remove {job.run_dir} and {job.ckpt_dir} to run it again")
        _call(job.eval_cmd, run_dir / "evaluate.log", job, stop)
        ev = json.loads((run_dir / "evaluate.json").read_text())
        final = {"ablation": job.ablation, "cell": job.cell, "seed": job.seed, "run": job.run,
                 "overrides": job.overrides, "evaluate_args": job.eval_args, "evaluated_checkpoint": job.eval_checkpoint,
                 "steps": job.steps,
                 "trained_steps": trained["steps"], "stopped_by": trained.get("stopped_by", "steps"),
                 "wall_s": round(wall + time.perf_counter() - t0, 2), "train_loop_s": trained["elapsed_s"],
                 "samples_per_s": trained["samples_per_s"], "hardware": hardware(), **source_commit(),
                 "train_command": shlex.join(job.train_cmd), "config": job.config, "evaluation": ev}
        _log_hparams(run_dir / "final", job, final)
        atomic_write_json(run_dir / "final.json", final)
        return final
    except _Stopped as e:
        return {"stopped": f"{job.run}: {e}", "started": True, "run": job.run, "cell": job.cell, "seed": job.seed}
    except (RuntimeError, UserError, OSError, ValueError, KeyError) as e:
        return {"failed": f"{job.run}: {e}", "run": job.run, "cell": job.cell, "seed": job.seed}


def _log_hparams(folder: Path, job: Job, final: dict) -> None:
    """The run's overrides against its final figures, for TensorBoard's HParams dashboard."""
    from torch.utils.tensorboard import SummaryWriter

    hp = {"cell": job.cell, "seed": job.seed, "steps": job.steps}
    for o in job.overrides:
        k, _, v = o.partition("=")
        hp[k] = v
    ev = final["evaluation"]
    metrics = {"final/overall": ev["overall"], "final/fd": (ev.get("fd") or {}).get("value"),
               "final/kd": (ev.get("kd") or {}).get("value"),
               "final/memorisation_above_0.8": (ev.get("memorisation") or {}).get("above_0.8"),
               "final/samples_per_s": final["samples_per_s"], "final/wall_s": final["wall_s"]}
    metrics.update({f"final/{k}": v["generated_mean"] for k, v in ev["metrics"].items()})
    metrics = {k: (float("nan") if v is None else float(v)) for k, v in metrics.items()}
    with SummaryWriter(str(folder)) as w:
        w.add_hparams(hp, metrics, run_name=".")


# --- tables ------------------------------------------------------------------------------------

def result_row(final: dict) -> dict:
    ev = final["evaluation"]
    row = {"cell": final["cell"], "seed": final["seed"], "run": final["run"],
           "overrides": " ".join(final["overrides"] + final["evaluate_args"]),
           "steps": final.get("trained_steps", final["steps"]),
           "wall_s": final["wall_s"], "samples_per_s": final["samples_per_s"], "overall": ev["overall"],
           "commit": (final.get("commit") or "")[:12] + ("-dirty" if final.get("dirty") else "")}
    for k in ("fd", "kd"):  # the headline figures in the feature network's space, where evaluate had one
        row[k] = (ev.get(k) or {}).get("value")
        row[f"{k}_floor"] = (ev.get(f"{k}_floor") or {}).get("value")
    for k, v in ev["metrics"].items():
        row[k], row[f"{k}_gap"] = v["generated_mean"], v["gap"]
    for t in ("0.5", "0.8", "0.95"):
        row[f"memorisation_above_{t}"] = ev["memorisation"][f"above_{t}"] if ev.get("memorisation") else None
    row["pair_iou"] = (ev.get("diversity") or {}).get("generated_pair_iou")  # absent in runs evaluated before it
    for k, v in (ev.get("validation") or {}).items():
        if k != "windows":
            row[k] = v
    return row


def write_csv(rows: list[dict], path: Path) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write_bytes(path, buf.getvalue().encode())


def _num(v) -> float:
    return float("nan") if v is None else float(v)


HEADLINE = ("fd", "kd", "overall", "qualified_note_rate_q2", "groove_consistency", "scale_consistency", "polyphony",
            "empty_bar_rate", "pitch_classes_used", "pair_iou")
COST = ("memorisation_above_0.8", "steps", "wall_s", "samples_per_s")


def summary(ab: Ablation, finals: list[dict], failed: list[dict]) -> str:
    """Mean ± std over seeds per cell, a headline table and every metric; bold marks the best cell of
    each column: the lowest overall figure, memorisation and wall time, the most steps and samples/s,
    and the metric mean closest to real."""
    cells = [c.name for c in ab.cells if any(f["cell"] == c.name for f in finals)]
    first = finals[0]["evaluation"] if finals else None
    metric_names = list(first["metrics"]) if first else []
    real = {k: first["metrics"][k]["real_mean"] for k in metric_names} | {"overall": 0.0} if first else {}
    diversity = next((f["evaluation"]["diversity"] for f in finals if "diversity" in f["evaluation"]), None)
    if diversity:
        real["pair_iou"] = diversity["real_pair_iou"]
    cols = ["fd", "kd", "overall", *metric_names, "pair_iou", *COST]
    stats = {c: {k: np.array([_num(result_row(f).get(k)) for f in finals if f["cell"] == c]) for k in cols}
             for c in cells}
    # the feature distances' real floor: training against validation windows, the same in every run
    floor = {k: np.nanmean(v) for k in ("fd", "kd")
             if np.isfinite(v := np.array([_num(result_row(f).get(f"{k}_floor")) for f in finals])).any()}

    def score(col, v):  # lower is better
        return -v if col in ("samples_per_s", "steps") else abs(v - real[col]) if col in real else v
    best = {}
    for col in cols:
        means = {c: np.nanmean(stats[c][col]) for c in cells if np.isfinite(stats[c][col]).any()}
        top = min((score(col, m) for m in means.values()), default=None)
        best[col] = {c for c, m in means.items() if score(col, m) == top}  # ties: all of them

    def table(columns) -> list[str]:
        head = ["cell", "seeds"] + [c.replace("memorisation_above_0.8", "IoU>0.8") for c in columns]
        out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        if first:
            out.append("| real (validation) | | " + " | ".join(f"{real[c]:.3f}" if c in real else "" for c in columns) + " |")
        if floor and any(c in floor for c in columns):
            out.append("| real floor (training vs validation) | | " + " | ".join(f"{floor[c]:.3f}" if c in floor else ""
                                                                               for c in columns) + " |")
        for c in cells:
            txt = []
            for col in columns:
                v = stats[c][col][np.isfinite(stats[c][col])]
                fmt = ".1%" if col.startswith("memorisation") else (".0f" if col in NO_DECIMALS else ".3f")
                t = (f"{v.mean():{fmt}}" + (f" ± {v.std():{fmt}}" if len(v) > 1 else "")) if len(v) else "-"
                txt.append(f"**{t}**" if c in best[col] and len(v) else t)
            out.append(f"| {c} | {len(stats[c]['overall'])} | " + " | ".join(txt) + " |")
        return out

    hw = sorted({f.get("hardware", "?") for f in finals})
    lines = [f"# Ablation {ab.name}", ""] + ([ab.description.strip(), ""] if ab.description else [])
    ev = f"--num {ab.eval_num} --seed {ab.eval_seed}" + (f" {' '.join(ab.eval_args)}" if ab.eval_args else "") + (
        " of best.pt" if ab.eval_checkpoint == "best" else "")
    lines += [f"Base {ab.base}; {_count(len(ab.cells), 'cell')} x {_count(len(ab.seeds), 'seed')}; evaluation {ev}; "
              f"hardware: {'; '.join(hw) or '-'}.", "",
              f"Each entry: mean ± std over seeds. Free samples are scored against the validation windows in "
              f"{first['meter'] if first and 'meter' in first else 'their meter'}. Best per column in bold: lowest "
              "FD (the headline: docs/metrics.md), KD, overall, memorisation and wall time; most steps and samples/s; "
              "metrics: closest to real.", ""]
    lines += table([c for c in HEADLINE if c in cols] + list(COST))
    lines += ["", "Every metric (generated mean):", ""] + table(metric_names)
    lines += ["", "Cells:", ""] + [f"- `{c.name}`: {_cell_text(ab, c)}" for c in ab.cells]
    if failed:
        lines += ["", f"Failed runs ({len(failed)}):", ""] + [f"- {f['failed']}" for f in failed]
    return "\n".join(lines) + "\n"


# --- executors ---------------------------------------------------------------------------------

def run_local(jobs: list[Job], parallel: int) -> tuple[list[dict], int | None]:
    """The runs, ``parallel`` at a time; and the signal that stopped them (None: not stopped)."""
    results, stop = [], LocalStop()
    bar = tqdm(total=len(jobs), desc="runs", unit="run", file=sys.stderr, dynamic_ncols=True)
    main_thread = threading.current_thread() is threading.main_thread()
    caught = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {s: signal.signal(s, stop.handler) for s in caught} if main_thread else {}
    try:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {pool.submit(run_job, j, stop): j for j in jobs}
            for fut in as_completed(futures):
                res = fut.result()
                results.append(res)
                if "stopped" not in res or res["started"]:
                    bar.write(_line(res))
                bar.update()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    bar.close()
    return results, stop.signal


def run_submitit(jobs: list[Job], folder: Path, a) -> list[dict]:
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit (pip install submitit)") from None
    params = {"timeout_min": a.time, "slurm_array_parallelism": a.jobs or len(jobs), "name": f"ablate-{jobs[0].ablation}"}
    if a.executor == "slurm":
        params.update({k: v for k, v in (("slurm_partition", a.partition), ("gpus_per_node", a.gpus_per_node),
                                         ("cpus_per_task", a.cpus_per_task), ("mem_gb", a.mem_gb)) if v is not None})
    elif a.gpus_per_node is not None:
        params["gpus_per_node"] = a.gpus_per_node
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster="local" if a.executor == "submitit-local" else "slurm")
        ex.update_parameters(**params)
        handles = ex.map_array(run_job, jobs)
    except Exception as e:  # noqa: BLE001 - no sbatch here, a partition Slurm refuses: one line, not submitit's traceback
        why = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"--executor {a.executor}: submitting failed: {why}") from None
    print(f"submitted {len(handles)} job(s): {handles[0].job_id.split('_')[0]} (logs in {folder})", file=sys.stderr)
    results = []
    for h, j in tqdm(list(zip(handles, jobs)), desc="runs", unit="run", file=sys.stderr, dynamic_ncols=True):
        try:
            res = h.result()
        except Exception as e:  # noqa: BLE001 - a lost or killed job: name it, keep the others
            res = {"failed": f"{j.run}: job {h.job_id}: {str(e).splitlines()[-1][:200] if str(e) else type(e).__name__}",
                   "run": j.run, "cell": j.cell, "seed": j.seed}
        tqdm.write(_line(res))
        results.append(res)
    return results


def _line(res: dict) -> str:
    if "failed" in res:
        return f"failed {res['failed']}"
    if "stopped" in res:
        return f"stopped {res['stopped']}"
    ev = res["evaluation"]
    how = "finished before" if res.get("skipped") else f"{res['wall_s'] / 60:.1f} min"
    return f"{res['run']}: {how}, overall {ev['overall']:.3f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _cell_text(ab: Ablation, cell: Cell) -> str:
    own = " ".join(cell.overrides + cell.evaluate)
    return own or ("(the file's overrides only)" if ab.overrides else "(the base preset)")


def _scope(ab: Ablation, runs: int) -> str:
    return (f"{ab.name}: {_count(len(ab.cells), 'cell')} x {_count(len(ab.seeds), 'seed')} = "
            f"{_count(runs, 'run')} in {ab.runs_dir}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apollogan.ablate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path, help="ablation file, for example configs/ablations/loss.yaml")
    ap.add_argument("--seeds", type=int, help="seeds per cell, counted from the file's first_seed (0 unless "
                                              "set); default: the file's seeds, else 1")
    ap.add_argument("--steps", type=int, help="training steps of every run (default: the file's, else the base preset's)")
    ap.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                    help="local: subprocesses on this machine; slurm: a Slurm job array through submitit; "
                         "submitit-local: submitit's local executor (the slurm path without Slurm)")
    ap.add_argument("--jobs", type=int, help="runs at a time (local, default 1), array tasks at a time (slurm, "
                                             "default all)")
    ap.add_argument("--dry-run", action="store_true", help="print the cells and each run's train command, and exit")
    s = ap.add_argument_group("slurm (with --executor slurm)")
    s.add_argument("--partition", help="Slurm partition")
    s.add_argument("--gpus-per-node", type=int, help="GPUs per task")
    s.add_argument("--cpus-per-task", type=int, help="CPU cores per task")
    s.add_argument("--mem-gb", type=int, help="memory per task in GB")
    s.add_argument("--time", type=int, default=120, help="time limit per task in minutes (default %(default)s)")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if (a.jobs is not None and a.jobs < 1) or (a.seeds is not None and a.seeds < 1) or (a.steps is not None and a.steps < 1):
        raise UserError("--jobs, --seeds and --steps must be at least 1")
    ab = load_ablation(a.file, a.seeds, a.steps)
    if a.dry_run:
        jobs = plan(ab, build_data=False)
        print(_scope(ab, len(jobs)))
        for c in ab.cells:
            print(f"  {c.name}: {_cell_text(ab, c)}")
        for j in jobs:
            print(shlex.join(j.train_cmd))
        return 0
    side_by_side = (a.jobs or 1) if a.executor == "local" else 1  # a submitit task has its cores to itself
    jobs = plan(ab, build_data=True, jobs=side_by_side)
    print(_scope(ab, len(jobs)), file=sys.stderr)
    stopped_by = None
    if a.executor == "local":
        results, stopped_by = run_local(jobs, side_by_side)
    else:
        results = run_submitit(jobs, ab.runs_dir / "submitit", a)
    order = {(j.cell, j.seed): i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[(r["cell"], r["seed"])])
    finals = [r for r in results if "failed" not in r and "stopped" not in r]
    failed = [r for r in results if "failed" in r]
    if stopped_by is not None:
        halted = [r for r in results if "stopped" in r and r["started"]]
        waiting = [r for r in results if "stopped" in r and not r["started"]]
        if finals:
            write_csv([result_row(f) for f in finals], ab.runs_dir / "results.csv")
        print(f"stopped: {len(finals)} of {len(jobs)} runs finished, {len(halted)} stopped and saved "
              f"({', '.join(r['run'] for r in halted) or 'none'}), {len(waiting)} not started; the same command "
              f"resumes them", file=sys.stderr)
        raise stopped({"signal": stopped_by})
    if finals:
        write_csv([result_row(f) for f in finals], ab.runs_dir / "results.csv")
    atomic_write_bytes(ab.runs_dir / "summary.md", summary(ab, finals, failed).encode())
    print(f"wrote {ab.runs_dir / 'results.csv'} and " if finals else "wrote ", end="")
    print(ab.runs_dir / "summary.md")
    if failed:
        raise UserError(f"{len(failed)} of {len(jobs)} runs failed: " + "; ".join(f["failed"] for f in failed))
    return 0


if __name__ == "__main__":
    run(main)
