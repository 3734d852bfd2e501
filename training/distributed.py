"""The little DDP glue training needs: process-group setup from torchrun's environment, rank-sharded index
lists, and reductions of metric sums. A single process (no ``WORLD_SIZE``) needs no process group at all, so the
same script runs plain, under ``torchrun --nproc_per_node=N`` on GPUs (NCCL) or on CPU (gloo, used by the tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(prefer_cuda: bool = True) -> DistInfo:
    """Joins the process group torchrun describes (gloo on CPU, NCCL on CUDA) and picks this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: list[int], info: DistInfo) -> list[int]:
    """This rank's share of ``indices``: padded by wrap-around so every rank takes the same number of steps
    (an uneven count would leave one rank waiting forever in an all-reduce)."""
    if not info.enabled or not indices:
        return list(indices)
    per_rank = -(-len(indices) // info.world_size)
    padded = (list(indices) * (1 + per_rank * info.world_size // len(indices)))[: per_rank * info.world_size]
    return padded[info.rank :: info.world_size]


def all_gather_arrays(array: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenation of every rank's 1-D tensor (lengths may differ), on every rank."""
    if not info.enabled:
        return array
    length = torch.tensor([array.numel()], device=array.device)
    lengths = [torch.zeros_like(length) for _ in range(info.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(n.item() for n in lengths))
    padded = torch.zeros(longest, dtype=array.dtype, device=array.device)
    padded[: array.numel()] = array
    gathered = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(n.item())] for g, n in zip(gathered, lengths)])


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them at the start of each
    forward, so after the last training step each rank still holds its own updates; without this, ranks would
    validate and save slightly different models."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
