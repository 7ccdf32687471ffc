"""Collectives that keep gradients, for losses computed over the whole multi-process batch
(ViL-Seg's cross-modal InfoNCE with every rank's negatives, its IIC joint distribution).

Both work on any backend (gloo included: no reduce-scatter needed) and are the identity in a
single process. With DDP averaging gradients over ``W`` ranks, a loss every rank computes from the
gathered / reduced tensors gets exactly the gradient of the same loss on the concatenated batch.
"""
from typing import Tuple

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _AllGather(torch.autograd.Function):
    """(n, ...) on every rank -> (W * n, ...) in rank order; backward: the gathered gradient is
    summed over ranks and each rank keeps its own rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.n, ctx.rank = x.shape[0], dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward: the gradient summed over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_gather_with_grad(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate ``x`` (n, ...) of every rank (equal n on all ranks) along dim 0, keeping the
    autograd graph. Returns the (W * n, ...) tensor and the offset of this rank's rows."""
    if world_size() == 1:
        return x, 0
    return _AllGather.apply(x), rank() * x.shape[0]


def all_reduce_mean_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks, keeping the autograd graph."""
    w = world_size()
    if w == 1:
        return x
    return _AllReduceSum.apply(x) / w
