"""torch access to shard sets: whole batches gathered from the memmaps in one call."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .shards import ShardSet
from .spec import RollSpec


class RollDataset(Dataset):
    """Windows of one split as float tensors [C, P, T] in {0, 1}.

    ``__getitems__`` serves a whole batch with one gather and one unpack, so the DataLoader
    does no per-window Python work.
    """

    def __init__(self, root, split: str = "train", spec: RollSpec | None = None, verify: bool = True):
        self.shards = ShardSet(root, split, spec=spec, verify=verify)
        self.spec = self.shards.spec

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices) -> torch.Tensor:
        return torch.from_numpy(self.shards.get(np.asarray(indices))).float()


def _batch_as_is(batch):
    return batch


def make_loader(dataset: RollDataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                seed: int = 0, num_workers: int = 0, sampler=None) -> DataLoader:
    """A DataLoader yielding float tensors [B, C, P, T]; ``seed`` fixes the shuffling order."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, drop_last=drop_last, num_workers=num_workers,
                      collate_fn=_batch_as_is, generator=gen, persistent_workers=num_workers > 0)
