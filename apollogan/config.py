"""Typed run configuration: dataclasses, filled from YAML presets and KEY=VALUE overrides.

Unknown keys and values of the wrong type stop with one line naming the key.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .cli import UserError


@dataclass
class DataConfig:
    root: str = "chunks/nottingham"  # a shard set; the bundled tunes are preprocessed into it when missing
    onset: bool = False  # spec used when the bundled data must be preprocessed first


@dataclass
class ModelConfig:
    width: int = 128  # d: channels are multiples of it
    noise: str = "reference"  # "reference": noise is a [7, 2, 8] tensor; "flat": a vector projected to it
    noise_channels: int = 7
    noise_dim: int = 100  # length of the flat noise vector
    d_head: str = "fc2"  # discriminator head: "fc2" (reference: linear 512, linear 1), "fc1", "none"
    fc_dim: int = 512
    d_norm: str = "batch"  # "batch" (reference), "spectral", "none"


@dataclass
class TrainConfig:
    steps: int = 20000  # generator steps
    batch_size: int = 32
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    loss: str = "bce"  # "bce" (non-saturating, reference), "hinge", "wgan-gp"
    gp_weight: float = 10.0
    feature_matching: float = 0.0  # weight of a feature-matching term in the generator loss
    label_smoothing: float = 0.0  # one-sided: real targets 1 - s (bce only)
    d_steps: int = 1  # discriminator steps per generator step
    ema_decay: float = 0.999
    seed: int = 0
    amp: str = "auto"  # "auto" (bf16 on CUDA), "bf16", "off"
    channels_last: bool = False
    compile: bool = False


@dataclass
class RunConfig:
    name: str = "apollogan"
    runs_dir: str = "runs"
    checkpoints_dir: str = "checkpoints"
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 1000
    keep: int = 3  # numbered checkpoints kept beside last.pt
    num_samples: int = 16  # rolls in the image grid (fixed noise)
    audio_samples: int = 2
    metrics_every: int = 0  # steps between full metric evaluations in TensorBoard (0: only at the end)
    metrics_samples: int = 256


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}


CHOICES = {
    "model.noise": ("reference", "flat"),
    "model.d_head": ("fc2", "fc1", "none"),
    "model.d_norm": ("batch", "spectral", "none"),
    "train.loss": ("bce", "hinge", "wgan-gp"),
    "train.amp": ("auto", "bf16", "off"),
}


def _coerce(key: str, value, typ):
    """Check (and where lossless, convert) a value against a field's type."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{key}: expected {typ.__name__}, got {value!r}")


def _apply(cfg: Config, key: str, value) -> None:
    section, _, name = key.partition(".")
    sub = getattr(cfg, section, None) if section in {f.name for f in dataclasses.fields(cfg)} else None
    if sub is None or not name:
        raise UserError(f"{key}: unknown key (sections: data, model, train, run)")
    types = typing.get_type_hints(type(sub))
    if name not in types:
        raise UserError(f"{key}: unknown key (known in {section}: {', '.join(sorted(types))})")
    value = _coerce(key, value, types[name])
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    setattr(sub, name, value)


def load_config(path=None, overrides=(), base: dict | None = None) -> Config:
    """Defaults <- ``base`` (a stored config) <- YAML file <- KEY=VALUE overrides."""
    cfg = Config()
    layers = []
    if base:
        layers.append(("checkpoint", base))
    if path:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise UserError(f"{path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(doc, dict):
            raise UserError(f"{path}: expected a mapping of sections")
        layers.append((str(path), doc))
    for where, doc in layers:
        for section, values in doc.items():
            if not isinstance(values, dict):
                raise UserError(f"{where}: section {section!r} must be a mapping")
            for k, v in values.items():
                _apply(cfg, f"{section}.{k}", v)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"{item}: overrides look like KEY=VALUE, for example train.steps=100")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        types = _field_type(cfg, key)
        if types is str and not isinstance(value, str):
            value = raw  # run.name=001 stays the string "001"
        _apply(cfg, key, value)
    validate(cfg)
    return cfg


def _field_type(cfg: Config, key: str):
    section, _, name = key.partition(".")
    sub = getattr(cfg, section, None)
    return typing.get_type_hints(type(sub)).get(name) if dataclasses.is_dataclass(sub) else None


def validate(cfg: Config) -> None:
    t, m = cfg.train, cfg.model
    for key in ("train.steps", "train.batch_size", "train.d_steps", "model.width", "run.log_every",
                "run.sample_every", "run.checkpoint_every", "run.keep", "run.num_samples"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise UserError(f"{key}: must be at least 1")
    if not 0 <= t.ema_decay < 1:
        raise UserError("train.ema_decay: must be in [0, 1)")
    if not 0 <= t.label_smoothing < 0.5:
        raise UserError("train.label_smoothing: must be in [0, 0.5)")
    if t.loss == "wgan-gp" and m.d_norm == "batch":
        raise UserError("train.loss=wgan-gp: the gradient penalty is per sample; use model.d_norm=spectral or none")
    if not cfg.run.name or "/" in cfg.run.name:
        raise UserError(f"run.name: {cfg.run.name!r} must be a non-empty name without '/'")
