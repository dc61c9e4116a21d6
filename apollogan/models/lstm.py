"""model.family=lstm: a next-frame LSTM composer, the baseline the DCGAN was meant to beat.

A frame is one column of the roll (every channel's pitches at one time step). The model reads
frames 0..t-1 and gives an independent Bernoulli per cell of frame t; a silent (all-zero) start
frame precedes frame 0, so "from silence" is the model's own first prediction.
Trained with teacher forcing on binary cross-entropy, which is the negative log-likelihood in
nats; per frame it is summed over the frame's cells (64 pitches, or 128 with the onset channel).

Sampling draws every cell (never argmax by default: the seeds' argmax composers repeat one
note), optionally primed with the first K steps of real windows, with a temperature and a
top-p cut: per frame, the most probable cells whose probabilities make up the share p of the
frame's total are kept and the rest silenced, which removes the long tail of unlikely notes
that independent Bernoullis otherwise scatter over the roll.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..cli import UserError
from ..spec import RollSpec
from .common import StepContext, batches, count_params, from_frames, likelihood_update, to_frames


@dataclass
class LSTMConfig:
    """model.family=lstm: next-frame composer; a frame is one roll column (apollogan/models/lstm.py)."""

    family: str = "lstm"
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.2  # between LSTM layers

    smoke: ClassVar[tuple] = ("model.hidden=16", "model.layers=2", "train.grad_clip=1.0")

    def check(self, train) -> None:
        if not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout: {self.dropout} must be in [0, 1)")


class FrameLSTM(nn.Module):
    def __init__(self, spec: RollSpec, hidden: int = 256, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.frame = spec.channels * spec.pitches
        self.lstm = nn.LSTM(self.frame, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden, self.frame)

    def forward(self, frames: torch.Tensor, state=None):
        """Frames [B, T, F] -> logits of the next frame at every position [B, T, F], and the LSTM state."""
        h, state = self.lstm(frames, state)
        return self.out(h), state


def shifted(frames: torch.Tensor) -> torch.Tensor:
    """The inputs of teacher forcing: a silent start frame, then frames 0..T-2."""
    return torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], dim=1)


def top_p_filter(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Silence, per frame [..., F], the cells outside the most probable ones holding ``top_p`` of the mass."""
    if top_p >= 1:
        return p
    sp, order = p.sort(dim=-1, descending=True)
    before = sp.cumsum(-1) - sp  # mass of the more probable cells
    keep = before < top_p * sp.sum(-1, keepdim=True)
    return torch.zeros_like(p).scatter(-1, order, sp * keep)


def frame_counts(logits: torch.Tensor, frames: torch.Tensor, cells: int) -> torch.Tensor:
    """[TP, FP, FN] of the frames' first ``cells`` cells (the sustain channel), predicted at p >= 0.5."""
    pred, true = logits[..., :cells] >= 0, frames[..., :cells] > 0.5
    return torch.stack([(pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()]).double()


class LSTMComposer:
    name = "lstm"
    ema_names = ("model",)
    latent = None  # no latent space: --interpolate is refused
    conditional = False  # see models/__init__.py
    sample_options = {"prime": 16, "temperature": 1.0, "top_p": 1.0}

    def __init__(self, spec: RollSpec, cfg):
        self.spec, self.cfg = spec, cfg
        m = cfg.model
        self.modules = {"model": FrameLSTM(spec, m.hidden, m.layers, m.dropout)}

    def optimizers(self) -> dict:
        t = self.cfg.train
        return {"model": torch.optim.Adam(self.modules["model"].parameters(), lr=t.lr, betas=(t.beta1, t.beta2))}

    def describe(self) -> str:
        return f"LSTM {count_params(self.modules['model']) / 1e6:.2f}M parameters"

    def nll(self, model, x: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits [B, T, F] (float) and the mean NLL per frame, nats summed over cells."""
        frames = to_frames(x)
        with autocast():
            logits, _ = model(shifted(frames))
        logits = logits.float()
        nll = F.binary_cross_entropy_with_logits(logits, frames, reduction="sum") / (frames.shape[0] * frames.shape[1])
        return logits, nll

    def train_step(self, ctx: StepContext) -> dict:
        _, loss = self.nll(ctx.nets["model"], ctx.real_batch(), ctx.autocast)
        out = likelihood_update(ctx, loss, "model", self.cfg.train.grad_clip)
        out["Loss/nll_per_frame"] = loss.detach()
        return out

    @torch.no_grad()
    def validate(self, windows: torch.Tensor, *, nets=None, device="cpu", batch: int = 128) -> dict:
        """NLL per frame (nats, summed over a frame's cells) and Bay et al.'s frame accuracy
        TP / (TP + FP + FN), summed over every frame of ``windows`` (sustain channel, p >= 0.5)."""
        model = (nets or self.modules)["model"]
        total, counts = 0.0, torch.zeros(3, dtype=torch.float64)
        for a, b in batches(len(windows), batch):
            x = windows[a:b].to(device).float()
            logits, nll = self.nll(model, x, contextlib.nullcontext)  # fp32
            total += float(nll) * (b - a)
            counts += frame_counts(logits, to_frames(x), self.spec.pitches).cpu()
        tp, fp, fn = counts.tolist()
        return {"Val/nll_per_frame": total / max(len(windows), 1),
                "Val/frame_accuracy": tp / (tp + fp + fn) if tp + fp + fn else math.nan}

    def wants_real(self, prime: int = 16, **_) -> bool:
        return prime > 0

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, *, nets=None, device="cpu", real=None, batch: int = 256,
               prime: int = 16, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
        """Binary rolls [n, C, P, T] on the CPU: the first ``prime`` steps of ``real`` [n, C, P, T],
        then one frame at a time, each cell drawn from its Bernoulli (``temperature`` 0: p >= 0.5)."""
        model = (nets or self.modules)["model"]
        c, p, t = self.spec.shape
        if not 0 <= prime < t:
            raise ValueError(f"prime must be in 0..{t - 1} steps, not {prime}")
        if prime and (real is None or len(real) < n):
            raise ValueError(f"priming needs {n} real windows")
        out = []
        for a, b in batches(n, batch):
            frames = torch.zeros(b - a, t, c * p, device=device)
            if prime:
                frames[:, :prime] = to_frames(real[a:b, :, :, :prime].to(device).float())
            logits, state = model(shifted(frames[:, : prime + 1]))  # position `prime` predicts frame `prime`
            logits = logits[:, -1]
            for step in range(prime, t):
                if temperature == 0:
                    frame = (logits >= 0).float()
                else:
                    probs = top_p_filter(torch.sigmoid(logits.float() / temperature), top_p)
                    frame = (torch.rand(probs.shape, generator=generator).to(device) < probs).float()
                frames[:, step] = frame
                if step + 1 < t:
                    logits, state = model(frame[:, None], state)
                    logits = logits[:, 0]
            out.append(from_frames(frames, c, p).cpu())
        return torch.cat(out)
