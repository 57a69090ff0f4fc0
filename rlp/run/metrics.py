"""``metrics.jsonl``: one JSON object per training batch, with Composer's metric names.

Each line is ``{"batch": i, "<metric name>": value, ...}`` where ``i`` is Composer's logging step (the 0-based
index of the batch that produced ``loss/train/total``) and the names are exactly those Composer and the
algorithms log (``loss/train/total``, ``loss/train/ntp``, ``loss/train/rlp``, ``rlp/...``,
``throughput/...``). With ``trainer.record_sample_ids`` each record also holds ``sample_ids``: the global batch's
sample ids in rank order.

Composer increments its batch counter before ``BATCH_END``, so metrics logged at ``BATCH_END`` (throughput,
timestamps, algorithm updates) carry the *next* step; they are filed under the batch that just ran, so each record
holds everything about one batch. Composer runs logger destinations after algorithms and other callbacks, so at
``BATCH_END`` every metric of the batch has arrived; the record is written then, before the ``BATCH_CHECKPOINT``
event at which the checkpoint saver runs: every batch covered by a checkpoint is on disk before the checkpoint
exists. Metrics logged after the last batch (final timestamps) belong to no batch and are dropped. On start the file
keeps the records of batches before the resume point and drops the rest (a killed run may have written batches the
resumed run redoes), so a finished run holds exactly one record per batch. Only global rank 0 writes.

The console gets one short line per logged batch from :class:`ConsoleLine` (``loggers.console``), instead of
Composer's ConsoleLogger, which prints every scalar (``loggers.console_verbose``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Optional, TextIO

from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist
from tqdm import tqdm

__all__ = ['ConsoleLine', 'MetricsJsonlLogger', 'SampleIdRecorder', 'read_metrics']


def _scalar(value: Any) -> Optional[float]:
    if hasattr(value, 'numel'):
        if value.numel() != 1:
            return None
        value = value.detach().float().item()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return value
    try:  # numpy scalars
        return float(value)
    except (TypeError, ValueError):
        return None


class MetricsJsonlLogger(LoggerDestination):
    """Composer logger destination writing ``path`` (JSON lines, one object per batch).

    Args:
        path: the JSONL file (its folder is created).
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self._pending: dict[int, dict[str, Any]] = {}
        self._fh = None
        self._written_upto = -1  # metrics arriving for a batch already written (post-fit timestamps) are dropped

    def _record(self, step: int) -> dict[str, Any]:
        return self._pending.setdefault(int(step), {})

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        """Buffer scalar metrics under ``step`` (non-scalars are skipped)."""
        if step is None:
            return
        if step <= self._written_upto:
            return
        record = self._record(step)
        for name, value in metrics.items():
            scalar = _scalar(value)
            if scalar is not None:
                record[name] = scalar if math.isfinite(scalar) else str(scalar)

    def add_fields(self, step: int, fields: dict[str, Any]) -> None:
        """Attach extra JSON-able fields (e.g. ``sample_ids``) to the record of ``step``."""
        self._record(step).update(fields)

    def fit_start(self, state: State, logger: Logger) -> None:
        """Open the file, keeping only records of batches before the (possibly resumed) start."""
        if dist.get_global_rank() != 0:
            return
        start = state.timestamp.batch.value
        kept = []
        if start > 0 and os.path.exists(self.path):
            with open(self.path) as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    if record.get('batch', start) < start:
                        kept.append(line if line.endswith('\n') else line + '\n')
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._fh = open(self.path, 'w')
        self._fh.writelines(kept)
        self._fh.flush()
        self._pending = {k: v for k, v in self._pending.items() if k >= start}
        self._written_upto = start - 1

    def _flush(self, upto: Optional[int]) -> None:
        if self._fh is None:
            return
        for step in sorted(self._pending):
            if upto is not None and step > upto:
                break
            self._fh.write(json.dumps({'batch': step, **self._pending.pop(step)}, sort_keys=True) + '\n')
            self._written_upto = max(self._written_upto, step)
        self._fh.flush()

    def batch_end(self, state: State, logger: Logger) -> None:
        """File this event's metrics (logged under the next step) with the batch that ran, and write it."""
        done = state.timestamp.batch.value - 1  # index of the batch that just ran
        late = self._pending.pop(done + 1, None)
        if late:
            self._record(done).update({k: v for k, v in late.items() if k not in self._record(done)})
        self._flush(upto=done)

    def fit_end(self, state: State, logger: Logger) -> None:
        """Write what is left of batches that ran."""
        self._flush(upto=state.timestamp.batch.value - 1)
        self._pending.clear()

    def close(self, state: State, logger: Logger) -> None:
        """Close the file."""
        self._flush(upto=state.timestamp.batch.value - 1)
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class SampleIdRecorder(Callback):
    """Adds the global batch's ``sample_ids`` (rank 0's, then rank 1's, ...) to each ``metrics.jsonl`` record."""

    def __init__(self, destination: MetricsJsonlLogger):
        self.destination = destination

    def after_dataloader(self, state: State, logger: Logger) -> None:
        """Gather the device batches' ``sample_id`` from every rank (a collective: all ranks call it)."""
        ids = state.batch['sample_id'].tolist() if isinstance(state.batch, dict) else []
        gathered = dist.all_gather_object(ids)
        self.destination.add_fields(state.timestamp.batch.value, {'sample_ids': [i for r in gathered for i in r]})


class ConsoleLine(LoggerDestination):
    """One short console line per logged batch (global rank 0), e.g.::

        [batch 40/100] loss 3.1416 (ntp 3.1402, rlp 0.0014) | reward -2.3100 gain_vs_ema 0.0420 clip 0.031
        thought_len 12.5 trunc 0.125 | 5.2 samples/s

    (one line; the part after each ``|`` only when those metrics are logged: the RLP part needs ``rlp``, the
    throughput Composer's SpeedMonitor, after its first window). Each value is the latest logged.

    Args:
        interval: ``Nba`` (every N batches) or ``Nep`` (every N epochs); the last batch always gets a line.
        stream: where the lines go (default stdout); written through ``tqdm.write`` so a progress bar stays intact.
    """

    LOSSES = (('loss/train/ntp', 'ntp'), ('loss/train/rlp', 'rlp'))
    RLP = (
        ('rlp/reward_mean', 'reward', '.4f'),
        ('rlp/gain_vs_ema', 'gain_vs_ema', '.4f'),
        ('rlp/clip_fraction', 'clip', '.3f'),
        ('rlp/thought_len_mean', 'thought_len', '.1f'),
        ('rlp/truncation_rate', 'trunc', '.3f'),
    )
    THROUGHPUT = (
        ('throughput/tokens_per_sec', 'tokens/s'),
        ('throughput/samples_per_sec', 'samples/s'),
        ('throughput/batches_per_sec', 'batches/s'),
    )

    def __init__(self, interval: str = '1ba', stream: Optional[TextIO] = None):
        super().__init__()
        self.interval = Time.from_timestring(interval)
        if self.interval.unit not in (TimeUnit.BATCH, TimeUnit.EPOCH) or self.interval.value < 1:
            raise ValueError(f'ConsoleLine interval {interval!r}: write Nba or Nep with N >= 1')
        self.stream = stream
        self._latest: dict[str, float] = {}
        self._printed_batch = -1

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        """Keep the latest value of each scalar metric."""
        for name, value in metrics.items():
            scalar = _scalar(value)
            if scalar is not None:
                self._latest[name] = scalar

    def format_line(self, batch: int, total: Optional[int]) -> str:
        """The line for ``batch`` (1-based count of batches done) out of ``total`` (None when not in batches)."""
        m = self._latest
        head = f'[batch {batch}/{total}]' if total else f'[batch {batch}]'
        parts = [head]
        if 'loss/train/total' in m:
            parts.append(f'loss {m["loss/train/total"]:.4f}')
            inner = [f'{short} {m[key]:.4f}' for key, short in self.LOSSES if key in m]
            if inner:
                parts[-1] += f' ({", ".join(inner)})'
        line = ' '.join(parts)
        rlp = [f'{short} {m[key]:{fmt}}' for key, short, fmt in self.RLP if key in m]
        if rlp:
            line += ' | ' + ' '.join(rlp)
        for key, short in self.THROUGHPUT:
            if key in m:
                line += f' | {m[key]:.1f} {short}'
                break
        return line

    def _print(self, state: State) -> None:
        batch = int(state.timestamp.batch)
        if batch == self._printed_batch or not self._latest or dist.get_global_rank() != 0:
            return
        self._printed_batch = batch
        duration = state.max_duration
        total = int(duration.value) if duration is not None and duration.unit == TimeUnit.BATCH else None
        line = self.format_line(batch, total)
        tqdm.write(line, file=self.stream or sys.stdout)

    def batch_end(self, state: State, logger: Logger) -> None:
        """Print at every ``Nba`` interval (logger destinations run after the algorithms and callbacks, so the
        batch's RLP and throughput metrics have arrived)."""
        if self.interval.unit == TimeUnit.BATCH and int(state.timestamp.batch) % self.interval.value == 0:
            self._print(state)

    def epoch_end(self, state: State, logger: Logger) -> None:
        """Print at every ``Nep`` interval."""
        if self.interval.unit == TimeUnit.EPOCH and int(state.timestamp.epoch) % self.interval.value == 0:
            self._print(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        """The last batch always gets a line."""
        self._print(state)


def read_metrics(path: str) -> dict[int, dict[str, Any]]:
    """Records of ``metrics.jsonl`` by batch (the last record wins; cut lines are skipped)."""
    out: dict[int, dict[str, Any]] = {}
    if not os.path.exists(path):
        return out
    with open(path) as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[int(record['batch'])] = record
    return out
