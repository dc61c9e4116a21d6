"""Model families: each one a class with the same few members, picked by ``model.family``.

A family is built from (spec, config) and supplies:

    name, modules          its name and {name: nn.Module}: every network with weights
    ema_names              the modules whose moving average samples (and is validated)
    latent                 "noise", "codes" (of real windows) or None: what --interpolate walks
    conditional            True when samples are drawn over the accompaniment of real windows
                           (cond_gan); evaluate then also scores them against those windows
    sample_options         {option: default} that sample() takes beyond the common ones
    optimizers()           {name: optimiser}
    train_step(ctx)        one optimisation step (a StepContext from the loop); returns named
                           figures as tensors: "Loss/*" (checked for NaN), "GradNorm/*", others
    sample(n, generator, nets=, device=, real=, **options) -> rolls [n, C, P, T] in [0, 1]
    interpolate(k, generator, nets=, device=, real=)  (when latent is not None)
    wants_real(**options)  whether sample() needs real windows (``real``): the LSTM's primers,
                           the conditional GAN's accompaniment
    validate(windows, nets=, device=) -> {"Val/...": float}: the family's own held-out figures
    describe()             a line of parameter counts

Each family's file also defines its config dataclass (the ``model`` section: its options, their
``choices``, a ``check(train)`` of their values, and ``smoke`` overrides that make it tiny), and
FAMILIES below registers the two together: config.py derives the family list, the GAN families
and the section's types from it. Adding a family is its file, one line in FAMILIES and a preset
(docs/models.md).

The training loop (apollogan/train.py) owns everything else: device, DDP, autocast, batches,
EMA, resume, checkpoints, TensorBoard.
"""
from __future__ import annotations

from ..spec import RollSpec
from .common import StepContext, count_params
from .cond_gan import CondGAN, CondGANConfig
from .dcgan import DCGAN, DCGANConfig, Discriminator, Generator, build_models, init_weights
from .gan import GANFamily
from .lstm import LSTMComposer, LSTMConfig
from .lstm_gan import LSTMGAN, LSTMGANConfig
from .vae import AEConfig, Autoencoder, VAEConfig

# model.family -> (the family's class, its config dataclass)
FAMILIES = {
    "dcgan": (DCGAN, DCGANConfig),
    "lstm": (LSTMComposer, LSTMConfig),
    "vae": (Autoencoder, VAEConfig),
    "ae": (Autoencoder, AEConfig),
    "lstm_gan": (LSTMGAN, LSTMGANConfig),
    "cond_gan": (CondGAN, CondGANConfig),
}

__all__ = ["FAMILIES", "StepContext", "build_family", "count_params", "is_gan", "Generator", "Discriminator",
           "build_models", "init_weights"]


def is_gan(family: str) -> bool:
    """Whether a registered family trains adversarially (it reads the GAN train options)."""
    return issubclass(FAMILIES[family][0], GANFamily)


def build_family(spec: RollSpec, cfg):
    """The family named by ``cfg.model.family``, its networks initialised from the current torch seed."""
    return FAMILIES[cfg.model.family][0](spec, cfg)
