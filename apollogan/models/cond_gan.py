"""model.family=cond_gan: a melody over given chords, after MidiNet (Yang et al., 2017).

The data has parts (``preprocess --parts tracks`` or ``--parts skyline``): part 0 is the
melody, the later parts the accompaniment (the condition). The generator draws the melody
channels from noise [7, 2, 8] and the accompaniment; the discriminator judges the whole
roll, melody and accompaniment together, so a melody that ignores its chords is told apart.

The condition enters G at every resolution, as in MidiNet's conditioner: a stack of strided
convolutions takes the accompaniment [C_acc, 64, 256] down to [k, 32, 128], ..., [k, 2, 8],
and each of G's transposed convolutions sees the conditioner's map of its own input size
concatenated to its input. Besides the accompaniment's own channels, the conditioner and the
discriminator see its chord-tone map: cell (p, t) is 1 when the pitch class of row p sounds
in the accompaniment at step t, in every octave. A chord tone two octaves above the chord is
then a local pattern a convolution sees, as MidiNet's chord vector (12 pitch classes, tiled
over the map) made it. Losses and stabilisers (feature matching, one-sided label smoothing,
which MidiNet used) are the DCGAN's, through the shared adversarial step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..spec import RollSpec
from .common import batches
from .dcgan import NOISE_HW, Discriminator, _doublings, _widths, init_weights
from .gan import GANFamily


@dataclass
class CondGANConfig:
    """model.family=cond_gan: a melody over given chords, MidiNet style (apollogan/models/cond_gan.py).

    Needs shards with parts (preprocess --parts tracks or skyline)."""

    family: str = "cond_gan"
    width: int = 64  # d of the generator and the discriminator, as the DCGAN's
    noise_channels: int = 7  # noise [7, 2, 8]
    cond_width: int = 16  # channels of the conditioner's map at each of G's resolutions
    d_head: str = "fc2"
    fc_dim: int = 512
    d_norm: str = "batch"

    choices: ClassVar[dict] = {"d_head": ("fc2", "fc1", "none"), "d_norm": ("batch", "spectral", "none")}
    smoke: ClassVar[tuple] = ("model.width=4", "model.cond_width=4", "model.fc_dim=16")


class ChordToneMap(nn.Module):
    """Accompaniment [B, C_acc, P, T] -> [B, 1, P, T]: 1 where the row's pitch class sounds in any
    accompaniment part at that step (every part's sustain channel, every octave)."""

    def __init__(self, spec: RollSpec):
        super().__init__()
        pc = torch.zeros(spec.pitches, 12)
        pc[torch.arange(spec.pitches), spec.pitch_classes] = 1
        self.register_buffer("pc", pc, persistent=False)  # fixed: not a weight, not in checkpoints
        self.k = spec.channels_per_part

    def forward(self, acc: torch.Tensor) -> torch.Tensor:
        pc = self.pc.to(acc.dtype)
        sounding = acc[:, :: self.k].amax(dim=1)  # [B, P, T]
        chroma = (torch.einsum("bpt,pc->bct", sounding, pc) > 0).to(acc.dtype)
        return torch.einsum("bct,pc->bpt", chroma, pc).unsqueeze(1)


class CondDiscriminator(nn.Module):
    """The DCGAN discriminator on the whole roll plus the accompaniment's chord-tone map."""

    def __init__(self, spec: RollSpec, width: int, head: str, fc_dim: int, norm: str):
        super().__init__()
        self.chord_tones = ChordToneMap(spec)
        self.k = spec.channels_per_part
        self.net = Discriminator(spec, width, head, fc_dim, norm, in_channels=spec.channels + 1)

    def forward(self, x: torch.Tensor, features: bool = False):
        return self.net(torch.cat([x, self.chord_tones(x[:, self.k:])], 1), features=features)


class CondGenerator(nn.Module):
    """noise [B, 7, 2, 8] and accompaniment [B, C_acc, P, T] -> melody probabilities [B, C_mel, P, T]."""

    def __init__(self, spec: RollSpec, width: int = 64, noise_channels: int = 7, cond_width: int = 16):
        super().__init__()
        n = _doublings(spec)
        self.noise_shape = (noise_channels, *NOISE_HW)
        self.melody = spec.part_channels(0)
        self.cond_shape = (spec.channels - spec.channels_per_part, spec.pitches, spec.steps)
        self.chord_tones = ChordToneMap(spec)
        cin = self.cond_shape[0] + 1
        down = []
        for _ in range(n):  # [k, P/2, T/2] ... [k, 2, 8]
            down.append(nn.Sequential(nn.Conv2d(cin, cond_width, 4, 2, 1), nn.LeakyReLU(0.2)))
            cin = cond_width
        self.conditioner = nn.ModuleList(down)
        chans = [noise_channels] + _widths(width, n)
        up = [nn.Sequential(nn.ConvTranspose2d(a + cond_width, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b),
                            nn.LeakyReLU(0.2)) for a, b in zip(chans[:-1], chans[1:])]
        up.append(nn.ConvTranspose2d(chans[-1] + cond_width, spec.channels_per_part, 4, 2, 1))
        self.up = nn.ModuleList(up)

    def noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn((batch, *self.noise_shape), generator=generator, device=device)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if z.shape[1:] != self.noise_shape or cond.shape[1:] != self.cond_shape or len(z) != len(cond):
            raise ValueError(f"expected noise [B, {', '.join(map(str, self.noise_shape))}] and accompaniment "
                             f"[B, {', '.join(map(str, self.cond_shape))}], got {list(z.shape)} and {list(cond.shape)}")
        maps, h = [], torch.cat([cond, self.chord_tones(cond)], 1)
        for block in self.conditioner:
            h = block(h)
            maps.append(h)
        x = z
        for block, c in zip(self.up, reversed(maps)):  # coarsest condition with the noise, finest last
            x = block(torch.cat([x, c.to(x.dtype)], 1))
        return torch.sigmoid(x)


class CondGAN(GANFamily):
    """Melody from noise given the accompaniment; sampling needs real windows (their accompaniment)."""

    name = "cond_gan"
    conditional = True

    def __init__(self, spec: RollSpec, cfg):
        if spec.parts < 2:
            raise ValueError("model.family=cond_gan needs rolls with parts (a melody and its accompaniment); "
                             "preprocess with --parts tracks or --parts skyline and point data.root there")
        super().__init__(spec, cfg)
        m = cfg.model
        G = CondGenerator(spec, m.width, m.noise_channels, m.cond_width)
        D = CondDiscriminator(spec, m.width, m.d_head, m.fc_dim, m.d_norm)
        G.apply(init_weights)
        D.apply(init_weights)
        for conv in G.conditioner.modules():  # PyTorch's default scale: the condition is not drowned at the start
            if isinstance(conv, nn.Conv2d):
                conv.reset_parameters()
        self.modules = {"G": G, "D": D}
        self.k = spec.channels_per_part  # channels [0, k) are the melody, [k, C) the accompaniment

    def over(self, g_run, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Rolls [B, C, P, T]: G's melody from noise ``z`` over the accompaniment of ``real``."""
        cond = real[:, self.k:]
        return torch.cat([g_run(z, cond), cond.to(z.dtype)], 1)

    def make_fake(self, g_run, real, z):
        fake = self.over(g_run, real, z)
        return fake, fake[:, :self.k]  # the copied accompaniment is not G's to vary

    def wants_real(self, **_) -> bool:
        return True

    def _real(self, real, n: int) -> torch.Tensor:
        if real is None or len(real) < n:
            raise ValueError(f"cond_gan samples over the accompaniment of {n} real windows; got "
                             f"{0 if real is None else len(real)}")
        return torch.as_tensor(real[:n]).float()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, *, nets=None, device="cpu", real=None,
               batch: int = 64) -> torch.Tensor:
        """[n, C, P, T]: melody probabilities over the accompaniment of real windows [n, C, P, T]
        (kept as given, 0/1). Noise is drawn on the CPU with ``generator``."""
        g = (nets or self.modules)["G"]
        real = self._real(real, n)
        out = []
        for a, b in batches(n, batch):
            z = g.noise(b - a, generator)
            out.append(self.over(g, real[a:b].to(device), z.to(device)).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def interpolate(self, k: int, generator: torch.Generator, *, nets=None, device="cpu", real=None) -> torch.Tensor:
        """k melodies along a line between two noise points, all over the accompaniment of ``real[0]``."""
        g = (nets or self.modules)["G"]
        real = self._real(real, 1)[:1].expand(k, *real.shape[1:])
        a, b = g.noise(1, generator), g.noise(1, generator)
        w = torch.linspace(0, 1, k).view(-1, 1, 1, 1)
        return self.over(g, real.to(device), ((1 - w) * a + w * b).to(device)).float().cpu()
