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

The training loop (apollogan/train.py) owns everything else: device, DDP, autocast, batches,
EMA, resume, checkpoints, TensorBoard.
"""
from __future__ import annotations

from ..spec import RollSpec
from .common import StepContext, count_params
from .cond_gan import CondGAN
from .dcgan import DCGAN, Discriminator, Generator, build_models, init_weights
from .lstm import LSTMComposer
from .lstm_gan import LSTMGAN
from .vae import Autoencoder

FAMILIES = {"dcgan": DCGAN, "lstm": LSTMComposer, "vae": Autoencoder, "ae": Autoencoder, "lstm_gan": LSTMGAN, "cond_gan": CondGAN}

__all__ = ["FAMILIES", "StepContext", "build_family", "count_params", "Generator", "Discriminator", "build_models",
           "init_weights"]


def build_family(spec: RollSpec, cfg):
    """The family named by ``cfg.model.family``, its networks initialised from the current torch seed."""
    return FAMILIES[cfg.model.family](spec, cfg)
