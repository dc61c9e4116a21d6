"""Typed run configuration: dataclasses, filled from YAML presets and KEY=VALUE overrides.

Unknown keys and values of the wrong type stop with one line naming the key.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .cli import UserError
from .models import FAMILIES, is_gan


@dataclass
class DataConfig:
    """What the shards at ``root`` must have been made with (train checks their manifest). The bundled
    tunes are preprocessed with these options when ``root`` is their folder (preprocess.bundled_root)."""

    root: str = "chunks/nottingham"
    onset: bool = False  # an onset channel beside the sustain channel
    transpose: int = 0  # random transposed copies of each training window
    time_shifts: list[int] = field(default_factory=list)  # extra training copies shifted by these many steps
    key_normalize: bool = False  # training tunes transposed onto the white keys (preprocess --key-normalize)
    meter: str = ""  # train on the windows in this meter only, for example 4/4 (empty: every window)


# the model section's type per family, and the GAN families: both from the registry (models/__init__.py)
FAMILY_CONFIGS = {name: conf for name, (_, conf) in FAMILIES.items()}
GAN_FAMILIES = tuple(name for name in FAMILIES if is_gan(name))
FamilyConfig = typing.Union[tuple(FAMILY_CONFIGS.values())]  # noqa: UP007 - built from the registry at run time
# train keys that only one kind of family reads: setting them for the other kind is refused (a preset
# of one kind overridden to the other leaves them out: load_config)
GAN_TRAIN_KEYS = ("lr_g", "lr_d", "loss", "gp_weight", "feature_matching", "label_smoothing", "d_steps", "r1",
                  "r1_every", "diffaug", "mode_seeking", "mode_seeking_on")
LIKELIHOOD_TRAIN_KEYS = ("lr", "grad_clip")
DIFFAUG = ("time", "pitch", "cutout")  # train.diffaug's changes (models/gan.py diff_augment)


@dataclass
class TrainConfig:
    steps: int = 20000  # optimiser steps (generator steps for the GANs)
    time_limit: float = 0.0  # minutes: stop earlier, once the training steps have run this long (0: off)
    batch_size: int = 32
    lr_g: float = 2e-4  # GAN families
    lr_d: float = 2e-4
    lr: float = 1e-3  # lstm, vae, ae
    grad_clip: float = 0.0  # lstm, vae, ae: clip the gradient norm to this (0: off)
    beta1: float = 0.5
    beta2: float = 0.999
    loss: str = "bce"  # "bce" (non-saturating, reference), "hinge", "wgan-gp"
    gp_weight: float = 10.0
    feature_matching: float = 0.0  # weight of a feature-matching term in the generator loss
    label_smoothing: float = 0.0  # one-sided: real targets 1 - s (bce only)
    d_steps: int = 1  # discriminator steps per generator step
    r1: float = 0.0  # gamma of the R1 penalty, gamma / 2 * |grad_x D(x)|^2 on real rolls (0: off)
    r1_every: int = 1  # apply it every N discriminator steps, scaled by N (lazy regularisation)
    diffaug: str = ""  # DiffAugment: what D sees, real and generated, changed at random: "time", "pitch", "cutout", comma-separated
    # weight of a mode-seeking term in the generator loss (MSGAN: two samples must differ in proportion
    # to their noise; 0: off)
    mode_seeking: float = 0.0
    # what the term compares with binary neurons: the 0/1 "rolls" D judges, or G's "probabilities" before them
    mode_seeking_on: str = "rolls"
    ema_decay: float = 0.999
    lr_decay: float = 0.0  # the last fraction of the steps over which every learning rate falls linearly towards 0 (0: constant)
    seed: int = 0
    amp: str = "auto"  # "auto" (bf16 on CUDA), "bf16", "off"
    channels_last: bool = False
    compile: bool = False


@dataclass
class RunConfig:
    name: str = "apollogan"
    numbered: bool = True  # the run is NAME-NNN, the first number free; false: exactly NAME (once)
    runs_dir: str = "runs"
    checkpoints_dir: str = "checkpoints"
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 1000
    keep: int = 3  # numbered checkpoints kept beside last.pt
    keep_best: bool = True  # with metrics_every: also best.pt, the step whose training-time overall figure was lowest
    # ... among the steps whose samples are at most this many times as alike (pair IoU) as real windows,
    # when any is (0: the overall figure alone); docs/ablations.md, round 9
    best_pair_iou: float = 3.0
    # ... its figures against the training windows, so that best.pt's validation figure is not one it
    # was chosen on (docs/ablations.md, round 32); val: against the validation windows
    best_on: str = "train"
    # ... and at each scored step also the raw weights of the sampling modules (G; the LSTM's or
    # autoencoder's model), which win where they score lower: best.pt then samples them
    # (docs/ablations.md, round 35)
    best_raw: bool = False
    # ... by this figure: "overall" (the mean W1 of 15 per-roll statistics, rounds 1 to 38), or "kd" / "fd",
    # the distances in the feature network's space (docs/metrics.md), which hear time order and harmony, or
    # "nll": a likelihood family's NLL per frame on the validation windows (early stopping, docs/benchmark.md)
    best_metric: str = "overall"
    num_samples: int = 16  # rolls in the image grid (fixed noise)
    audio_samples: int = 2
    metrics_every: int = 0  # steps between full metric evaluations in TensorBoard (0: only at the end)
    metrics_samples: int = 256
    val_windows: int = 512  # validation windows for the families' own figures (NLL, reconstruction)
    meter: str = "4/4"  # free samples are scored as bars of this meter, against the validation windows in it


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: FamilyConfig = field(default_factory=FAMILY_CONFIGS["dcgan"])
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}


CHOICES = {
    "model.family": tuple(FAMILY_CONFIGS),  # a family's own option choices: its config's ``choices``
    "train.loss": ("bce", "hinge", "wgan-gp"),
    "train.mode_seeking_on": ("rolls", "probabilities"),
    "train.amp": ("auto", "bf16", "off"),
    "run.best_on": ("train", "val"),
    "run.best_metric": ("overall", "kd", "fd", "nll"),
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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):  # nan slips through every range check after it
                raise UserError(f"{key}: expected a finite number, got {value!r}")
            return number
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(typ) is list:
        if isinstance(value, list):
            return [_coerce(f"{key}[{i}]", v, typing.get_args(typ)[0]) for i, v in enumerate(value)]
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):  # one value: a list of one
            return [_coerce(key, value, typing.get_args(typ)[0])]
        return _coerce(key, value, list)
    name = typ.__name__ if isinstance(typ, type) else str(typ)
    raise UserError(f"{key}: expected {name}, got {value!r}")


def _apply(cfg: Config, key: str, value) -> None:
    section, _, name = key.partition(".")
    sub = getattr(cfg, section, None) if section in {f.name for f in dataclasses.fields(cfg)} else None
    if sub is None or not name:
        raise UserError(f"{key}: unknown key (sections: data, model, train, run)")
    types = typing.get_type_hints(type(sub))
    if name not in types:
        if section == "model":
            owners = [f for f, c in FAMILY_CONFIGS.items() if name in typing.get_type_hints(c)]
            where = f"; it belongs to model.family={' or '.join(owners)}" if owners else ""
            raise UserError(f"{key}: not an option of model.family={sub.family} "
                            f"(it takes: {', '.join(sorted(types))}){where}")
        raise UserError(f"{key}: unknown key (known in {section}: {', '.join(sorted(types))})")
    value = _coerce(key, value, types[name])
    choices = CHOICES.get(key) or (getattr(type(sub), "choices", {}).get(name) if section == "model" else None)
    if choices and value not in choices:
        raise UserError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    setattr(sub, name, value)


def _layer_family(where: str, doc: dict) -> str | None:
    """The model family a layer names; a stored config without one is a DCGAN run of the first release."""
    model = doc.get("model")
    family = model.get("family") if isinstance(model, dict) else None
    return family if family is not None or where != "checkpoint" else "dcgan"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (where the last would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice (line "
                                                        f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path):
    """A YAML file's document, safely: an unreadable file, text that is not YAML (or not text) and a key given
    twice are each one line (UserError)."""
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8); expected YAML") from None
    except yaml.YAMLError as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith(" ")]
        raise UserError(f"{path}: not valid YAML ({'; '.join(lines[:2]) or type(e).__name__})") from None


def load_config(path=None, overrides=(), base: dict | None = None) -> Config:
    """Defaults <- ``base`` (a stored config) <- YAML file <- KEY=VALUE overrides.

    The model section's type is the family's (``model.family``, last setting wins); model keys of a
    layer that names another family are that family's and are left out, and so are the train keys
    that only its kind of family reads when that kind is not the final family's (a GAN preset
    trained as an lstm). Overrides are never left out.
    """
    layers = []
    if base:
        layers.append(("checkpoint", base))
    if path:
        doc = read_yaml(path) or {}
        if not isinstance(doc, dict):
            raise UserError(f"{path}: expected a mapping of sections")
        layers.append((str(path), doc))
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"{item}: overrides look like KEY=VALUE, for example train.steps=100")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key, raw, value))
    family = "dcgan"
    for where, doc in layers:
        family = _layer_family(where, doc) or family
    for key, raw, _ in parsed:
        family = raw if key == "model.family" else family
    if not isinstance(family, str) or family not in FAMILY_CONFIGS:
        raise UserError(f"model.family: {family!r} is not one of {', '.join(FAMILY_CONFIGS)}")
    cfg = Config(model=FAMILY_CONFIGS[family]())
    for where, doc in layers:
        own = _layer_family(where, doc)
        # a layer that names a family of the other kind (a GAN preset trained as an lstm) keeps its
        # shared train keys and leaves out the ones only its own kind reads, as it does its model keys
        other_kind = own is not None and (own in GAN_FAMILIES) != (family in GAN_FAMILIES)
        skip_train = (GAN_TRAIN_KEYS if own in GAN_FAMILIES else LIKELIHOOD_TRAIN_KEYS) if other_kind else ()
        for section, values in doc.items():
            if not isinstance(values, dict):
                raise UserError(f"{where}: section {section!r} must be a mapping")
            if section == "model" and own not in (None, family):
                continue  # another family's model keys
            for k, v in values.items():
                if section == "train" and k in skip_train:
                    continue
                try:
                    _apply(cfg, f"{section}.{k}", v)
                except UserError as e:
                    raise UserError(f"{where}: {e}") from None
    for key, raw, value in parsed:
        if _field_type(cfg, key) is str and not isinstance(value, str):
            value = raw  # run.name=001 stays the string "001"
        _apply(cfg, key, value)
    validate(cfg)
    return cfg


def config_keys(path) -> set[str]:
    """The SECTION.KEY names a YAML preset sets (none without one)."""
    if not path:
        return set()
    doc = read_yaml(path) or {}
    return {f"{s}.{k}" for s, v in doc.items() if isinstance(v, dict) for k in v}


def _field_type(cfg: Config, key: str):
    section, _, name = key.partition(".")
    sub = getattr(cfg, section, None)
    return typing.get_type_hints(type(sub)).get(name) if dataclasses.is_dataclass(sub) else None


def meter_of(text: str) -> tuple[int, int]:
    """"6/8" -> (6, 8); ValueError for anything else."""
    num, den = (int(v) for v in str(text).split("/"))
    if num < 1 or den < 1:
        raise ValueError(text)
    return num, den


def validate(cfg: Config) -> None:
    t, m = cfg.train, cfg.model
    for key in ("train.steps", "train.batch_size", "train.d_steps", "train.r1_every", "run.log_every",
                "run.sample_every", "run.checkpoint_every", "run.keep", "run.num_samples", "run.metrics_samples",
                "run.val_windows"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise UserError(f"{key}: must be at least 1")
    for name in ("width", "hidden", "layers", "latent_dim", "noise_dim", "d_hidden", "d_layers", "fc_dim",
                 "noise_channels", "cond_width"):
        if getattr(m, name, 1) < 1:
            raise UserError(f"model.{name}: must be at least 1")
    if hasattr(m, "check"):  # the family's own checks (its file)
        m.check(t)
    gan = m.family in GAN_FAMILIES
    defaults = TrainConfig()
    for name in GAN_TRAIN_KEYS if not gan else LIKELIHOOD_TRAIN_KEYS:
        if getattr(t, name) != getattr(defaults, name):
            kind = f"a GAN option ({', '.join(GAN_FAMILIES)})" if not gan else "not an option of the GAN families"
            raise UserError(f"train.{name}: {kind}; model.family is {m.family}")
    for name in ("lr", "lr_g", "lr_d"):
        if getattr(t, name) <= 0:
            raise UserError(f"train.{name}: must be a learning rate > 0, not {getattr(t, name)}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(t, name) < 1:
            raise UserError(f"train.{name}: Adam's {name} must be in [0, 1), not {getattr(t, name)}")
    if t.seed < 0:
        raise UserError(f"train.seed: must be >= 0 (torch and numpy seeds are unsigned), not {t.seed}")
    if t.gp_weight < 0 or t.feature_matching < 0:
        raise UserError("train.gp_weight and train.feature_matching: must be >= 0")
    if not 0 <= t.lr_decay <= 1:
        raise UserError("train.lr_decay: must be in [0, 1] (the last fraction of the steps; 0 is off)")
    if not 0 <= t.ema_decay < 1:
        raise UserError("train.ema_decay: must be in [0, 1)")
    if not 0 <= t.label_smoothing < 0.5:
        raise UserError("train.label_smoothing: must be in [0, 0.5)")
    if t.r1 < 0:
        raise UserError("train.r1: must be >= 0 (the penalty's gamma; 0 is off)")
    if not 0 <= t.mode_seeking < float("inf"):  # NaN fails too
        raise UserError("train.mode_seeking: must be a finite number >= 0 (the term's weight; 0 is off)")
    if t.mode_seeking and t.batch_size < 2:
        raise UserError("train.mode_seeking: compares pairs of samples; train.batch_size must be at least 2")
    if t.mode_seeking_on != "rolls" and (not t.mode_seeking or getattr(m, "binary", "none") == "none"):
        raise UserError("train.mode_seeking_on: differs from rolls only with binary neurons; set train.mode_seeking "
                        "and model.binary (dcgan) too")
    unknown = [p for p in t.diffaug.split(",") if p and p not in DIFFAUG]
    if unknown:
        raise UserError(f"train.diffaug: {unknown[0]!r} is not one of {', '.join(DIFFAUG)} (comma-separated)")
    if t.r1_every != 1 and not t.r1:
        raise UserError("train.r1_every: spaces the R1 penalty out; set train.r1 (its gamma) too")
    if t.label_smoothing and t.loss != "bce":
        raise UserError(f"train.label_smoothing: smooths the targets of the bce loss; train.loss={t.loss} has none")
    if t.loss == "wgan-gp" and getattr(m, "d_norm", None) == "batch":
        raise UserError("train.loss=wgan-gp: the gradient penalty is per sample; use model.d_norm=spectral or none")
    if t.time_limit < 0:
        raise UserError("train.time_limit: must be >= 0 (minutes; 0 is off)")
    if t.grad_clip < 0:
        raise UserError("train.grad_clip must be >= 0 (0 is off)")
    if not 0 <= cfg.run.best_pair_iou < float("inf"):  # NaN fails too
        raise UserError("run.best_pair_iou: must be >= 0 (times the real windows' pair IoU; 0: off)")
    for key, text in (("run.meter", cfg.run.meter), ("data.meter", cfg.data.meter or "1/1")):
        try:
            meter_of(text)
        except ValueError:
            raise UserError(f"{key}: {text!r} is not a time signature such as 4/4 or 6/8") from None
    if cfg.data.meter and meter_of(cfg.data.meter) != meter_of(cfg.run.meter):
        raise UserError(f"data.meter={cfg.data.meter} trains on windows in {cfg.data.meter}, but run.meter="
                        f"{cfg.run.meter} scores the samples as bars of {cfg.run.meter}; set run.meter too")
    if cfg.run.best_metric == "nll" and not getattr(FAMILIES[m.family][0], "likelihood", False):
        raise UserError(f"run.best_metric=nll: model.family={m.family} has no likelihood (the lstm family has)")
    name = cfg.run.name
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise UserError(f"run.name: {name!r} must be one plain folder name (no '/', '\\', '..' or surrounding spaces)")
