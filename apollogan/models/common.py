"""What every family's training step is handed, and the helpers the families share."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StepContext:
    """Everything the training loop owns that one training step needs."""

    nets: dict[str, nn.Module]  # the family's modules as the step must call them (DDP / compiled wrappers)
    optimizers: dict[str, torch.optim.Optimizer]
    real_batch: Callable[[], torch.Tensor]  # the next training batch [B, C, P, T] on the device
    generator: torch.Generator  # every random draw of the step (noise, interpolation points), on the device
    device: torch.device
    step: int = 0  # steps done before this one
    log_now: bool = False  # the step is logged: also return gradient norms
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    no_sync: Callable[[str], contextlib.AbstractContextManager] = field(
        default=lambda name: contextlib.nullcontext())  # DDP: no gradient all-reduce for module NAME
    fmt: torch.memory_format = torch.contiguous_format


def grad_norm(m: nn.Module) -> torch.Tensor:
    """L2 norm of all of a module's gradients, as a tensor (no host sync)."""
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(m.parameters()).device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """Rolls [B, C, P, T] -> frames [B, T, C*P]: one roll column (every channel) per time step."""
    b, c, p, t = x.shape
    return x.permute(0, 3, 1, 2).reshape(b, t, c * p)


def from_frames(f: torch.Tensor, channels: int, pitches: int) -> torch.Tensor:
    """Frames [B, T, C*P] -> rolls [B, C, P, T]."""
    b, t, _ = f.shape
    return f.reshape(b, t, channels, pitches).permute(0, 2, 3, 1)


def likelihood_update(ctx: StepContext, loss: torch.Tensor, name: str, clip: float) -> dict:
    """Backward, optional gradient clipping and one optimiser step for a single-module family."""
    opt, module = ctx.optimizers[name], ctx.nets[name]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    out = {}
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        if ctx.log_now:
            out[f"GradNorm/{name}"] = norm.detach()  # before clipping
    elif ctx.log_now:
        out[f"GradNorm/{name}"] = grad_norm(module)
    opt.step()
    return out


def batches(n: int, size: int):
    """(start, stop) pairs covering range(n) in chunks of ``size``."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]
