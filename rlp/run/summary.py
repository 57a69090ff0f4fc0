"""The summary ``rlp.train`` prints at the end of a run, read from its ``metrics.jsonl``: first vs last quarter of
each loss and reward, what the reward trend says, and where the files are."""

from __future__ import annotations

import os
from typing import Any, Optional

from rlp.run.metrics import read_metrics
from rlp.run.recipe_checks import shown_location

__all__ = ['summarize']


def _trend(records: list[dict[str, Any]], key: str) -> Optional[tuple[float, float, int]]:
    values = [r[key] for r in records if isinstance(r.get(key), int | float)]
    if not values:
        return None
    k = max(1, len(values) // 4)
    return sum(values[:k]) / k, sum(values[-k:]) / k, len(values)


def _verdict(ema: Optional[tuple], current: Optional[tuple]) -> list[str]:
    """What the reward trend says, read from the gain against the EMA teacher; a warning when the gain against the
    current model rises while the gain against the EMA falls (the policy games the reward by damaging its own
    no-think prediction: typical of a learning rate that is too high)."""
    if ema is None:
        return []
    first, last, _ = ema
    trend = 'rose' if last > first else 'did not rise'
    level = 'thoughts help' if last > 0 else 'a thought still costs more than it gains'
    lines = [f'  the reward against the EMA teacher {trend}: rlp/gain_vs_ema {first:.4f} -> {last:.4f} '
             f'(first -> last quarter; {level})']  # fmt: skip
    if current is not None and current[1] > current[0] and last < first:
        lines.append(
            f'  WARNING: rlp/gain_vs_current rose ({current[0]:.4f} -> {current[1]:.4f}) while rlp/gain_vs_ema '
            f'fell: the policy is degrading its own no-think prediction; lower the learning rate or add NTP loss'
        )
    return lines


def summarize(output_dir: str, seconds: Optional[float] = None, save_folder: Optional[str] = None) -> str:
    """Human summary of a run from its ``metrics.jsonl``: first vs last quarter of each loss and reward, and where
    the files are (metrics, thoughts, resolved config, and the checkpoints when ``save_folder`` is given)."""
    metrics_path = os.path.join(output_dir, 'metrics.jsonl')
    records = [r for _, r in sorted(read_metrics(metrics_path).items()) if 'loss/train/total' in r]
    lines = [f'== rlp.train summary: {len(records)} batches' + (f' in {seconds:.0f} s' if seconds else '')]
    keys = sorted({k for r in records for k in r})
    wanted = [k for k in keys if k.startswith('loss/train/')]
    wanted += [k for k in keys if ('reward' in k or 'gain' in k or 's_ema' in k or 's_pred' in k) and k not in wanted]
    for key in wanted:
        trend = _trend(records, key)
        if trend:
            first, last, n = trend
            lines.append(f'  {key:40s} first quarter {first: .4f} -> last quarter {last: .4f}  ({n} values)')
    lines += _verdict(_trend(records, 'rlp/gain_vs_ema'), _trend(records, 'rlp/gain_vs_current'))
    lines.append(f'  metrics (one JSON object per batch): {os.path.abspath(metrics_path)}')
    thoughts = os.path.join(output_dir, 'thoughts.jsonl')
    if os.path.exists(thoughts):
        lines.append(f'  sampled thoughts: {os.path.abspath(thoughts)}')
    lines.append(f'  resolved config: {os.path.abspath(os.path.join(output_dir, "resolved_config.yaml"))}')
    if save_folder is not None:
        lines.append(f'  checkpoints: {shown_location(save_folder)}')
    return '\n'.join(lines)
