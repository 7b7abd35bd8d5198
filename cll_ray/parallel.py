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


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows in rank order, differentiable: the backward pass hands each rank the gradient of its own
    rows summed over all ranks. A loss computed on the gathered batch (the same value on every rank) and then
    averaged by DDP thus has exactly the gradient it has on one process holding the whole batch."""
    _, world = data_parallel_rank()
    if world == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()))


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (an epoch's mean loss over the global batch, not rank 0's share)."""
    _, world = data_parallel_rank()
    if world == 1:
        return values
    keys = sorted(values)  # every rank runs the same method, so the same keys
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return dict(zip(keys, (total / world).tolist()))
