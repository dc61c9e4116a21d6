"""Drawing rolls from a trained family as generate and evaluate do: the device, the family's sampling
options checked, and the real windows a primed or conditional family needs."""
from __future__ import annotations

import math

import torch

from .cli import UserError
from .shards import ShardSet


def pick_device(name: str) -> torch.device:
    """--device: auto (the GPU when there is one), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name}: no such CUDA device on this machine "
                        f"({torch.cuda.device_count()} visible); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    return device


OPTION_OF = {"prime": "the lstm family", "temperature": "the lstm family", "top_p": "the lstm family",
             "key": "a dcgan trained with model.key_cond=true"}


def sampling_options(family, a) -> dict:
    """The family's defaults updated with the options given; an option the family does not take is an error."""
    given = {k: v for k, v in (("prime", a.prime), ("temperature", a.temperature), ("top_p", a.top_p),
                               ("key", a.key)) if v is not None}
    for k in given:
        if k not in family.sample_options:
            what = "this model" if family.name == "dcgan" and k == "key" else f"the {family.name} family"
            raise UserError(f"--{k.replace('_', '-')}: {what} has no such sampling option (it is for {OPTION_OF[k]})")
    if "key" in given:
        from .models.dcgan import key_number
        try:
            given["key"] = key_number(given["key"])
        except ValueError as e:
            raise UserError(f"--key: {e}") from None
    opts = {**family.sample_options, **given}
    steps = family.spec.steps
    if not 0 <= opts.get("prime", 0) < steps:
        raise UserError(f"--prime: must be in 0..{steps - 1} steps")
    temperature, top_p = opts.get("temperature", 1.0), opts.get("top_p", 1.0)
    if not (math.isfinite(temperature) and temperature >= 0 and 0 < top_p <= 1):
        raise UserError("--temperature must be a number >= 0 and --top-p in (0, 1]")
    if temperature == 0 and top_p < 1:
        raise UserError("--top-p: --temperature 0 draws nothing (each cell is on when p >= 0.5), so there is no "
                        "tail to cut")
    return opts


def real_windows(root, spec, n: int, seed: int, why: str) -> torch.Tensor:
    """``n`` windows of the validation split (the training split when it has none), chosen with ``seed``."""
    try:
        shards = ShardSet(root, "val", spec=spec, verify=True)  # primers and accompaniment: read as verified
        if len(shards) == 0:
            shards = ShardSet(root, "train", spec=spec, verify=True)
    except UserError as e:
        raise UserError(f"{why} needs real windows: {e} (pass --data CHUNKS)") from None
    return torch.from_numpy(shards.pick(n, seed))


def draw(family, n: int, seed: int, opts: dict, root, device="cpu") -> torch.Tensor:
    """``n`` rolls [n, C, P, T] in [0, 1] from the family, with its random draws seeded by ``seed``."""
    real = None
    if family.wants_real(**opts):
        why = "a conditional model" if family.conditional else f"--prime {opts.get('prime')}"
        real = real_windows(root, family.spec, n, seed, why)
    return family.sample(n, torch.Generator().manual_seed(seed), device=device, real=real, **opts)
