"""model.family=lstm_gan: a recurrent GAN after pycomposer's GANComposer and C-RNN-GAN.

The generator is an LSTM over time fed fresh noise at every step, with a linear map of each
hidden state to the frame's cell probabilities; the discriminator is an LSTM (bidirectional by
default) over the frames whose per-step logits are averaged into one. Both train with the same
adversarial step, losses and options as the DCGAN (BCE / hinge / WGAN-GP, feature matching,
label smoothing, k D-steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..spec import RollSpec
from .common import from_frames, to_frames
from .gan import GANFamily


@dataclass
class LSTMGANConfig:
    """model.family=lstm_gan: LSTM generator from per-step noise, LSTM discriminator (apollogan/models/lstm_gan.py)."""

    family: str = "lstm_gan"
    noise_dim: int = 32  # noise per time step
    hidden: int = 128  # generator LSTM
    layers: int = 2
    d_hidden: int = 128  # discriminator LSTM
    d_layers: int = 1
    bidirectional: bool = True  # discriminator reads the roll both ways

    smoke: ClassVar[tuple] = ("model.hidden=8", "model.d_hidden=8", "model.noise_dim=4", "train.feature_matching=0.5")


class LSTMGenerator(nn.Module):
    def __init__(self, spec: RollSpec, noise_dim: int = 32, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.spec, self.noise_dim = spec, noise_dim
        self.lstm = nn.LSTM(noise_dim, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, spec.channels * spec.pitches)

    def noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(batch, self.spec.steps, self.noise_dim, generator=generator, device=device)  # [B, T, z]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[1:] != (self.spec.steps, self.noise_dim):
            raise ValueError(f"noise must be [B, {self.spec.steps}, {self.noise_dim}], got {list(z.shape)}")
        h, _ = self.lstm(z)  # [B, T, hidden]
        return torch.sigmoid(from_frames(self.out(h), self.spec.channels, self.spec.pitches))  # [B, C, P, T]


class LSTMDiscriminator(nn.Module):
    """Logits [B]: the mean of per-step logits; ``features=True`` also returns the time-averaged hidden states."""

    def __init__(self, spec: RollSpec, hidden: int = 128, layers: int = 1, bidirectional: bool = True):
        super().__init__()
        self.in_shape = spec.shape
        self.lstm = nn.LSTM(spec.channels * spec.pitches, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), 1)

    def forward(self, x: torch.Tensor, features: bool = False):
        if x.shape[1:] != self.in_shape:
            raise ValueError(f"rolls must be [B, {', '.join(map(str, self.in_shape))}], got {list(x.shape)}")
        h, _ = self.lstm(to_frames(x))  # [B, T, hidden x directions]
        logits = self.out(h).mean(dim=(1, 2))
        return (logits, h.mean(dim=1)) if features else logits


def _no_cudnn():
    """cuDNN's LSTM has no double backward, which WGAN-GP's penalty needs; the native LSTM has."""
    return torch.backends.cudnn.flags(enabled=False)


class LSTMGAN(GANFamily):
    name = "lstm_gan"
    penalty_context = staticmethod(_no_cudnn)

    def __init__(self, spec: RollSpec, cfg):
        super().__init__(spec, cfg)
        m = cfg.model
        self.modules = {"G": LSTMGenerator(spec, m.noise_dim, m.hidden, m.layers),
                        "D": LSTMDiscriminator(spec, m.d_hidden, m.d_layers, m.bidirectional)}
