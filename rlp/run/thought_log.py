"""A JSONL of sampled thoughts for people to read: every N batches, a few (context tail, thought, target, reward).

One JSON object per line::

    {"batch": 12, "sample_id": 4031, "target_index": 377, "rollout": 0, "context": "...tail of the prefix",
     "thought": "decoded thought, closing tag included", "target": " 4", "reward": -1.73, "s_pred": -3.1,
     "s_ema": -1.4, "advantage": 0.52, "length": 9, "truncated": false}

Written by global rank 0 only, appended (a resumed run continues the same file).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch

from rlp.config import ThoughtLogConfig
from rlp.stats import ThoughtSamples

__all__ = ['ThoughtLog']


class ThoughtLog:
    """Collects rows during a batch and appends them to ``cfg.path`` at the batch's end."""

    def __init__(self, cfg: ThoughtLogConfig) -> None:
        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []
        self.written = 0

    def due(self, batch_index: int, rank: int = 0) -> bool:
        """True when this batch's thoughts should be recorded (path set, every N-th batch, rank 0)."""
        return self.cfg.path is not None and rank == 0 and batch_index % self.cfg.every_n_batches == 0

    def reset(self) -> None:
        """Drop rows collected for the current batch (called at its start; auto-microbatching may rerun it)."""
        self.rows = []

    def collect(self, tokenizer: Any, batch_index: int, input_ids: torch.Tensor, samples: ThoughtSamples) -> None:
        """Add up to ``max_rows`` rows (first thought of each position first) from one microbatch's samples."""
        room = self.cfg.max_rows - len(self.rows)
        if room <= 0:
            return
        p, g = samples.lengths.shape
        order = [(i, j) for j in range(g) for i in range(p)][:room]
        ids = input_ids.detach().cpu()
        keys = samples.sample_keys
        for i, j in order:
            r, s, t = int(samples.row[i]), int(samples.start[i]), int(samples.target[i])
            context = tokenizer.decode(ids[r, s:t].tolist())
            context = '' if self.cfg.context_chars == 0 else context[-self.cfg.context_chars :]
            n = int(samples.lengths[i, j])
            self.rows.append(
                {
                    'batch': batch_index,
                    'sample_id': int(keys[r]) if keys[r].isdigit() else keys[r],
                    'target_index': t,
                    'rollout': j,
                    'context': context,
                    'thought': tokenizer.decode(samples.tokens[i, j, :n].tolist()),
                    'target': tokenizer.decode([int(ids[r, t])]),
                    'reward': float(samples.rewards[i, j]),
                    's_pred': float(samples.s_pred[i, j]),
                    's_ema': float(samples.s_ema[i]),
                    'advantage': float(samples.advantages[i, j]),
                    'length': n,
                    'truncated': bool(samples.truncated[i, j]),
                }
            )

    def flush(self) -> Optional[int]:
        """Append the collected rows to the file; returns how many were written (None when disabled)."""
        if self.cfg.path is None or not self.rows:
            self.rows = []
            return None
        folder = os.path.dirname(self.cfg.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(self.cfg.path, 'a', encoding='utf-8') as f:
            for r in self.rows:
                f.write(json.dumps(r, ensure_ascii=False) + '\n')
        n = len(self.rows)
        self.written += n
        self.rows = []
        return n
