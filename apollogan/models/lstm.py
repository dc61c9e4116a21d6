"""model.family=lstm: a next-frame LSTM composer, the baseline the DCGAN was meant to beat.

A frame is one column of the roll (every channel's pitches at one time step). The model reads
frames 0..t-1 and gives a distribution over frame t; a silent (all-zero) start frame precedes
frame 0, so "from silence" is the model's own first prediction. Trained with teacher forcing on
the exact negative log-likelihood of each frame, in nats. ``model.output`` chooses the frame's
distribution:

    bernoulli  an independent Bernoulli per cell (64 pitches, or 128 with the onset channel): the
               classic baseline; its draws scatter a chord's notes and break held notes
    nade       the cells one after another, each conditioned on the recurrent state and on the cells
               already drawn in that frame (RNN-NADE, Boulanger-Lewandowski et al. 2012)
    tokens     one token per frame from a vocabulary of the training data's most frequent frames (the
               seeds' note-and-chord composers); a frame outside it comes through an escape token
               followed by per-cell Bernoullis, a mixture that keeps the likelihood exact

Sampling draws (never argmax by default: the seeds' argmax composers repeat one note), optionally
primed with the first K steps of real windows, with a temperature; top-p keeps, per frame, the most
probable cells (bernoulli) or tokens (tokens) holding the share p of the mass.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..benchmark import frame_accuracy
from ..cli import UserError
from ..spec import RollSpec
from .common import StepContext, batches, count_params, from_frames, likelihood_update, to_frames

OUTPUTS = ("bernoulli", "nade", "tokens")


@dataclass
class LSTMConfig:
    """model.family=lstm: next-frame composer; a frame is one roll column (apollogan/models/lstm.py)."""

    family: str = "lstm"
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.2  # between LSTM layers, and on the last layer's output
    output: str = "bernoulli"  # the frame's distribution: bernoulli, nade or tokens (see above)
    nade_hidden: int = 64  # output=nade: hidden units of the NADE
    vocab: int = 4096  # output=tokens: the most frequent training frames that get a token of their own

    choices: ClassVar[dict] = {"output": OUTPUTS}
    smoke: ClassVar[tuple] = ("model.hidden=16", "model.layers=2", "train.grad_clip=1.0", "model.nade_hidden=8",
                              "model.vocab=64")

    def check(self, train) -> None:
        if not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout: {self.dropout} must be in [0, 1)")
        if self.nade_hidden < 1 or self.vocab < 1:
            raise UserError("model.nade_hidden and model.vocab must be positive")


def top_p_filter(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Silence, per frame [..., F], the cells outside the most probable ones holding ``top_p`` of the mass."""
    if top_p >= 1:
        return p
    sp, order = p.sort(dim=-1, descending=True)
    before = sp.cumsum(-1) - sp  # mass of the more probable cells
    keep = before < top_p * sp.sum(-1, keepdim=True)
    return torch.zeros_like(p).scatter(-1, order, sp * keep)


def frame_counts(pred: torch.Tensor, frames: torch.Tensor, cells: int) -> torch.Tensor:
    """[TP, FP, FN] of the predicted frames' first ``cells`` cells (the sustain channel) against the truth."""
    pred, true = pred[..., :cells].bool(), frames[..., :cells] > 0.5
    return torch.stack([(pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()]).double()


def _bernoulli_nll(logits: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), frames.float(), reduction="none").sum(-1)


def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(probs.shape, generator=generator).to(probs.device) < probs).float()


class BernoulliHead(nn.Linear):
    """An independent Bernoulli per cell (a Linear layer: its weights keep the name ``out``)."""

    def nll(self, h, frames):
        """NLL [...] in nats of ``frames`` [..., F] given the recurrent states ``h`` [..., H]."""
        return _bernoulli_nll(self(h), frames)

    def predict(self, h):
        return self(h) >= 0

    def sample(self, h, generator, temperature=1.0, top_p=1.0):
        logits = self(h).float()
        if temperature == 0:
            return (logits >= 0).float()
        return _draw(top_p_filter(torch.sigmoid(logits / temperature), top_p), generator)


class NADEHead(nn.Module):
    """RNN-NADE's output: p(v_i | v_<i, h) = sigmoid(b_i(h) + V_i . sigmoid(c(h) + W[:, :i] v_:i)), the cells
    in order, the NADE's biases given by the recurrent state. Its probabilities sum to 1 over the 2^F frames."""

    def __init__(self, hidden: int, frame: int, units: int):
        super().__init__()
        self.visible, self.hidden = nn.Linear(hidden, frame), nn.Linear(hidden, units)
        self.w = nn.Parameter(torch.randn(units, frame) * 0.01)  # cell i -> the hidden units of the cells after it
        self.v = nn.Parameter(torch.randn(frame, units) * 0.01)  # the hidden units -> cell i's logit

    def logits(self, h, frames):
        """Every cell's logit given the cells before it in ``frames`` (teacher forcing), [..., F]."""
        with torch.autocast(h.device.type, enabled=False):  # fp32: a running sum over 64 cells in bf16 drifts
            h = h.float()
            add = frames.float()[..., None, :] * self.w  # [..., U, F]
            pre = self.hidden(h)[..., None] + add.cumsum(-1) - add  # cells j < i only
            return self.visible(h) + (torch.sigmoid(pre) * self.v.T).sum(-2)

    def nll(self, h, frames):
        return _bernoulli_nll(self.logits(h, frames), frames)

    def _walk(self, h, choose):
        """One frame per row of ``h`` [N, H], cell by cell, ``choose(logit [N]) -> cell [N]``."""
        bias, pre = self.visible(h).float(), self.hidden(h).float()
        out = torch.zeros_like(bias)
        for i in range(bias.shape[-1]):
            logit = bias[:, i] + torch.sigmoid(pre) @ self.v[i].float()
            out[:, i] = choose(logit)
            pre = pre + out[:, i:i + 1] * self.w[:, i].float()
        return out

    def predict(self, h):
        """Cell by cell, each on when p >= 0.5 given the cells chosen before it."""
        return self._walk(h.reshape(-1, h.shape[-1]), lambda z: (z >= 0).float()).reshape(*h.shape[:-1], -1) > 0.5

    def sample(self, h, generator, temperature=1.0, top_p=1.0):
        if temperature == 0:
            return self._walk(h, lambda z: (z >= 0).float())
        return self._walk(h, lambda z: _draw(torch.sigmoid(z / temperature), generator))


class TokenHead(nn.Module):
    """One categorical token per frame over the ``vocab`` most frequent training frames and an escape token
    (the last); after the escape, an independent Bernoulli per cell. p(x) = p(token of x) + p(escape) B(x):
    exact and normalised over every frame, those in the vocabulary and those outside it."""

    def __init__(self, hidden: int, frame: int, vocab: int):
        super().__init__()
        self.tokens, self.cells = nn.Linear(hidden, vocab + 1), nn.Linear(hidden, frame)
        self.register_buffer("vocab", torch.zeros(vocab, frame, dtype=torch.uint8))  # checkpoints keep it
        self.register_buffer("size", torch.zeros((), dtype=torch.long))  # slots in use (the rest never drawn)

    def fit(self, counts: Counter) -> None:
        """The vocabulary: the most frequent frames of ``counts`` {packed frame bytes: count}, ties by bytes."""
        frame = self.vocab.shape[1]
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: len(self.vocab)]
        packed = np.frombuffer(b"".join(k for k, _ in top), np.uint8).reshape(len(top), -1)
        rows = np.unpackbits(packed, axis=1, count=frame)
        with torch.no_grad():
            self.vocab.zero_()
            self.vocab[: len(rows)] = torch.from_numpy(rows)
            self.size.fill_(len(rows))

    def _log_tokens(self, h):
        """Log-probabilities [..., size + 1] of the slots in use and, last, the escape: only their rows of the
        output layer are computed (a vocabulary of 4096 slots may hold a thousand frames)."""
        size = int(self.size)
        rows = torch.cat([torch.arange(size, device=h.device), torch.tensor([len(self.vocab)], device=h.device)])
        return F.log_softmax(F.linear(h, self.tokens.weight[rows], self.tokens.bias[rows]).float(), -1)

    def lookup(self, frames):
        """Each frame's token, or -1 outside the vocabulary, [...]: the batch's distinct frames looked up by
        their bytes (exact, and small: a batch holds a few hundred distinct frames)."""
        flat = frames.reshape(-1, frames.shape[-1]) > 0.5
        uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
        size = int(self.size)
        known = {row.tobytes(): i for i, row in enumerate(np.packbits(self.vocab[:size].cpu().numpy(), axis=1))}
        idx = [known.get(row.tobytes(), -1) for row in np.packbits(uniq.cpu().numpy(), axis=1)]
        return torch.tensor(idx, device=frames.device)[inverse].reshape(frames.shape[:-1])

    def log_prob(self, h, frames):
        lt = self._log_tokens(h)
        idx = self.lookup(frames)
        escape = lt[..., -1] - _bernoulli_nll(self.cells(h), frames)
        known = lt.gather(-1, idx.clamp(min=0)[..., None])[..., 0]
        return torch.where(idx >= 0, torch.logaddexp(known, escape), escape)

    def nll(self, h, frames):
        return -self.log_prob(h, frames)

    def predict(self, h):
        """The most probable token's frame; after the escape, the cells with p >= 0.5."""
        tok = self._log_tokens(h).argmax(-1)
        escaped = tok == int(self.size)
        frame = self.vocab[tok.clamp(max=len(self.vocab) - 1)].bool()
        return torch.where(escaped[..., None], self.cells(h) >= 0, frame)

    def sample(self, h, generator, temperature=1.0, top_p=1.0):
        lt = self._log_tokens(h)
        if temperature == 0:
            tok = lt.argmax(-1)
        else:
            probs = top_p_filter(torch.softmax(lt / temperature, -1), top_p)
            tok = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(h.device)
        escaped = tok == int(self.size)
        frame = self.vocab[tok.clamp(max=len(self.vocab) - 1)].float()
        cells = torch.sigmoid(self.cells(h).float() / max(temperature, 1e-6))
        drawn = (cells >= 0.5).float() if temperature == 0 else _draw(cells, generator)
        return torch.where(escaped[:, None], drawn, frame)


class FrameLSTM(nn.Module):
    def __init__(self, spec: RollSpec, hidden: int = 256, layers: int = 2, dropout: float = 0.2,
                 output: str = "bernoulli", nade_hidden: int = 64, vocab: int = 4096):
        super().__init__()
        self.frame = spec.channels * spec.pitches
        self.lstm = nn.LSTM(self.frame, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        # the first release had no dropout here: its runs stay bit-exact
        self.drop = nn.Dropout(dropout) if output != "bernoulli" else nn.Identity()
        self.out = {"bernoulli": lambda: BernoulliHead(hidden, self.frame),
                    "nade": lambda: NADEHead(hidden, self.frame, nade_hidden),
                    "tokens": lambda: TokenHead(hidden, self.frame, vocab)}[output]()

    def forward(self, frames: torch.Tensor, state=None):
        """Frames [B, T, F] -> the recurrent state after each [B, T, H] (it gives the next frame), and the LSTM state."""
        h, state = self.lstm(frames, state)
        return self.drop(h), state


def shifted(frames: torch.Tensor) -> torch.Tensor:
    """The inputs of teacher forcing: a silent start frame, then frames 0..T-2."""
    return torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], dim=1)


def frame_vocabulary(rolls) -> Counter:
    """{packed frame bytes: count} over every frame of ``rolls``, an iterable of uint8 batches [n, C, P, T]."""
    counts = Counter()
    for x in rolls:
        f = to_frames(torch.from_numpy(np.asarray(x, bool)))
        uniq, n = np.unique(np.packbits(f.reshape(-1, f.shape[-1]).numpy(), axis=1), axis=0, return_counts=True)
        counts.update({row.tobytes(): int(c) for row, c in zip(uniq, n)})
    return counts


class LSTMComposer:
    name = "lstm"
    ema_names = ("model",)
    latent = None  # no latent space: --interpolate is refused
    conditional = False  # see models/__init__.py
    likelihood = True  # an exact likelihood: Val/nll_per_frame, run.best_metric=nll, evaluate --likelihood
    sample_options = {"prime": 16, "temperature": 1.0, "top_p": 1.0}

    def __init__(self, spec: RollSpec, cfg):
        self.spec, self.cfg = spec, cfg
        m = cfg.model
        self.modules = {"model": FrameLSTM(spec, m.hidden, m.layers, m.dropout, m.output, m.nade_hidden, m.vocab)}

    def prepare(self, shards, usable: np.ndarray, chunk: int = 512) -> None:
        """Before a new run's first step: output=tokens builds its vocabulary from the training windows."""
        head = self.modules["model"].out
        if isinstance(head, TokenHead):
            head.fit(frame_vocabulary(shards.get(usable[a:b]) for a, b in batches(len(usable), chunk)))

    def optimizers(self) -> dict:
        t = self.cfg.train
        return {"model": torch.optim.Adam(self.modules["model"].parameters(), lr=t.lr, betas=(t.beta1, t.beta2))}

    def describe(self) -> str:
        m, head = self.cfg.model, self.modules["model"].out
        extra = (f", NADE output of {m.nade_hidden} units" if m.output == "nade" else
                 f", token output ({int(head.size)} frames and an escape)" if m.output == "tokens" else "")
        return f"LSTM {count_params(self.modules['model']) / 1e6:.2f}M parameters{extra}"

    def nll(self, model, x: torch.Tensor, autocast) -> torch.Tensor:
        """The teacher-forced mean NLL per frame of rolls ``x``, nats (summed over a frame's cells)."""
        frames = to_frames(x)
        with autocast():
            h, _ = model(shifted(frames))
            nll = _model_of(model).out.nll(h, frames)
        return nll.float().mean()

    def train_step(self, ctx: StepContext) -> dict:
        loss = self.nll(ctx.nets["model"], ctx.real_batch(), ctx.autocast)
        out = likelihood_update(ctx, loss, "model", self.cfg.train.grad_clip)
        out["Loss/nll_per_frame"] = loss.detach()
        return out

    @torch.no_grad()
    def frame_scores(self, frames: torch.Tensor, nets=None, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, T, F] -> the NLL of each frame given the ones before it [B, T] (fp32) and the predicted
        frames [B, T, F] (bool): position t predicts frame t from frames 0..t-1."""
        model = (nets or self.modules)["model"]
        h, _ = model(shifted(frames.float()))
        hf, ff = h.reshape(-1, h.shape[-1]), frames.reshape(-1, frames.shape[-1])
        head = _model_of(model).out
        nll = torch.cat([head.nll(hf[a:b], ff[a:b]) for a, b in batches(len(hf), chunk)])  # bounded memory (NADE)
        pred = torch.cat([head.predict(hf[a:b]) for a, b in batches(len(hf), chunk)])
        return nll.reshape(frames.shape[:2]), pred.reshape(frames.shape)

    @torch.no_grad()
    def validate(self, windows: torch.Tensor, *, nets=None, device="cpu", batch: int = 64) -> dict:
        """NLL per frame (nats, summed over a frame's cells) and Bay et al.'s frame accuracy
        TP / (TP + FP + FN), summed over every frame of ``windows`` (sustain channel)."""
        total, counts = 0.0, torch.zeros(3, dtype=torch.float64)
        for a, b in batches(len(windows), batch):
            frames = to_frames(windows[a:b].to(device).float())
            nll, pred = self.frame_scores(frames, nets)
            total += float(nll.double().sum())
            counts += frame_counts(pred, frames, self.spec.pitches).cpu()
        return {"Val/nll_per_frame": total / max(len(windows) * self.spec.steps, 1),
                "Val/frame_accuracy": frame_accuracy(*counts.tolist())}

    def wants_real(self, prime: int = 16, **_) -> bool:
        return prime > 0

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, *, nets=None, device="cpu", real=None, batch: int = 256,
               prime: int = 16, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
        """Binary rolls [n, C, P, T] on the CPU: the first ``prime`` steps of ``real`` [n, C, P, T],
        then one frame at a time, drawn from the output's distribution (``temperature`` 0: no draw)."""
        model = (nets or self.modules)["model"]
        head = _model_of(model).out
        c, p, t = self.spec.shape
        if not 0 <= prime < t:
            raise ValueError(f"prime must be in 0..{t - 1} steps, not {prime}")
        if prime and (real is None or len(real) < n):
            raise ValueError(f"priming needs {n} real windows")
        if top_p < 1 and isinstance(head, NADEHead):
            raise UserError("--top-p: the nade output draws a frame cell by cell; there is no frame-wide tail to cut "
                            "(use --temperature)")
        out = []
        for a, b in batches(n, batch):
            frames = torch.zeros(b - a, t, c * p, device=device)
            if prime:
                frames[:, :prime] = to_frames(real[a:b, :, :, :prime].to(device).float())
            h, state = model(shifted(frames[:, : prime + 1]))  # position `prime` predicts frame `prime`
            h = h[:, -1]
            for step in range(prime, t):
                frame = head.sample(h, generator, temperature, top_p)
                frames[:, step] = frame
                if step + 1 < t:
                    h, state = model(frame[:, None], state)
                    h = h[:, 0]
            out.append(from_frames(frames, c, p).cpu())
        return torch.cat(out)


def _model_of(model):
    """The FrameLSTM inside a DDP or compiled wrapper."""
    return getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
