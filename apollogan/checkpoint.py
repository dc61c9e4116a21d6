"""Complete, self-describing checkpoints: written atomically, found by run name, read back safely.
docs/formats.md describes the format.

A checkpoint is a dict of tensors and plain values only:

    format, version, family, modules {name: state_dict}, ema {name: state_dict},
    optimizers {name: state_dict}, step, batches, rng [per rank], world, config, spec,
    run_name, apollogan (the version that wrote it)

It is read with ``torch.load(weights_only=True)``: a file that needs anything beyond tensors
and plain containers to unpickle (code, in a crafted file) is refused before it can run.
Checkpoints of the first release (keys G, D, G_ema, opt_g, opt_d, numpy RNG state) are read
too, allowing numpy arrays alone, and converted.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .cli import UserError
from .config import FAMILY_CONFIGS, Config, load_config
from .spec import RollSpec

STEP_FILE = re.compile(r"step-(\d+)\.pt$")
FORMAT = "apollogan-checkpoint"
VERSION = 2


def digest(state) -> str:
    """sha256 over every value of a checkpoint (tensors by dtype, shape and bytes; the rest by repr), in a fixed
    order: flipped bytes in a weight or an optimiser moment change it."""
    h = hashlib.sha256()

    def walk(x):
        if torch.is_tensor(x):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())
    walk(state)
    return h.hexdigest()


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system (or OS) lets a folder be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write(state: dict, path: Path) -> None:
    """Atomically: a temporary file, synced to disk, renamed over ``path``, and the folder synced, so that a
    crash of the machine leaves the old checkpoint or the new one. A full disk is one line naming the path,
    and leaves no temporary file."""
    tmp = path.parent / f".{path.name}.tmp"
    body = {"format": FORMAT, "version": VERSION, **{k: v for k, v in state.items() if k != "digest"}}  # a loaded one's
    try:
        with open(tmp, "wb") as f:
            torch.save({**body, "digest": digest(body)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a kill before this line leaves only a .tmp file, never a torn checkpoint
    except BaseException as e:  # a full disk (torch reports a failed write as a RuntimeError), or an interrupt
        tmp.unlink(missing_ok=True)
        if not isinstance(e, (OSError, RuntimeError)):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: could not write the checkpoint ({reason})") from None
    _fsync_folder(path.parent)


def _link(src: Path, name: str) -> None:
    """``name`` beside ``src`` becomes a second name for the same file, by an atomic rename."""
    tmp = src.parent / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    os.link(src, tmp)
    os.replace(tmp, src.parent / name)


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep: int) -> Path:
    """Write step-NNNNNNN.pt atomically, point last.pt at it, keep the newest ``keep`` numbered files."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:07d}.pt"
    _write(state, path)
    _link(path, "last.pt")
    numbered = [p for _, p in sorted(step_checkpoints(ckpt_dir).items())]
    for old in numbered[:-keep]:
        old.unlink()
    return path


def step_checkpoints(ckpt_dir: Path) -> dict[int, Path]:
    """{step: path} of the numbered checkpoints (step-NNNNNNN.pt) in ``ckpt_dir``."""
    return {int(m.group(1)): p for p in Path(ckpt_dir).glob("step-*.pt") if (m := STEP_FILE.search(p.name))}


def too_alike(pair_iou: float, real_pair_iou: float, k: float) -> bool:
    """best.pt passes over a step whose samples are more than k times as alike (pair IoU) as real windows
    (k = 0: never); docs/ablations.md, round 9."""
    return bool(k) and pair_iou > k * real_pair_iou


def save_best(state: dict, ckpt_dir: Path) -> Path:
    """Write best.pt atomically: the checkpoint whose training-time overall figure is the lowest so far."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _write(state, ckpt_dir / "best.pt")
    return ckpt_dir / "best.pt"


def with_weights(state: dict, weights: str) -> dict:
    """``state`` whose moving-average entries (what sampling loads) hold the weights best.pt chose:
    the moving average itself, or with ``"raw"`` the raw weights of the same modules."""
    if weights != "raw":
        return state
    return {**state, "ema": {k: state["modules"][k] for k in state["ema"]}}


def reconcile_best(ckpt_dir: Path, best: dict | None, log=print) -> dict | None:
    """On resume, best.pt must be the ``best`` of the checkpoint resumed from. One written later, by a
    run that went on from there and was then abandoned (or one that cannot be read), is replaced by
    that step's checkpoint where it is still kept, else removed (the next better evaluation writes a
    new one). Returns the best to go on comparing with."""
    path = Path(ckpt_dir) / "best.pt"
    if not path.exists():
        return None  # nothing to point at: the next evaluation starts the comparison afresh
    try:
        on_disk = load_checkpoint(path)["step"]
    except UserError:
        on_disk = None
    if best is not None and on_disk == best["step"]:
        return best
    was = "unreadable" if on_disk is None else f"step {on_disk}"
    kept = path.parent / f"step-{best['step']:07d}.pt" if best else None
    if kept is not None and kept.exists():
        if best.get("weights", "ema") == "raw":  # the kept step holds the moving average too: best.pt samples the raw
            _write(with_weights(load_checkpoint(kept), "raw"), path)
        else:
            _link(kept, "best.pt")
        log(f"{path}: was {was}, not the best of the checkpoint resumed from; now {kept.name}")
        return best
    path.unlink()
    log(f"{path}: was {was}, not the best of the checkpoint resumed from, which is no longer kept; removed")
    return None


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


def restore(ckpt: dict, family, ema: dict, optimizers: dict, gen: torch.Generator, rank: int, world: int) -> None:
    """A resumed run's networks, moving averages, optimisers and (same process count) RNGs from ``ckpt``."""
    try:
        for k, m in family.modules.items():
            m.load_state_dict(ckpt["modules"][k])
        for k, m in ema.items():
            m.load_state_dict(ckpt["ema"][k])
        for k, o in optimizers.items():
            o.load_state_dict(ckpt["optimizers"][k])
        if world == ckpt.get("world", 1) and len(ckpt["rng"]) == world:
            set_rng_state(ckpt["rng"][rank], gen)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"checkpoint does not fit its {family.name} config "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def _numpy_globals() -> list:
    """What a numpy array needs to unpickle (the first release stored numpy's RNG state as one)."""
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return allowed + [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]  # numpy 1 pickles


def _check(ok: bool, path, what: str) -> None:
    if not ok:
        raise UserError(f"{path}: not an apollogan checkpoint ({what})")


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in d.items())


def _upgrade(ckpt: dict) -> dict:
    """A first-release DCGAN checkpoint in the current layout."""
    out = {k: v for k, v in ckpt.items() if k not in ("G", "D", "G_ema", "opt_g", "opt_d")}
    out.update(format=FORMAT, version=VERSION, family="dcgan", modules={"G": ckpt["G"], "D": ckpt["D"]},
               ema={"G": ckpt.get("G_ema", ckpt["G"])},
               optimizers={k: ckpt[o] for k, o in (("G", "opt_g"), ("D", "opt_d")) if o in ckpt})
    for r in out.get("rng") or []:
        if isinstance(r, dict) and isinstance(r.get("numpy"), tuple):
            name, keys, *rest = r["numpy"]
            r["numpy"] = (name, torch.from_numpy(np.asarray(keys).astype(np.int64)), *rest)
    return out


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and check a checkpoint; anything that is not one is a one-line UserError."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickle protocols of foreign files: we say why below
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a checkpoint file") from None
    except Exception as e:  # torn, foreign, or asking to run code: say so in one line
        lines = str(e).splitlines() or [type(e).__name__]
        blocked = [ln for ln in lines if "GLOBAL" in ln.upper() and "unsupported" in ln.lower()]
        if blocked:  # the pickle names a function or class to call: never load it
            raise UserError(f"{path}: refused: it holds more than tensors and plain values, so loading it could "
                            f"run code ({blocked[0].strip()[:160]})") from None
        detail = next((ln.strip() for ln in lines if "Unsupported" in ln), lines[0])  # the unpickler's own reason
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {detail[:160]})") from None
    _check(isinstance(ckpt, dict), path, "not a dict")
    if "G" in ckpt and "modules" not in ckpt:
        _check(_is_state_dict(ckpt["G"]) and _is_state_dict(ckpt.get("D")), path, "G or D is not a state dict")
        ckpt = _upgrade(ckpt)
    _check(ckpt.get("format") == FORMAT, path, "missing its format tag")
    family = ckpt.get("family")
    _check(isinstance(family, str) and family in FAMILY_CONFIGS, path, f"unknown model family {family!r}")
    for part in ("modules", "ema", "optimizers"):
        _check(isinstance(ckpt.get(part), dict) and all(isinstance(v, dict) for v in ckpt[part].values()), path,
               f"{part} is not a mapping of state dicts")
    for part in ("modules", "ema"):
        _check(all(_is_state_dict(v) for v in ckpt[part].values()), path, f"{part} holds more than tensors")
    _check(isinstance(ckpt.get("config"), dict), path, "no config")
    try:
        RollSpec.from_dict(ckpt.get("spec"))
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: not an apollogan checkpoint (its spec: {e})") from None
    for key, typ in (("step", int), ("batches", int), ("run_name", str), ("rng", list)):
        _check(isinstance(ckpt.get(key), typ), path, f"no {key}")
    stored = ckpt.get("digest")  # checkpoints written before digests existed have none
    if stored is not None and stored != digest({k: v for k, v in ckpt.items() if k != "digest"}):
        raise UserError(f"{path}: checksum mismatch (the file changed or is corrupt since it was written)")
    for part in ("modules", "ema"):
        for name, sd in ckpt[part].items():
            bad = next((k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
            if bad is not None:
                raise UserError(f"{path}: non-finite weights (NaN or inf) in {part}.{name}.{bad}; use an earlier "
                                f"checkpoint")
    return ckpt


def resolve_checkpoint(arg: str, checkpoints_dir: str = "checkpoints", best: bool = False) -> tuple[Path, dict]:
    """A file, a run's checkpoint folder, or a run name under ``checkpoints_dir``; newest loadable wins,
    or with ``best`` (the sampling commands) the run's best.pt where it has one: the step training chose,
    which is the checkpoint to sample. Resuming always takes the newest.

    Returns the path and the loaded checkpoint (checking readability means loading it).
    """
    p = Path(arg)
    if p.is_file():
        return p, load_checkpoint(p)
    folder = p if p.is_dir() else Path(checkpoints_dir) / arg
    if not folder.is_dir():
        raise UserError(f"{arg}: no checkpoint file, checkpoint folder or run named so under {checkpoints_dir}/")
    candidates = [folder / "best.pt"] * best + [folder / "last.pt"] + sorted(folder.glob("step-*.pt"), reverse=True)
    for c in candidates:
        if c.is_file():
            try:
                ckpt = load_checkpoint(c)
            except UserError as e:
                print(f"warning: {e}; trying the next checkpoint", file=sys.stderr)
                continue
            if c.name == "best.pt":
                print(f"{c}: step {ckpt['step']}, the step training chose (give {folder / 'last.pt'} for the "
                      f"last one)", file=sys.stderr)
            return c, ckpt
    raise UserError(f"{folder}: no readable checkpoint")


def config_of(ckpt: dict) -> Config:
    return load_config(base=ckpt["config"])


def family_from_checkpoint(ckpt: dict, device="cpu", ema: bool = True):
    """(family, spec, config): the family rebuilt from the stored config, its sampling modules holding
    the moving-average weights (``ema``) or the raw ones, every module in eval mode on ``device``."""
    from .models import build_family

    cfg, spec = config_of(ckpt), RollSpec.from_dict(ckpt["spec"])
    try:
        family = build_family(spec, cfg)
    except ValueError as e:
        raise UserError(f"checkpoint of run {ckpt['run_name']}: its rolls do not fit its {cfg.model.family} "
                        f"config ({e})") from None
    try:
        for name, module in family.modules.items():
            state = ckpt["ema"].get(name) if ema and name in ckpt["ema"] else ckpt["modules"][name]
            module.load_state_dict(state)
            module.to(device).eval()
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"checkpoint of run {ckpt['run_name']}: its weights do not fit its "
                        f"{cfg.model.family} config ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    return family, spec, cfg
