"""Optional wall-clock timing of the parts of an RLP step (for benchmarks; :func:`rlp.step.rlp_loss` accepts one).

    timer = StepTimer()
    loss, stats = rlp_loss(model, teachers, batch, cfg, template, key=key, timer=timer)
    timer.seconds  # {'positions': ..., 'rollout': ..., 'teacher': ..., 'policy_forward': ..., 'objective': ...}

Each part is timed with ``time.perf_counter``; on CUDA the device is synchronised before and after a part so that
its queued kernels are charged to it (only when a timer is passed: an untimed step never synchronises).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import torch

__all__ = ['StepTimer']


class StepTimer:
    """Seconds per named part, summed over calls (``seconds``: name -> float)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start


def untimed(name: str) -> contextlib.nullcontext:
    """The no-op stand-in for a :class:`StepTimer`."""
    return contextlib.nullcontext()
