"""model.family=vae and ae: convolutional (variational) autoencoders over whole rolls.

The encoder is the DCGAN discriminator's convolution stack with a linear head to the code
(mean and log-variance for the VAE); the decoder is the DCGAN generator fed a flat code.
The loss is the reconstruction's binary cross-entropy summed over the roll's cells (nats per
window), plus for the VAE beta times the KL divergence from N(0, I). Sampling decodes codes
drawn from N(0, I): the VAE's prior, and for the plain autoencoder the naive sampling of the
tutorial it comes from (its codes are not fitted to any prior, which is what the VAE fixes).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cli import UserError
from ..midi import note_bounds
from ..spec import RollSpec
from .common import StepContext, batches, count_params, likelihood_update
from .dcgan import Discriminator, Generator, init_weights


@dataclass
class AEConfig:
    """model.family=ae: convolutional autoencoder over whole rolls (apollogan/models/vae.py)."""

    family: str = "ae"
    width: int = 32  # d of the encoder (the DCGAN discriminator's convolutions) and decoder (its generator's)
    latent_dim: int = 64

    smoke: ClassVar[tuple] = ("model.width=4", "model.latent_dim=8")


@dataclass
class VAEConfig(AEConfig):
    """model.family=vae: the autoencoder with a Gaussian code and a KL term."""

    family: str = "vae"
    beta: float = 1.0  # weight of the KL term
    beta_warmup: int = 0  # steps over which the KL weight rises linearly from 0 to beta

    smoke: ClassVar[tuple] = ("model.width=4", "model.latent_dim=8", "model.beta_warmup=4")

    def check(self, train) -> None:
        if not (self.beta >= 0 and self.beta_warmup >= 0):  # NaN fails too
            raise UserError("model.beta and model.beta_warmup must be >= 0")


class ConvAutoencoder(nn.Module):
    def __init__(self, spec: RollSpec, width: int = 32, latent_dim: int = 64, variational: bool = True):
        super().__init__()
        self.latent_dim, self.variational = latent_dim, variational
        outputs = 2 * latent_dim if variational else latent_dim
        self.encoder = Discriminator(spec, width, head="fc1", norm="batch", outputs=outputs)  # [B, outputs]
        self.decoder = Generator(spec, width, noise="flat", noise_dim=latent_dim)  # [B, C, P, T]
        self.apply(init_weights)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log-variance) of the code; the log-variance is None for the plain autoencoder."""
        h = self.encoder(x)
        if not self.variational:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)  # exp() stays finite

    def decode(self, z: torch.Tensor, logits: bool = False) -> torch.Tensor:
        return self.decoder(z, logits=logits)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """(reconstruction logits, code mean, log-variance or None); the code is mean + std x ``eps`` when
        ``eps`` is given (the VAE in training), else the mean. One call, so DDP and compile wrap it whole."""
        mu, logvar = self.encode(x)
        z = mu if eps is None or logvar is None else mu.float() + (0.5 * logvar.float()).exp() * eps
        return self.decode(z, logits=True), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over the code, in nats."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def note_keys(rolls: np.ndarray, spec: RollSpec) -> np.ndarray:
    """One integer per note of bool rolls [N, C, P, T], from (roll, part, pitch, start, end); notes as
    roll_to_notes reads them (an onset inside a run starts a new note)."""
    n, _, p, t = rolls.shape
    k = spec.channels_per_part
    sus = rolls[:, ::k]  # [N, parts, P, T]
    start, last = note_bounds(sus, rolls[:, 1::k] if k == 2 else None)
    r, part, pitch, s = np.nonzero(start)
    *_, e = np.nonzero(last)  # row-major order pairs each start with its own end
    return (((r.astype(np.int64) * spec.parts + part) * p + pitch) * t + s) * t + e


def note_f1(reference: np.ndarray, reconstruction: np.ndarray, spec: RollSpec) -> tuple[int, int, int]:
    """(matched, reference, reconstructed) note counts over bool rolls [N, C, P, T]: notes match
    when pitch, start and end are all equal. F1 = 2 matched / (reference + reconstructed)."""
    a, b = note_keys(reference, spec), note_keys(reconstruction, spec)
    return len(np.intersect1d(a, b, assume_unique=True)), len(a), len(b)


class Autoencoder:
    """Both families: ``variational`` picks the VAE (cfg.model.family == "vae")."""

    ema_names = ("model",)
    latent = "codes"  # --interpolate walks between the codes of two real windows
    conditional = False  # see models/__init__.py
    sample_options: dict = {}

    def __init__(self, spec: RollSpec, cfg):
        self.spec, self.cfg = spec, cfg
        self.name = cfg.model.family
        self.variational = self.name == "vae"
        self.modules = {"model": ConvAutoencoder(spec, cfg.model.width, cfg.model.latent_dim, self.variational)}

    def optimizers(self) -> dict:
        t = self.cfg.train
        return {"model": torch.optim.Adam(self.modules["model"].parameters(), lr=t.lr, betas=(t.beta1, t.beta2))}

    def describe(self) -> str:
        m = self.modules["model"]
        return (f"encoder {count_params(m.encoder) / 1e6:.2f}M, decoder {count_params(m.decoder) / 1e6:.2f}M "
                f"parameters, code of {m.latent_dim}")

    def beta_at(self, step: int) -> float:
        m = self.cfg.model
        return m.beta * min(1.0, step / m.beta_warmup) if m.beta_warmup else m.beta

    def losses(self, model, x: torch.Tensor, autocast, eps: torch.Tensor | None = None):
        """(reconstruction logits, reconstruction NLL per window, KL per window or None), means over the batch.

        ``model`` may be a DDP or compiled wrapper: it is only called, never reached into."""
        with autocast():
            logits, mu, logvar = model(x, eps)
        logits = logits.float()
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        kl = kl_divergence(mu.float(), logvar.float()).mean() if logvar is not None else None
        return logits, recon, kl

    def train_step(self, ctx: StepContext) -> dict:
        x = ctx.real_batch()
        latent = self.cfg.model.latent_dim
        eps = torch.randn(x.shape[0], latent, generator=ctx.generator, device=x.device) if self.variational else None
        _, recon, kl = self.losses(ctx.nets["model"], x, ctx.autocast, eps)
        loss = recon if kl is None else recon + self.beta_at(ctx.step) * kl
        out = likelihood_update(ctx, loss, "model", self.cfg.train.grad_clip)
        out["Loss/reconstruction"] = recon.detach()
        if kl is not None:
            out["Loss/KL"] = kl.detach()
            out["Loss/total"] = loss.detach()
        return out

    @torch.no_grad()
    def validate(self, windows: torch.Tensor, *, nets=None, device="cpu", batch: int = 128) -> dict:
        """Reconstruction of validation windows from their code means: note F1 (threshold 0.5),
        the reconstruction NLL per window and, for the VAE, the KL term per window."""
        model = (nets or self.modules)["model"]
        counts, recon_sum, kl_sum = np.zeros(3), 0.0, 0.0
        for a, b in batches(len(windows), batch):
            x = windows[a:b].to(device).float()
            logits, recon, kl = self.losses(model, x, contextlib.nullcontext)  # from the code means, fp32
            counts += note_f1(x.cpu().numpy() > 0.5, (logits >= 0).cpu().numpy(), self.spec)
            recon_sum += float(recon) * (b - a)
            kl_sum += float(kl) * (b - a) if kl is not None else 0.0
        n = max(len(windows), 1)
        matched, ref_n, rec_n = counts
        out = {"Val/recon_note_f1": 2 * matched / (ref_n + rec_n) if ref_n + rec_n else float("nan"),
               "Val/recon_nll": recon_sum / n}
        if self.variational:
            out["Val/kl"] = kl_sum / n
        return out

    def wants_real(self, **_) -> bool:
        return False

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, *, nets=None, device="cpu", real=None,
               batch: int = 64) -> torch.Tensor:
        """Probabilities [n, C, P, T] on the CPU, decoded from codes drawn from N(0, I)."""
        model = (nets or self.modules)["model"]
        return torch.cat([model.decode(torch.randn(b - a, model.latent_dim, generator=generator).to(device))
                          .float().cpu() for a, b in batches(n, batch)])

    @torch.no_grad()
    def interpolate(self, k: int, generator: torch.Generator, *, nets=None, device="cpu", real=None) -> torch.Tensor:
        """k rolls along the straight line between the code means of the two windows ``real`` [2, C, P, T]."""
        model = (nets or self.modules)["model"]
        mu, _ = model.encode(real[:2].to(device).float())
        w = torch.linspace(0, 1, k, device=device)[:, None]
        return model.decode((1 - w) * mu[:1] + w * mu[1:2]).float().cpu()
