"""Complete, self-describing checkpoints: written atomically, found by run name, read back safely."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .cli import UserError
from .config import Config, load_config
from .models import build_models
from .spec import RollSpec

STEP_FILE = re.compile(r"step-(\d+)\.pt$")


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep: int) -> Path:
    """Write step-NNNNNNN.pt atomically, point last.pt at it, keep the newest ``keep`` numbered files."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:07d}.pt"
    tmp = ckpt_dir / f".{path.name}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill before this line leaves only a .tmp file, never a torn checkpoint
    last_tmp = ckpt_dir / ".last.pt.tmp"
    last_tmp.unlink(missing_ok=True)
    os.link(path, last_tmp)  # a second name for the same file, then an atomic rename
    os.replace(last_tmp, ckpt_dir / "last.pt")
    numbered = sorted(p for p in ckpt_dir.glob("step-*.pt") if STEP_FILE.search(p.name))
    for old in numbered[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except Exception as e:  # torn or foreign file: say so in one line
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or "G" not in ckpt or "config" not in ckpt or "spec" not in ckpt:
        raise UserError(f"{path}: not an apollogan checkpoint (missing G, config or spec)")
    return ckpt


def resolve_checkpoint(arg: str, checkpoints_dir: str = "checkpoints") -> tuple[Path, dict]:
    """A file, a run's checkpoint folder, or a run name under ``checkpoints_dir``; newest loadable wins.

    Returns the path and the loaded checkpoint (checking readability means loading it).
    """
    p = Path(arg)
    if p.is_file():
        return p, load_checkpoint(p)
    folder = p if p.is_dir() else Path(checkpoints_dir) / arg
    if not folder.is_dir():
        raise UserError(f"{arg}: no checkpoint file, checkpoint folder or run named so under {checkpoints_dir}/")
    candidates = [folder / "last.pt"] + sorted(folder.glob("step-*.pt"), reverse=True)
    for c in candidates:
        if c.is_file():
            try:
                return c, load_checkpoint(c)
            except UserError as e:
                print(f"warning: {e}; trying an older checkpoint")
    raise UserError(f"{folder}: no readable checkpoint")


def config_of(ckpt: dict) -> Config:
    return load_config(base=ckpt["config"])


def generator_from_checkpoint(ckpt: dict, device="cpu", ema: bool = True):
    """The generator (EMA weights by default) rebuilt from the config stored in the checkpoint."""
    cfg, spec = config_of(ckpt), RollSpec.from_dict(ckpt["spec"])
    g, _ = build_models(spec, cfg.model)
    g.load_state_dict(ckpt["G_ema"] if ema and "G_ema" in ckpt else ckpt["G"])
    return g.to(device).eval(), spec, cfg
