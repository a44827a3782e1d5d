"""Data-parallel plumbing: ``torchrun`` environment, process group, reductions.

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; we then
initialise the default process group (NCCL on CUDA, Gloo on CPU), put each process on
``cuda:LOCAL_RANK`` and wrap trainable modules in DistributedDataParallel. Without those
variables everything degrades to a single process and the helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from landslide_cli.devices import resolve_device
from landslide_cli.errors import LandslideError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes (in place on a device copy); returns the sum."""
        if not self.distributed:
            return tensor
        t = tensor.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(tensor.device)

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            return tensor
        return self.all_reduce_sum(tensor) / self.world_size

    def broadcast_flag(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any (e.g. an error on one rank)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def close(self, *, barrier: bool = True) -> None:
        """Leave the process group; ``barrier=False`` on the error path (the other processes
        may be blocked in a collective and will be stopped by torchrun)."""
        if self.initialized_here and dist.is_initialized():
            if barrier:
                self.barrier()
            dist.destroy_process_group()
            self.initialized_here = False


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 without it)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise LandslideError("RANK/WORLD_SIZE/LOCAL_RANK must be integers") from None
    return rank, world, local


def setup(device: str = "auto") -> DistContext:
    """Resolve the device and, under torchrun, join the process group."""
    rank, world, local = env_world()
    if world <= 1:
        return DistContext(device=resolve_device(device))
    want = (device or "auto").lower()
    use_cuda = torch.cuda.is_available() and want != "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise LandslideError("--device cuda was requested but no CUDA device is available")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise LandslideError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} "
                                 "CUDA device(s) on this node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    initialized = False
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
        initialized = True
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev,
                       initialized_here=initialized)
