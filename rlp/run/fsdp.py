"""FSDP2 under Composer 0.32.1 and torch 2.7: the config built from ``trainer.fsdp``, and the two upstream bugs met
on the way, worked around here and nowhere else.

1. Composer's ``GradientClipping`` clips nothing under FSDP2. ``apply_gradient_clipping``
   (``composer/algorithms/gradient_clipping/gradient_clipping.py``), when FSDP is on, only looks for FSDP1
   ``FullyShardedDataParallel`` root modules and calls their ``clip_grad_norm_``; an FSDP2 model has none, so the
   gradients pass unclipped (measured on 2 gloo ranks: the first SGD update was 1.29x the DDP run's, whose gradient
   norm of 1.29 was clipped to 1). :class:`ClipGradNorm` calls ``torch.nn.utils.clip_grad_norm_``, which takes
   DTensor gradients (the norm of the shards is reduced over the mesh) and is what Composer calls without FSDP, so
   it replaces ``GradientClipping`` on every path.
2. torch 2.7's gloo backend sums where FSDP2 asks for an average (pytorch/pytorch#162338, open): FSDP2 reduce-scatters
   fp32 gradients with ``ReduceOp.AVG``, which gloo's ``reduce_scatter_tensor`` carries out as a sum, so on CPU ranks
   every gradient is W times the DDP one (measured: a gradient norm of 1.55 under FSDP2 against 0.77 under DDP on 2
   ranks). NCCL averages correctly. :class:`GlooGradAverage` probes the backend once (a one-element reduce-scatter
   with AVG) and, only where it sums, divides the FSDP2 gradients by W after the last microbatch's backward.

Tests: ``tests/rlp/run/test_fsdp_workarounds.py`` shows both bugs and both fixes on 2 gloo ranks.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

__all__ = ['ClipGradNorm', 'GlooGradAverage', 'fsdp2_config', 'reduce_scatter_avg_sums']


def fsdp2_config(options: dict[str, Any]) -> Any:
    """Composer's ``FSDP2Config`` from a validated ``trainer.fsdp`` mapping (its "experimental" warning muted)."""
    from composer.utils.parallelism import FSDP2Config

    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='FSDP2 Config/APIs are experimental')
        return FSDP2Config(**options)


class ClipGradNorm(Algorithm):
    """Scale the gradients so that their global L2 norm is at most ``max_norm`` (after the last microbatch's
    backward, before the optimizer step), for plain, DDP and FSDP2 (DTensor) parameters alike (bug 1 above).

    .. math:: g \\leftarrow g \\cdot \\min(1, m / (\\lVert g \\rVert_2 + 10^{-6}))
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = float(max_norm)

    def match(self, event: Event, state: State) -> bool:
        return event == Event.AFTER_TRAIN_BATCH

    def apply(self, event: Event, state: State, logger: Optional[Logger]) -> Optional[int]:
        params = [p for p in state.model.parameters() if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, max_norm=self.max_norm)
        return None


def reduce_scatter_avg_sums(group: Any = None) -> bool:
    """True when ``reduce_scatter_tensor(op=AVG)`` on ``group`` returns the SUM (gloo in torch 2.7, bug 2 above);
    a collective: every rank of the group must call it."""
    import torch.distributed as tdist

    world = tdist.get_world_size(group)
    if world < 2:
        return False
    out = torch.zeros(1)
    tdist.reduce_scatter_tensor(out, torch.ones(world), op=tdist.ReduceOp.AVG, group=group)
    return bool(out.item() > 1.5)


class GlooGradAverage(Algorithm):
    """Divide FSDP2 (DTensor) gradients by the world size after the last microbatch's backward, where the backend
    sums instead of averaging (bug 2 above; probed once at INIT on every rank). Put it LAST in the algorithm list:
    Composer runs ``AFTER_*`` events in reverse order, so it acts before clipping and the finiteness guard."""

    def __init__(self) -> None:
        self.sums: Optional[bool] = None

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.AFTER_TRAIN_BATCH)

    def apply(self, event: Event, state: State, logger: Optional[Logger]) -> Optional[int]:
        import torch.distributed as tdist

        if event == Event.INIT:
            self.sums = tdist.is_initialized() and tdist.get_backend() == 'gloo' and reduce_scatter_avg_sums()
            return None
        if self.sums:
            world = tdist.get_world_size()
            with torch.no_grad():
                for p in state.model.parameters():
                    if p.grad is not None and hasattr(p.grad, 'to_local'):
                        p.grad.to_local().div_(world)
        return None
