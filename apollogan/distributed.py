"""Processes of one run under torchrun: the process group, DDP wrappers, and the few collectives
the training loop needs. A single process (no WORLD_SIZE) needs none of it."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; otherwise one process on CUDA if present, else CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        return Dist(dist.get_rank(), world, device)
    return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def wrap(modules: dict, env: Dist, compile: bool):
    """The modules as a training step calls them (DDP, then torch.compile), and ``no_sync(name)``: a
    context in which module NAME's backward does not all-reduce its gradients."""
    ddp = dict(modules)
    if env.world > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        ddp = {k: torch.nn.parallel.DistributedDataParallel(m, device_ids=ids) for k, m in modules.items()}
    nets = {k: torch.compile(m) for k, m in ddp.items()} if compile else ddp

    def no_sync(name):
        return ddp[name].no_sync() if env.world > 1 else contextlib.nullcontext()
    return nets, no_sync


def shutdown(env: Dist, done: bool) -> None:
    """Leave the process group; after a clean finish only once every rank is done (no rank closes gloo's
    connections while another still uses them), after a failure at once."""
    if env.world > 1:
        if done:
            dist.barrier()
        dist.destroy_process_group()


def barrier(env: Dist) -> None:
    if env.world > 1:
        dist.barrier()


def broadcast(obj, env: Dist):
    """Rank 0's ``obj`` on every rank."""
    if env.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, env: Dist) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if env.world == 1:
        return [obj]
    out = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def first_bad_step(first_bad: torch.Tensor, env: Dist) -> int:
    """The first step any rank saw a non-finite loss at (-1: none), so every rank stops at the same one."""
    if env.world == 1:
        return int(first_bad)
    never = torch.iinfo(torch.int64).max
    bad = torch.where(first_bad < 0, never, first_bad)
    dist.all_reduce(bad, op=dist.ReduceOp.MIN)
    return int(torch.where(bad == never, -1, bad))
