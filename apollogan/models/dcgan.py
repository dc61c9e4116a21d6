"""model.family=dcgan: the DCGAN of the original ApolloGAN experiments, every size an argument.

Generator:     noise [7, 2, 8] -> transposed convs (k4 s2 p1), 8d -> 4d -> 2d -> d -> C, sigmoid
               (optionally binary neurons in training: model.binary; or nearest-neighbour
               upsampling then 3x3 convs: model.g_upsample=nearest; optionally drawing one column
               per 2 or 4 steps and holding it: model.g_hold; optionally a per-sample bias on
               each of the 12 pitch classes, the same in every octave and step: model.g_key;
               optionally conditioned on a key: model.key_cond).
Discriminator: convs (k4 s2 p1), C -> d -> 2d -> 4d -> 8d -> d, then linear 512 -> linear 1
               (with model.key_cond it also reads the key's scale as one more input channel).
The number of layers follows from the roll shape and the noise shape (64 x 256 from 2 x 8 is
five doublings); every derived size is computed, never hard-coded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..cli import UserError
from ..metrics import SCALES
from ..spec import RollSpec
from .common import batches
from .gan import GANFamily

NOISE_HW = (2, 8)


@dataclass
class DCGANConfig:
    """model.family=dcgan: the reference convolutional GAN (apollogan/models/dcgan.py)."""

    family: str = "dcgan"
    width: int = 128  # d: channels are multiples of it
    d_width: int = 0  # D's d when it differs from G's, as a width, not a ratio (0: model.width)
    noise: str = "reference"  # "reference": noise is a [7, 2, 8] tensor; "flat": a vector projected to it
    noise_channels: int = 7
    noise_dim: int = 100  # length of the flat noise vector
    d_head: str = "fc2"  # discriminator head: "fc2" (reference: linear 512, linear 1), "fc1", "none"
    fc_dim: int = 512
    d_norm: str = "batch"  # "batch" (reference), "spectral", "none"
    d_mbstd: int = 0  # minibatch standard deviation before D's head over groups of this many samples (ProGAN: 4; 0: off)
    g_upsample: str = "transposed"  # G's doublings: "transposed" convs k4 s2 (reference) or "nearest" resize + conv k3
    binary: str = "none"  # G's output in training: "none" (probabilities), or binary neurons with a
    # straight-through gradient (BinaryMuseGAN): "deterministic" (p >= 0.5) or "stochastic" (drawn with p)
    binary_grad: str = "sigmoid"  # the binary neurons' backward: "sigmoid" (sigmoid-adjusted straight-through,
    # BinaryMuseGAN) or "identity" (plain straight-through: the output's gradient goes to the logits as it is)
    g_hold: int = 1  # G draws one column per g_hold steps and holds it (1, 2 or 4): its last layers double
    # pitch only, so no note is shorter than g_hold steps and onsets fall on multiples of it (an onset
    # channel is on at a held column's first step only)
    key_cond: bool = False  # a GAN conditioned on the key (one of 12 diatonic scales, the best fit to a real
    # window's notes): G gets it beside the noise, D sees its scale as one more channel; samples draw keys
    # from the training windows' (docs/models.md)

    # Research options that did not help (docs/ablations.md): off by default, kept so that the rounds'
    # runs reload and rerun.
    d_chroma: int = 0  # rounds 15, 16: channels of a chroma stream into D's head (pitch classes per beat, MuseGAN)
    g_key: bool = False  # rounds 14 to 16: G adds a per-sample bias to each of the 12 pitch classes (from the
    # noise by one linear layer, zero at the start), the same in every octave and step
    d_scale: bool = False  # round 18: D also reads the scale of each roll's own key (the best of 12 diatonic
    # scales for its notes) as one more channel, real and generated alike
    g_density: float = 0.0  # round 36: G's output bias starts at the logit of this note density instead of 0

    choices: ClassVar[dict] = {"noise": ("reference", "flat"), "d_head": ("fc2", "fc1", "none"),
                               "d_norm": ("batch", "spectral", "none"), "binary": ("none", "deterministic", "stochastic"),
                               "g_upsample": ("transposed", "nearest"), "binary_grad": ("sigmoid", "identity")}
    smoke: ClassVar[tuple] = ("model.width=4", "model.fc_dim=16")  # a tiny model for CPU smoke runs (the tests)

    def check(self, train) -> None:
        """The options' values against each other and the train section (config.validate calls it)."""
        if self.d_chroma < 0:
            raise UserError("model.d_chroma: must be >= 0 (channels of D's chroma stream; 0: off)")
        if self.d_chroma and self.d_head == "none":
            raise UserError("model.d_chroma: the chroma stream feeds D's linear head; model.d_head=none has none")
        if self.d_mbstd < 0 or self.d_mbstd == 1:
            raise UserError(f"model.d_mbstd: {self.d_mbstd} must be 0 (off) or a group size of at least 2")
        if self.d_mbstd and train.batch_size % self.d_mbstd:
            raise UserError(f"model.d_mbstd: groups of {self.d_mbstd} must divide train.batch_size ({train.batch_size})")
        if self.d_width < 0:
            raise UserError("model.d_width: must be >= 0 (0: model.width)")
        if not 0 <= self.g_density < 1:  # NaN fails too
            raise UserError(f"model.g_density: {self.g_density} must be in [0, 1) (a note density; 0: a zero output bias)")
        if self.g_hold not in (1, 2, 4):
            raise UserError(f"model.g_hold: {self.g_hold} must be 1, 2 or 4 (steps G holds each column for)")
        if self.binary_grad != "sigmoid" and self.binary == "none":
            raise UserError("model.binary_grad: the backward of binary neurons; set model.binary too")


def _doublings(spec: RollSpec, noise_hw=NOISE_HW) -> int:
    fh, fw = spec.pitches / noise_hw[0], spec.steps / noise_hw[1]
    n = int(round(math.log2(fh))) if fh > 0 else -1
    if fh != fw or n < 2 or 2**n != fh:
        raise ValueError(f"roll {spec.pitches}x{spec.steps} must be the noise grid {noise_hw[0]}x{noise_hw[1]} "
                         f"scaled by one power of two (>= 4) in both axes")
    return n


def _widths(width: int, n: int) -> list[int]:
    """Hidden widths from the widest to the narrowest: 8d, 4d, 2d, d for five layers."""
    return [width * 2 ** (n - 2 - i) for i in range(n - 1)]


_TONICS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def key_number(name: str) -> int:
    """A key's name -> its number in KeyScales: "D" or "D major" -> 2; "Bm" or "B minor" -> 2 as well (a
    minor key has its relative major's scale); sharps (#) and flats (b) on any tonic."""
    text = name.strip().replace(" ", "")
    lowered = text.lower()
    for suffix, minor in (("minor", True), ("min", True), ("major", False), ("maj", False), ("m", True), ("", False)):
        if lowered.endswith(suffix) and 1 <= len(text) - len(suffix) <= 2:
            tonic = text[:len(text) - len(suffix)]
            if tonic[0].upper() in _TONICS and tonic[1:] in ("", "#", "b"):
                shift = {"": 0, "#": 1, "b": -1}[tonic[1:]]
                return (_TONICS[tonic[0].upper()] + shift + 3 * minor) % 12
    raise ValueError(f"{name!r} is not a key: give a tonic A-G with an optional # or b, and m for minor "
                     f"(D, F#, Bb, Em, C#m)")


class KeyScales(nn.Module):
    """The 12 keys of model.key_cond. Key k is the diatonic scale of the major key on pitch class k (0: C
    major, whose relative minor A shares it); a roll's key is the one whose scale holds the most of its
    sounding cells (every part's sustain channel), ties to the lower k, so an empty roll is in C."""

    def __init__(self, spec: RollSpec):
        super().__init__()
        major = torch.from_numpy(SCALES[:12]).float()  # the metrics' major scales, [key, pitch class]
        # rows[k, p] = 1 when pitch row p is in key k's scale
        self.register_buffer("rows", major[:, spec.pitch_classes], persistent=False)
        self.spec = spec

    def of(self, x: torch.Tensor) -> torch.Tensor:
        """Rolls [B, C, P, T] -> their keys [B] (long)."""
        with torch.autocast(x.device.type, enabled=False):  # exact counts: bf16 would tie scales a few cells apart
            cells = self.spec.sustain(x[:, :self.spec.channels]).float().sum(dim=2)  # [B, P]
            return (cells @ self.rows.t()).argmax(1)

    def plane(self, keys: torch.Tensor, steps: int) -> torch.Tensor:
        """Keys [B] -> [B, 1, P, steps]: 1 on the rows of each key's scale, at every step."""
        return self.rows[keys][:, None, :, None].expand(-1, 1, -1, steps)

    def of_plane(self, x: torch.Tensor) -> torch.Tensor:
        """The keys of rolls that carry their key's plane after their C channels (what D reads)."""
        with torch.autocast(x.device.type, enabled=False):
            return (x[:, self.spec.channels, :, 0].float() @ self.rows.t()).argmax(1)  # a scale matches itself best


class Generator(nn.Module):
    def __init__(self, spec: RollSpec, width: int = 128, noise: str = "reference", noise_channels: int = 7,
                 noise_dim: int = 100, binary: str = "none", upsample: str = "transposed", hold: int = 1,
                 binary_grad: str = "sigmoid", key: bool = False, key_cond: bool = False):
        super().__init__()
        self.binary, self.hold, self.binary_grad = binary, hold, binary_grad
        n = _doublings(spec)
        if hold not in (1, 2, 4) or 2 ** n < hold:
            raise ValueError(f"hold must be 1, 2 or 4 and at most {2 ** n}, got {hold}")
        time_doubles = [i < n - int(math.log2(hold)) for i in range(n)]  # the last layers double pitch only
        # A held column's onsets belong to its first step only: a mask of the onset channels' other steps.
        off = None
        if spec.onset and hold > 1:
            off = torch.zeros(1, spec.channels, 1, spec.steps, dtype=torch.bool)
            off[:, 1::2] = (torch.arange(spec.steps) % hold != 0).view(1, 1, 1, -1)
        self.register_buffer("onset_off", off, persistent=False)
        self.noise_shape = (noise_channels, *NOISE_HW)
        self.out_shape = spec.shape
        # A window's key in one place: 12 logit biases from the noise, each added to every row of its
        # pitch class, so a sample can hold off-scale pitch classes down in all octaves at once.
        self.key = nn.Linear(math.prod(self.noise_shape), 12) if key else None
        self.register_buffer("pitch_class", torch.tensor(spec.pitch_classes) if key or key_cond else None,
                             persistent=False)
        self.noise_dim = noise_dim if noise == "flat" else None
        # flat noise: a vector mapped linearly onto the [7, 2, 8] grid
        self.project = nn.Linear(noise_dim, math.prod(self.noise_shape)) if noise == "flat" else None
        # model.key_cond: the key enters as 12 one-hot planes beside the noise and as 12 pitch-class logit
        # biases (zero at the start); key_counts, the keys of the real windows seen in training (from 1
        # each), is the prior that sampling draws keys from.
        self.keys = KeyScales(spec) if key_cond else None
        if key_cond:
            self.key_cond_bias = nn.Embedding(12, 12)
            self.register_buffer("key_counts", torch.ones(12))
        chans = [noise_channels + 12 * key_cond] + _widths(width, n)

        def up(cin, cout, bias, time):  # each doubles pitch, and time unless ``time`` is False
            if upsample == "nearest":  # resize, then convolve: no checkerboard of the strided transpose
                return [nn.Upsample(scale_factor=(2, 2 if time else 1), mode="nearest"),
                        nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)]
            if time:
                return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias)]
            return [nn.ConvTranspose2d(cin, cout, (4, 3), (2, 1), 1, bias=bias)]
        layers = []
        for cin, cout, time in zip(chans[:-1], chans[1:], time_doubles):  # [B, 8d, 4, 16] ... [B, d, 32, 128]
            layers += [*up(cin, cout, False, time), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        layers += [*up(chans[-1], spec.channels, True, time_doubles[-1]), nn.Sigmoid()]  # [B, C, 64, 256 / hold]
        self.net = nn.Sequential(*layers)

    def noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        shape = (batch, self.noise_dim) if self.project is not None else (batch, *self.noise_shape)
        return torch.randn(shape, generator=generator, device=device)

    def sample_keys(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n keys drawn from the keys of the training windows (model.key_cond), on the CPU."""
        return torch.multinomial(self.key_counts.detach().float().cpu(), n, replacement=True, generator=generator)

    def forward(self, z: torch.Tensor, logits: bool = False, probs: bool = False, key: torch.Tensor | None = None):
        """Probabilities [B, C, P, T], or their logits (for a likelihood loss, as the autoencoders use).

        ``probs``: (the output, the probabilities), which differ in training with binary neurons.
        ``key``: [B] keys 0-11 (KeyScales), required with model.key_cond and refused without it."""
        if (key is None) != (self.keys is None):
            raise ValueError("a key-conditioned G (model.key_cond) needs keys [B]" if key is None
                             else "this G is not key-conditioned (model.key_cond=false); it takes no keys")
        if self.project is not None:
            z = self.project(z).view(-1, *self.noise_shape)
        elif z.shape[1:] != self.noise_shape:
            raise ValueError(f"noise must be [B, {', '.join(map(str, self.noise_shape))}], got {list(z.shape)}")
        h = z
        if key is not None:
            if key.shape != (len(z),):
                raise ValueError(f"keys must be [{len(z)}], got {list(key.shape)}")
            onehot = nn.functional.one_hot(key, 12).to(z.dtype)
            h = torch.cat([z, onehot[:, :, None, None].expand(-1, -1, *z.shape[2:])], 1)
        raw = self.net[:-1](h)
        for bias in ([self.key(z.flatten(1))] if self.key is not None else []) + \
                ([self.key_cond_bias(key)] if key is not None else []):  # [B, 12]: onto every row of each class
            raw = raw + bias[:, self.pitch_class].view(len(z), 1, -1, 1).to(raw.dtype)
        if self.hold > 1:
            raw = raw.repeat_interleave(self.hold, dim=-1)
        if self.onset_off is not None:
            raw = raw.masked_fill(self.onset_off, -30.0)  # sigmoid(-30) ~ 0
        if logits:
            return raw
        p = self.net[-1](raw)
        if self.binary == "none" or not self.training:
            return (p, p) if probs else p  # in eval mode binary neurons give their probabilities; sampling binarises them
        if self.binary == "deterministic":
            hard = p >= 0.5
        else:  # one draw per held column, so a held column stays held
            hard = torch.rand_like(p[..., ::self.hold]).repeat_interleave(self.hold, dim=-1) < p
        # forward: 0/1; backward: the sigmoid's gradient, or the output's gradient as it is to the logits
        # (plain straight-through: it does not vanish where the sigmoid saturates)
        soft = raw if self.binary_grad == "identity" else p
        out = hard.to(p.dtype) + (soft - soft.detach())
        return (out, p) if probs else out


class Discriminator(nn.Module):
    """Returns logits [B] (or [B, outputs]); ``features=True`` also returns the flattened last conv features.

    With ``outputs`` > 1 and the fc1 head it is the autoencoders' encoder.
    """

    def __init__(self, spec: RollSpec, width: int = 128, head: str = "fc2", fc_dim: int = 512, norm: str = "batch",
                 outputs: int = 1, in_channels: int | None = None, mbstd: int = 0, chroma: int = 0,
                 scale: bool = False):
        super().__init__()
        self.outputs = outputs
        n = _doublings(spec)
        self.in_shape = (in_channels or spec.channels, spec.pitches, spec.steps)
        wrap = spectral_norm if norm == "spectral" else (lambda m: m)
        if chroma and head == "none":
            raise ValueError("the chroma stream feeds D's linear head; head 'none' has none")
        self.chroma = None
        # model.d_scale: one more input channel, the scale of the roll's own key (KeyScales), so that a
        # note off the scale the rest of the roll keeps to is a pattern of D's first convolution
        self.scale = KeyScales(spec) if scale else None
        chans = [self.in_shape[0] + bool(scale)] + _widths(width, n)[::-1] + [width]  # C, d, 2d, 4d, 8d, d
        if head == "none":
            chans[-1] = 1  # the last conv gives one logit per patch; they are averaged
        blocks = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):  # [B, d, 32, 128] ... [B, d, 2, 8]
            block = [wrap(nn.Conv2d(cin, cout, 4, 2, 1, bias=norm != "batch" or i == 0))]
            if norm == "batch" and i > 0:
                block.append(nn.BatchNorm2d(cout))
            blocks.append(block + [nn.LeakyReLU(0.2)])
        # minibatch std: one more channel into the head (the last conv for head none, the linears otherwise)
        std = [MinibatchStd(mbstd)] if mbstd else []
        if head == "none":
            if mbstd:
                blocks[-1][0] = wrap(nn.Conv2d(chans[-2] + 1, 1, 4, 2, 1))
            self.features = nn.Sequential(*[m for b in blocks[:-1] for m in b])
            self.head = nn.Sequential(*std, blocks[-1][0], nn.Flatten(), _Mean())
        else:
            self.features = nn.Sequential(*[m for b in blocks for m in b])
            flat = (width + bool(mbstd)) * (spec.pitches >> n) * (spec.steps >> n)  # d x 2 x 8 = 2048 at the reference size
            if chroma:
                self.chroma = ChromaStream(spec, chroma, wrap)
                self.split = len(std) + 1  # the head's linears read the flattened features and the chroma stream's
                flat += self.chroma.out_features
            fc = ([wrap(nn.Linear(flat, fc_dim)), nn.LeakyReLU(0.2), wrap(nn.Linear(fc_dim, outputs))] if head == "fc2"
                  else [wrap(nn.Linear(flat, outputs))])
            self.head = nn.Sequential(*std, nn.Flatten(), *fc)

    def forward(self, x: torch.Tensor, features: bool = False):
        if x.shape[1:] != self.in_shape:
            raise ValueError(f"rolls must be [B, {', '.join(map(str, self.in_shape))}], got {list(x.shape)}")
        if self.scale is not None:  # in the memory format of D's first convolution (train.channels_last)
            conv = self.features[0]  # (its stored weight: reading a spectral-normed one would run a power iteration)
            w = conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight
            fmt = torch.channels_last if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() \
                else torch.contiguous_format
            x = torch.cat([x, self.scale.plane(self.scale.of(x), x.shape[-1]).to(x.dtype)], 1).contiguous(memory_format=fmt)
        h = self.features(x)
        if self.chroma is None:
            logits = self.head(h)
        else:
            logits = self.head[self.split:](torch.cat([self.head[:self.split](h), self.chroma(x)], 1))
        logits = logits.view(-1) if self.outputs == 1 else logits
        return (logits, h.flatten(1)) if features else logits


class ChromaStream(nn.Module):
    """A second way into D, after MuseGAN's chroma stream: the roll folded onto the 12 pitch classes,
    averaged over each beat's steps ([B, 12, beats], every channel counted), then two 1-d
    convolutions (k4 s4: a 4-beat bar, then 4 bars) whose features join D's linear head. Whether a
    window keeps to one key is a relation between notes octaves and bars apart, which the 4x4
    convolutions of the main stream see only after several layers. Its features are not among
    those feature matching compares, and its 1-d convolutions keep torch's default initialisation
    (init_weights covers the 2-d ones), as in the runs of docs/ablations.md."""

    def __init__(self, spec: RollSpec, width: int, wrap=lambda m: m):
        super().__init__()
        beats = spec.steps // spec.steps_per_beat
        if beats < 16:
            raise ValueError(f"the chroma stream needs at least 16 beats; the roll has {beats}")
        fold = torch.zeros(12, spec.pitches)
        fold[spec.pitch_classes, torch.arange(spec.pitches)] = 1.0
        self.register_buffer("fold", fold, persistent=False)
        self.spb = spec.steps_per_beat
        self.channels = spec.channels  # the roll's own; not a key plane after them (model.key_cond)
        self.net = nn.Sequential(wrap(nn.Conv1d(12, width, 4, 4)), nn.LeakyReLU(0.2),
                                 wrap(nn.Conv1d(width, width, 4, 4)), nn.LeakyReLU(0.2), nn.Flatten())
        self.out_features = width * (beats // 16)

    def per_beat(self, x: torch.Tensor) -> torch.Tensor:
        """Rolls [B, C, P, T] -> sounding cells per pitch class, averaged over each beat's steps [B, 12, beats]."""
        b, _, _, t = x.shape
        beats = t // self.spb
        c = torch.einsum("qp,bkpt->bqt", self.fold.to(x.dtype), x[:, :self.channels, :, :beats * self.spb])
        return c.reshape(b, 12, beats, self.spb).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.per_beat(x))


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation: one more feature map holding, for each group of ``group``
    samples, the standard deviation of every feature across the group, averaged over features and
    positions. D can then tell a batch of near-copies (a collapsed G) from a varied one. A batch that
    ``group`` does not divide uses its largest divisor below it; sample i is in group i mod (B / g)."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        g = max(k for k in range(1, min(self.group, b) + 1) if b % k == 0)
        y = x.float().reshape(g, b // g, *x.shape[1:])
        s = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [B / g]
        s = s.repeat(g).to(x.dtype).view(b, 1, 1, 1).expand(b, 1, *x.shape[2:])
        return torch.cat([x, s], 1)


class _Mean(nn.Module):
    def forward(self, x):
        return x.mean(dim=1, keepdim=True)


def init_weights(m: nn.Module) -> None:
    """N(0, 0.02) for convolutions and linears, N(1, 0.02) for batch-norm scales (DCGAN)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        w = getattr(m, "parametrizations", None)
        weight = m.parametrizations.weight.original if w is not None and hasattr(w, "weight") else m.weight
        nn.init.normal_(weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_models(spec: RollSpec, cfg: DCGANConfig) -> tuple[Generator, Discriminator]:
    g = Generator(spec, cfg.width, cfg.noise, cfg.noise_channels, cfg.noise_dim, cfg.binary, cfg.g_upsample,
                  cfg.g_hold, cfg.binary_grad, cfg.g_key, cfg.key_cond)
    d = Discriminator(spec, cfg.d_width or cfg.width, cfg.d_head, cfg.fc_dim, cfg.d_norm, mbstd=cfg.d_mbstd,
                      chroma=cfg.d_chroma, in_channels=spec.channels + cfg.key_cond, scale=cfg.d_scale)
    g.apply(init_weights)
    d.apply(init_weights)
    if cfg.g_density:
        nn.init.constant_(g.net[-2].bias, math.log(cfg.g_density / (1 - cfg.g_density)))
    if g.key is not None:
        nn.init.zeros_(g.key.weight)  # no key bias at the start: G begins as it would without it
    if cfg.key_cond:
        nn.init.zeros_(g.key_cond_bias.weight)
    return g, d


class DCGAN(GANFamily):
    """The reference GAN: the networks above, trained by the shared adversarial step.

    With model.key_cond it is a conditional GAN on the key: every real window D sees carries its own
    key's scale as one more channel (KeyScales.plane), every generated one the key G was given, which
    is the key of the real window beside it in the batch; so D can tell a roll off its key's scale
    from one on it, and G is told which scale to keep to. Samples draw keys from the training
    windows' (G's key_counts)."""

    name = "dcgan"

    def __init__(self, spec: RollSpec, cfg):
        super().__init__(spec, cfg)
        G, D = build_models(spec, cfg.model)
        self.modules = {"G": G, "D": D}
        if G.keys is not None:
            self.sample_options = {"key": None}  # None: drawn from key_counts; or one key (key_number) for all
            self.roll_channels = spec.channels  # the penalties hold the key's channel fixed

    def real_for_d(self, real, fmt=torch.contiguous_format):
        G = self.modules["G"]
        if G.keys is None:
            return real
        keys = G.keys.of(real)
        G.key_counts += nn.functional.one_hot(keys, 12).sum(0).to(G.key_counts.dtype)  # bincount syncs on CUDA
        return torch.cat([real, G.keys.plane(keys, real.shape[-1]).to(real.dtype)], 1).contiguous(memory_format=fmt)

    def make_fake(self, g_run, real, z):
        G = self.modules["G"]
        kw = {} if G.keys is None else {"key": G.keys.of_plane(real)}
        if self.cfg.train.mode_seeking_on == "probabilities":
            out, varied = g_run(z, probs=True, **kw)  # the ratio on the probabilities before the binary neurons
        else:
            out = varied = g_run(z, **kw)
        if kw:
            out = torch.cat([out, real[:, -1:].to(out.dtype)], 1)  # the given key's plane, as the real window's
        return out, varied

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, *, nets=None, device="cpu", real=None,
               batch: int = 64, key: int | None = None) -> torch.Tensor:
        """As GANFamily.sample; with model.key_cond each sample's key is drawn after its noise, or is ``key``."""
        g = (nets or self.modules)["G"]
        if g.keys is None:
            return super().sample(n, generator, nets=nets, device=device, real=real, batch=batch)
        out = []
        for a, b in batches(n, batch):
            z = g.noise(b - a, generator)
            keys = g.sample_keys(b - a, generator) if key is None else torch.full((b - a,), key)
            out.append(g(z.to(device), key=keys.to(device)).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def interpolate(self, k: int, generator: torch.Generator, *, nets=None, device="cpu", real=None,
                    key: int | None = None) -> torch.Tensor:
        g = (nets or self.modules)["G"]
        if g.keys is None:
            return super().interpolate(k, generator, nets=nets, device=device, real=real)
        a, b = g.noise(1, generator), g.noise(1, generator)
        key = (g.sample_keys(1, generator) if key is None else torch.tensor([key])).expand(k)  # one key for the walk
        w = torch.linspace(0, 1, k).view(-1, *[1] * (a.dim() - 1))
        return g(((1 - w) * a + w * b).to(device), key=key.to(device)).float().cpu()
