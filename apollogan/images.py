"""Pictures of rolls: pitch up, time to the right; onsets brighter than sustained steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image


def roll_images(rolls) -> torch.Tensor:
    """[N, C, P, T] (or [N, P, T]) rolls in [0, 1] -> [N, 1, 2P, T] grey images, highest pitch on top."""
    x = torch.as_tensor(np.asarray(rolls) if not torch.is_tensor(rolls) else rolls).float()
    if x.dim() == 3:
        x = x[:, None]
    img = x[:, :1] * (0.65 if x.shape[1] > 1 else 1.0)
    if x.shape[1] > 1:
        img = img + 0.35 * x[:, 1:2]
    return img.flip(-2).clamp(0, 1).repeat_interleave(2, dim=-2)  # two pixels a pitch: readable at 1:1


def roll_grid(rolls, nrow: int = 4) -> torch.Tensor:
    """A [3, H, W] image grid of rolls, for TensorBoard or PNG files."""
    return make_grid(roll_images(rolls), nrow=nrow, padding=2, pad_value=0.3)


def save_rolls_png(rolls, path, nrow: int = 4) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(roll_grid(rolls, nrow), str(path))
