"""The FLOP counter: model FLOPs of every batch (:mod:`rlp.flops`), logged and handed to Composer's SpeedMonitor.

At ``BATCH_END`` (after the RLP algorithm, which counted its rollouts, teacher and policy passes) it adds the
next-token forward + backward over the device batch's real tokens when that ran (``rlp: null``, or
``loss.ntp_weight`` > 0; with weight 0 the algorithm skips it), sums over ranks and logs:

- ``throughput/flops``: the FLOPs of the global batch; ``throughput/flops_ntp`` and ``throughput/flops_rlp`` its
  two parts;
- ``throughput/flops_total``: the sum over all batches so far (kept in the checkpoint, so a resumed run goes on
  counting): the number two runs are matched on.

It also gives the Composer model a ``flops_per_batch`` callable that returns this rank's FLOPs of the batch that
just ran, so Composer's ``SpeedMonitor`` (which must come after this callback) logs ``throughput/flops_per_sec``
and, given a peak (``callbacks.peak_flops``), ``throughput/device/mfu``.
"""

from __future__ import annotations

from typing import Any, Optional

from composer.core import Callback, State
from composer.loggers import Logger

from rlp import dist
from rlp.flops import FlopModel, ntp_flops
from rlp.hf import unwrap_hf

__all__ = ['FlopCounter']


def _rlp_algorithm(state: State) -> Optional[Any]:
    from rlp.run.algorithm import RLP

    return next((a for a in state.algorithms if isinstance(a, RLP)), None)


class FlopCounter(Callback):
    """Counts and logs the model FLOPs of each batch (module docstring)."""

    def __init__(self) -> None:
        self.flop_model: Optional[FlopModel] = None
        self.total = 0.0
        self.rank_flops = 0.0

    def init(self, state: State, logger: Logger) -> None:
        del logger
        self.flop_model = FlopModel.of(unwrap_hf(state.model))  # INIT runs before any sharding
        state.model.flops_per_batch = self.flops_per_batch  # read by SpeedMonitor

    def flops_per_batch(self, batch: Any) -> float:
        """This rank's FLOPs of the batch that just ran (the SpeedMonitor's hook; ``batch`` is not needed)."""
        del batch
        return self.rank_flops

    def batch_end(self, state: State, logger: Logger) -> None:
        assert self.flop_model is not None
        algorithm = _rlp_algorithm(state)
        ntp = 0.0
        if algorithm is None or algorithm.config.loss.ntp_weight != 0:
            ids = state.batch['input_ids']
            mask = state.batch.get('attention_mask')
            rows = mask.sum(1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
            ntp = ntp_flops(self.flop_model, [int(n) for n in rows])
        rlp_rank = algorithm.rank_flops if algorithm is not None else 0.0
        self.rank_flops = ntp + rlp_rank
        ntp_all = dist.all_reduce([ntp])[0]
        rlp_all = algorithm.batch_flops if algorithm is not None else 0.0
        self.total += ntp_all + rlp_all
        logger.log_metrics(
            {
                'throughput/flops': ntp_all + rlp_all,
                'throughput/flops_ntp': ntp_all,
                'throughput/flops_rlp': rlp_all,
                'throughput/flops_total': self.total,
            }
        )

    def state_dict(self) -> dict[str, Any]:
        return {'total': self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = float(state.get('total', 0.0))
