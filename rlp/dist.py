"""torch.distributed helpers for the few collectives RLP needs (counts and metric sums); no-ops on one process."""

from __future__ import annotations

import torch

__all__ = ['all_reduce', 'comm_device', 'world']


def world() -> tuple[int, int]:
    """``(world_size, rank)``; ``(1, 0)`` without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else CPU (gloo)."""
    if torch.distributed.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def all_reduce(values: list[float], op: str = 'sum', dtype: torch.dtype = torch.float64) -> list[float]:
    """Element-wise ``sum`` or ``max`` of ``values`` over all ranks (collective); the values themselves on one."""
    if world()[0] == 1:
        return list(values)
    t = torch.tensor(values, dtype=dtype, device=comm_device())
    reduce_op = torch.distributed.ReduceOp.SUM if op == 'sum' else torch.distributed.ReduceOp.MAX
    torch.distributed.all_reduce(t, op=reduce_op)
    return t.cpu().tolist()
