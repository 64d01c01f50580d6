"""Data-parallel training across processes: `torchrun --nproc_per_node N -m biasbench train R`.

Each process is a rank; NCCL on GPUs, gloo on CPUs. Every rank forms the same global batch
(same permutation and augmentation random numbers, from (seed, epoch)) and keeps its contiguous
share, so N processes compute what one process computes on the global batch: DDP averages the
gradients, and each rank's loss is scaled by its share of the batch. Metrics are summed across
ranks; rank 0 alone writes checkpoints and results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's contiguous share of a global batch, and the share's weight in the batch
        mean times `world` (so that DDP's gradient average equals the global-batch gradient)."""
        if not self.enabled:
            return x, y, 1.0
        n = len(y)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return x[lo:hi], y[lo:hi], (hi - lo) * self.world / n

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Sum tensors over ranks (one collective for all of them)."""
        if not self.enabled:
            return list(values)
        flat = torch.stack([v.double() for v in values])
        dist.all_reduce(flat)
        return [f.to(v.dtype) for f, v in zip(flat, values)]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def from_environment(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistContext(rank=rank, world=world, local_rank=local_rank)


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    if device.type == "cuda":
        # Batch statistics over the global batch, as one process would compute them.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    # gloo has no SyncBatchNorm: BN statistics are per rank (the one difference from one process).
    return torch.nn.parallel.DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)
