"""The data-parallel facts a Ray-free method needs: this rank, the world size, and gathering rows."""

from __future__ import annotations

import torch
import torch.distributed as dist


def data_parallel_rank() -> tuple[int, int]:
    """(rank, world size) of torch.distributed when initialized (Ray Train workers), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's rows, concatenated in rank order (equal shapes on every rank); a no-op on one process."""
    _, world = data_parallel_rank()
    if world == 1:
        return tensors
    out = {}
    for key, value in tensors.items():
        parts = [torch.empty_like(value) for _ in range(world)]
        dist.all_gather(parts, value.contiguous())
        out[key] = torch.cat(parts)
    return out
