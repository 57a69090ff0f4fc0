"""Numerical guards around every training step (RLP or next-token only): nothing non-finite reaches the weights.

:class:`FiniteSteps` is a Composer ``Algorithm`` the training entry always adds, AFTER the RLP algorithm in the list
(Composer runs ``AFTER_*`` events in reverse list order, so it sees the next-token loss before RLP reads it):

- ``AFTER_LOSS``: a microbatch without a single next-token label (e.g. a one-token sample of ``--pack none`` at
  microbatch 1: nothing to predict after the shift) makes the HF loss NaN (a mean over zero tokens). It is replaced
  by a zero that keeps the graph (``0 * logits.sum()``), and counted (``train/ntp_empty_microbatches``).
- ``BEFORE_BACKWARD`` / ``AFTER_TRAIN_BATCH`` (after every microbatch's backward, before the optimizer step): when a
  microbatch's total loss or any gradient is NaN/inf on any rank, every rank drops its gradients
  (``zero_grad(set_to_none=True)``), so the optimizer skips every parameter: weights and optimizer state stay as
  they were. Counted in ``train/nonfinite_steps``; after ``max_consecutive`` such steps in a row the run stops with
  :class:`NonFiniteError`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from rlp import dist

__all__ = ['FiniteSteps', 'NonFiniteError', 'has_ntp_label']


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had non-finite losses or gradients."""


def has_ntp_label(batch: dict[str, Any]) -> bool:
    """True if at least one token of the batch has a next-token label (labels are shifted by one inside HF)."""
    labels = batch.get('labels')
    return labels is None or bool((labels[:, 1:] != -100).any())


class FiniteSteps(Algorithm):
    """See the module docstring.

    Args:
        max_consecutive: stop after this many skipped steps in a row (``trainer.max_nonfinite_steps``).
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        self.max_consecutive = int(max_consecutive)
        self.totals = {'nonfinite_steps': 0, 'ntp_empty_microbatches': 0}
        self.consecutive = 0
        self._bad = False

    def match(self, event: Event, state: State) -> bool:
        return event in (
            Event.BEFORE_TRAIN_BATCH,
            Event.AFTER_LOSS,
            Event.BEFORE_BACKWARD,
            Event.AFTER_TRAIN_BATCH,
            Event.BATCH_END,
        )

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        if event == Event.BEFORE_TRAIN_BATCH:
            self._bad = False
        elif event == Event.AFTER_LOSS and torch.is_tensor(state.loss) and not has_ntp_label(state.batch):
            state.loss = state.outputs['logits'].sum() * 0.0
            self.totals['ntp_empty_microbatches'] += 1
        elif event == Event.BEFORE_BACKWARD:
            total = state.loss['total'] if isinstance(state.loss, dict) else state.loss
            self._bad |= not bool(torch.isfinite(total.detach()).all())
        elif event == Event.AFTER_TRAIN_BATCH:
            self._after_backward(state)
        elif event == Event.BATCH_END:
            logger.log_metrics({f'train/{k}': float(v) for k, v in self.totals.items()})
        return None

    def _after_backward(self, state: State) -> None:
        grads = [_local(p.grad) for p in state.model.parameters() if p.grad is not None]
        local_bad = self._bad or any(not bool(torch.isfinite(g).all()) for g in grads)
        if not dist.all_reduce([float(local_bad)], op='max')[0]:
            self.consecutive = 0
            return
        for optimizer in state.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.totals['nonfinite_steps'] += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f'{self.consecutive} optimizer steps in a row had a non-finite loss or gradient (batch '
                f'{int(state.timestamp.batch)}); the weights are those before them. Lower the learning rate or check '
                f'the data, then resume; trainer.max_nonfinite_steps={self.max_consecutive} sets the limit'
            )

    def state_dict(self) -> dict[str, Any]:
        return {'totals': dict(self.totals), 'consecutive': self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals.update({k: int(v) for k, v in state.get('totals', {}).items()})
        self.consecutive = int(state.get('consecutive', 0))


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (checked without communication; the ranks agree through one all-reduce), else ``t``."""
    return t.to_local() if hasattr(t, 'to_local') else t
