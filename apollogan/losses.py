"""GAN losses as small pure functions of logits (and, for the penalty, of D and its inputs)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def g_bce(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating: maximise log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def g_wasserstein(fake: torch.Tensor) -> torch.Tensor:
    """Also the hinge generator loss."""
    return -fake.mean()


def _input_grad(d, x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """grad_x D(x) over the first ``channels`` channels of x (None: all of them); channels after those
    (a condition D reads beside the roll, such as model.key_cond's scale) are held fixed."""
    roll = x[:, :channels].detach().requires_grad_(True)
    full = roll if channels is None else torch.cat([roll, x[:, channels:].detach()], 1)
    (grad,) = torch.autograd.grad(d(full).sum(), roll, create_graph=True)
    return grad


def gradient_penalty(d, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None,
                     channels: int | None = None):
    """WGAN-GP: (|grad_x D(x)| - 1)^2 at random points between real and fake rolls."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=generator)
    grad = _input_grad(d, eps * real + (1 - eps) * fake, channels)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(d, real: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): the mean over real rolls of |grad_x D(x)|^2."""
    return _input_grad(d, real, channels).flatten(1).pow(2).sum(1).mean()


def feature_matching(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Squared distance between mean discriminator features of real and generated batches."""
    return (real_features.detach().mean(0) - fake_features.mean(0)).pow(2).mean()


def d_real_term(kind: str, real: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """The part of the discriminator loss on real rolls (each loss splits into a real and a fake part)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(real, torch.full_like(real, 1.0 - smoothing))
    if kind == "hinge":
        return F.relu(1.0 - real).mean()
    return -real.mean()


def d_fake_term(kind: str, fake: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    if kind == "hinge":
        return F.relu(1.0 + fake).mean()
    return fake.mean()


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0):
    return d_real_term(kind, real, smoothing) + d_fake_term(kind, fake)


def generator_loss(kind: str, fake: torch.Tensor):
    return g_bce(fake) if kind == "bce" else g_wasserstein(fake)
