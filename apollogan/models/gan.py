"""What the GAN families (dcgan, lstm_gan) share: optimisers, the adversarial step, sampling from noise.

A GAN family sets ``self.modules = {"G": ..., "D": ...}``; G has ``noise(batch, generator,
device)`` and ``forward(z) -> probabilities [B, C, P, T]``; D has ``forward(x, features=False)
-> logits [B]`` (and its features for feature matching).
"""
from __future__ import annotations

import contextlib

import torch

from ..losses import d_fake_term, d_real_term, feature_matching, generator_loss, gradient_penalty, r1_penalty
from .common import StepContext, batches, count_params, grad_norm


def diff_augment(x: torch.Tensor, policy, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al., 2020) for rolls [B, C, P, T]: every roll D sees, real or generated,
    changed at random in the same differentiable way, so that a D with a few thousand training
    windows cannot learn them by heart. ``time``: each roll shifted by up to T/8 steps; ``pitch``: by
    up to 6 semitones (zeros move in, what moves out is lost); ``cutout``: a random quarter of the
    steps silenced. Each roll draws its own; the draws come from ``generator``."""
    b, _, p, t = x.shape
    dev = x.device
    if "time" in policy:
        x = _shift(x, torch.randint(-(t // 8), t // 8 + 1, (b,), generator=generator, device=dev), dim=3)
    if "pitch" in policy:
        x = _shift(x, torch.randint(-6, 7, (b,), generator=generator, device=dev), dim=2)
    if "cutout" in policy:
        start = torch.randint(0, t - t // 4 + 1, (b, 1), generator=generator, device=dev)
        steps = torch.arange(t, device=dev)
        keep = (steps < start) | (steps >= start + t // 4)  # [B, T]
        x = x * keep[:, None, None, :].to(x.dtype)
    return x


def _shift(x: torch.Tensor, by: torch.Tensor, dim: int) -> torch.Tensor:
    """Roll i moved by ``by[i]`` along ``dim`` (2: pitch, 3: time), zeros moving in, nothing wrapping."""
    n = x.shape[dim]
    src = torch.arange(n, device=x.device)[None, :] - by[:, None]  # [B, n]: where each position reads from
    shape = [x.shape[0], 1, 1, 1]
    shape[dim] = n
    inside = ((src >= 0) & (src < n)).view(shape).to(x.dtype)
    return torch.gather(x, dim, src.clamp(0, n - 1).view(shape).expand_as(x)) * inside


def mode_seeking_ratio(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN's ratio (Mao et al. 2019): the mean absolute difference between the two halves of a batch
    of samples over that between their noise. G maximises it (the loss adds w / ratio), so that two
    noise vectors far apart do not give the same roll."""
    h = fake.shape[0] // 2
    return (fake[:h] - fake[h:2 * h]).abs().mean() / (z[:h] - z[h:2 * h]).abs().mean()


def g_on_noise(g_run, real, z):
    """The default ``make_fake``: G(z), all of it compared by the mode-seeking ratio."""
    fake = g_run(z)
    return fake, fake


def same_real(real, fmt=None):
    """The default ``real_for_d``: D sees a training window as it is."""
    return real


def gan_step(ctx: StepContext, G, D, t, freeze_d: bool = True, penalty_context=contextlib.nullcontext,
             make_fake=g_on_noise, real_for_d=same_real, roll_channels: int | None = None) -> dict:
    """``t.d_steps`` discriminator steps, then one generator step; returns detached figures.

    Real and fake rolls go through D separately (the reference's batch-norm statistics), each
    forward followed by its own backward, as DDP needs. ``freeze_d``: D's weights need no
    gradients in the generator step (scripts/bench_train.py --freeze-compare times both).
    ``penalty_context`` wraps the gradient penalty's double backward (cuDNN's LSTM has none).
    ``make_fake(g_run, real, z)``: (the rolls D judges from noise ``z``, one per real window; what
    of them the mode-seeking ratio compares); families override ``GANFamily.make_fake``.
    ``real_for_d(real, fmt)``: a training batch as D sees it, and as ``make_fake`` gets it (the DCGAN
    with model.key_cond appends each window's key). ``roll_channels``: how many of the channels D sees
    are the roll, which the penalties take their gradients on (None: all).
    """
    g_run, d_run = ctx.nets["G"], ctx.nets["D"]
    opt_g, opt_d = ctx.optimizers["G"], ctx.optimizers["D"]
    policy = tuple(filter(None, t.diffaug.split(",")))

    def aug(x):  # what D sees (train.diffaug; the penalties below see the rolls themselves)
        return diff_augment(x, policy, ctx.generator).contiguous(memory_format=ctx.fmt) if policy else x
    out = {}
    for k in range(t.d_steps):
        real = real_for_d(ctx.real_batch(), ctx.fmt)
        with torch.no_grad(), ctx.autocast():
            fake = make_fake(g_run, real, G.noise(real.shape[0], ctx.generator, ctx.device))[0].float()
        opt_d.zero_grad(set_to_none=True)
        with ctx.autocast():
            real_logits = d_run(aug(real)).float()
            loss_real = d_real_term(t.loss, real_logits, t.label_smoothing)
        loss_real.backward()
        with ctx.autocast():
            fake_logits = d_run(aug(fake.contiguous(memory_format=ctx.fmt))).float()
            loss_fake = d_fake_term(t.loss, fake_logits)
        loss_fake.backward()
        loss_d = loss_real.detach() + loss_fake.detach()
        if t.loss == "wgan-gp":
            with penalty_context():
                gp = t.gp_weight * gradient_penalty(D, real, fake, ctx.generator, roll_channels)
                gp.backward()
            loss_d = loss_d + gp.detach()
        if t.r1 > 0 and (ctx.step * t.d_steps + k) % t.r1_every == 0:
            with penalty_context():  # in fp32, outside autocast; every r1_every-th D step, scaled to match
                r1 = r1_penalty(D, real, roll_channels)
                (t.r1 / 2 * t.r1_every * r1).backward()
            if ctx.log_now:  # |grad_x D(x)|^2 itself, on logged steps that apply it
                out["Loss/R1"] = r1.detach()
        if ctx.log_now:
            out["GradNorm/D"] = grad_norm(D)  # of the last D step
        opt_d.step()

    opt_g.zero_grad(set_to_none=True)
    D.requires_grad_(not freeze_d)  # the G step needs gradients through D, not of D's weights
    try:
        with ctx.autocast():
            z = G.noise(real.shape[0], ctx.generator, ctx.device)
            fake, varied = make_fake(g_run, real, z)  # over the last D batch's accompaniment when conditional
            with ctx.no_sync("D"):
                if t.feature_matching > 0:
                    fake_logits_g, f_fake = d_run(aug(fake.float().contiguous(memory_format=ctx.fmt)), features=True)
                    with torch.no_grad():  # the real side is a fixed target
                        _, f_real = d_run(aug(real), features=True)
                else:
                    fake_logits_g = d_run(aug(fake.float().contiguous(memory_format=ctx.fmt)))
            loss_g = generator_loss(t.loss, fake_logits_g.float())
            if t.feature_matching > 0:
                loss_g = loss_g + t.feature_matching * feature_matching(f_real.float(), f_fake.float())
            if t.mode_seeking > 0:
                ratio = mode_seeking_ratio(varied.float(), z.float())
                loss_g = loss_g + t.mode_seeking / (ratio + 1e-5)
                out["ModeSeeking/ratio"] = ratio.detach()  # every step: logged figures are interval means
        loss_g.backward()
    finally:
        D.requires_grad_(True)
    if ctx.log_now:
        out["GradNorm/G"] = grad_norm(G)
    opt_g.step()
    out["Loss/D"], out["Loss/G"] = loss_d, loss_g.detach()
    if t.loss == "bce":  # probabilities only mean something for the BCE discriminator
        out["D(x)"] = torch.sigmoid(real_logits.detach()).mean()
        out["D(G(z))"] = torch.sigmoid(fake_logits.detach()).mean()
    else:  # a critic's raw scores
        out["Critic/real_mean"] = real_logits.detach().mean()
        out["Critic/fake_mean"] = fake_logits.detach().mean()
    return out


class GANFamily:
    """Shared behaviour of the GAN families; a subclass builds ``self.modules`` {"G", "D"}."""

    ema_names = ("G",)  # sampling uses the generator's moving average
    latent = "noise"  # --interpolate walks between two noise points
    conditional = False  # True: samples are drawn over the accompaniment of real windows
    sample_options: dict = {}
    freeze_d = True  # see gan_step
    penalty_context = staticmethod(contextlib.nullcontext)  # see gan_step

    def __init__(self, spec, cfg):
        self.spec, self.cfg = spec, cfg
        self.modules: dict[str, torch.nn.Module] = {}

    def optimizers(self) -> dict:
        t = self.cfg.train
        return {"G": torch.optim.Adam(self.modules["G"].parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2)),
                "D": torch.optim.Adam(self.modules["D"].parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))}

    make_fake = staticmethod(g_on_noise)  # (the rolls D judges from noise z; what the mode-seeking ratio compares)
    real_for_d = staticmethod(same_real)  # a training batch as D sees it
    roll_channels: int | None = None  # of the channels D sees, the roll's (the rest a condition); None: all

    def train_step(self, ctx: StepContext) -> dict:
        return gan_step(ctx, self.modules["G"], self.modules["D"], self.cfg.train, self.freeze_d, self.penalty_context,
                        self.make_fake, self.real_for_d, self.roll_channels)

    def describe(self) -> str:
        return f"G {count_params(self.modules['G']) / 1e6:.2f}M, D {count_params(self.modules['D']) / 1e6:.2f}M parameters"

    def wants_real(self, **options) -> bool:
        return False

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, *, nets=None, device="cpu", real=None,
               batch: int = 64) -> torch.Tensor:
        """Probabilities [n, C, P, T] on the CPU from noise drawn with ``generator`` (a CPU generator)."""
        g = (nets or self.modules)["G"]
        return torch.cat([g(g.noise(b - a, generator).to(device)).float().cpu() for a, b in batches(n, batch)])

    @torch.no_grad()
    def interpolate(self, k: int, generator: torch.Generator, *, nets=None, device="cpu", real=None) -> torch.Tensor:
        """k rolls along the straight line between two noise points."""
        g = (nets or self.modules)["G"]
        a, b = g.noise(1, generator), g.noise(1, generator)
        w = torch.linspace(0, 1, k).view(-1, *[1] * (a.dim() - 1))
        return g(((1 - w) * a + w * b).to(device)).float().cpu()

    def validate(self, windows: torch.Tensor, *, nets=None, device="cpu") -> dict:
        return {}  # a GAN has no likelihood or reconstruction to report
