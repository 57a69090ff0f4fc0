"""What one or more RLP steps measured: :class:`RLPStats`, sums over rollouts that add across microbatches and
ranks and give the per-batch ``rlp/...`` metrics, and :class:`ThoughtSamples`, the sampled thoughts kept for people
to read. :func:`rlp.step.rlp_loss` returns them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from rlp import dist

__all__ = ['RLPStats', 'ThoughtSamples']

_SUMS = (
    'positions',
    'rows',
    'rows_skipped',
    'rollouts',
    'reward',
    'reward_sq',
    's_pred',
    's_ema',
    'gain_ema',
    's_nothink',
    'gain_current',
    'adv_sq',
    'clip_tokens',
    'tokens',
    'kl_tokens',
    'length',
    'truncated',
    'flops_prefill',
    'flops_decode',
    'flops_teacher',
    'flops_policy',
)


@dataclass
class ThoughtSamples:
    """What one call sampled and scored, on CPU, for people to read (:mod:`rlp.run.thought_log`).

    Attributes:
        row / start / target: (P,) the positions (row of the batch, first prefix token, index of x_t).
        sample_keys: the batch's row keys (sample ids as strings).
        tokens: (P, G, T) thought tokens; lengths (P, G); truncated (P, G) bool.
        rewards / s_pred / advantages: (P, G); s_ema: (P,).
    """

    row: torch.Tensor
    start: torch.Tensor
    target: torch.Tensor
    sample_keys: list[str]
    tokens: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    rewards: torch.Tensor
    s_pred: torch.Tensor
    s_ema: torch.Tensor
    advantages: torch.Tensor


@dataclass
class RLPStats:
    """Sums over rollouts (and tokens) of one or more RLP calls; ``+`` merges microbatches, ``all_reduce`` ranks.

    The per-rollout means are in :meth:`metrics`. Sums are floats so that they add exactly across calls.
    ``samples`` (only when asked for) is not merged.
    """

    positions: float = 0.0
    rows: float = 0.0
    rows_skipped: float = 0.0
    rollouts: float = 0.0
    reward: float = 0.0
    reward_sq: float = 0.0
    s_pred: float = 0.0
    s_ema: float = 0.0
    gain_ema: float = 0.0
    s_nothink: float = 0.0
    gain_current: float = 0.0
    adv_sq: float = 0.0
    clip_tokens: float = 0.0
    tokens: float = 0.0
    kl_tokens: float = 0.0
    length: float = 0.0
    truncated: float = 0.0
    flops_prefill: float = 0.0
    flops_decode: float = 0.0
    flops_teacher: float = 0.0
    flops_policy: float = 0.0
    ratio_min: float = math.inf
    ratio_max: float = -math.inf
    len_max: float = 0.0
    samples: Optional[ThoughtSamples] = dataclasses.field(default=None, compare=False, repr=False)

    def __add__(self, other: 'RLPStats') -> 'RLPStats':
        sums = {k: getattr(self, k) + getattr(other, k) for k in _SUMS}
        return RLPStats(
            **sums,
            ratio_min=min(self.ratio_min, other.ratio_min),
            ratio_max=max(self.ratio_max, other.ratio_max),
            len_max=max(self.len_max, other.len_max),
        )

    def all_reduce(self) -> 'RLPStats':
        """Sums over all ranks, extremes over all ranks (collective: every rank must call it); identity on one."""
        sums = dist.all_reduce([getattr(self, k) for k in _SUMS])
        ext = dist.all_reduce([-self.ratio_min, self.ratio_max, self.len_max], op='max')
        return RLPStats(**dict(zip(_SUMS, sums)), ratio_min=-ext[0], ratio_max=ext[1], len_max=ext[2])

    def metrics(self) -> dict[str, float]:
        """Per-batch ``rlp/...`` metrics (means per rollout or per token); a batch without positions gives zeros."""
        n, tok = max(self.rollouts, 1.0), max(self.tokens, 1.0)
        mean_r = self.reward / n
        has = self.rollouts > 0
        return {
            'rlp/reward_mean': mean_r,
            'rlp/reward_std': math.sqrt(max(self.reward_sq / n - mean_r**2, 0.0)),
            'rlp/s_pred': self.s_pred / n,
            'rlp/s_ema': self.s_ema / n,
            'rlp/gain_vs_ema': self.gain_ema / n,
            'rlp/s_nothink_current': self.s_nothink / n,
            'rlp/gain_vs_current': self.gain_current / n,
            'rlp/advantage_std': math.sqrt(self.adv_sq / n),
            'rlp/clip_fraction': self.clip_tokens / tok,
            'rlp/approx_kl': self.kl_tokens / tok,
            'rlp/ratio_min': self.ratio_min if has else 1.0,
            'rlp/ratio_max': self.ratio_max if has else 1.0,
            'rlp/thought_len_mean': self.length / n,
            'rlp/thought_len_max': self.len_max,
            'rlp/truncation_rate': self.truncated / n,
            'rlp/positions': self.positions,
            'rlp/positions_per_row': self.positions / max(self.rows, 1.0),
            'rlp/rows_skipped': self.rows_skipped,
            'rlp/flops_rollout_prefill': self.flops_prefill,
            'rlp/flops_rollout_decode': self.flops_decode,
            'rlp/flops_teacher': self.flops_teacher,
            'rlp/flops_policy': self.flops_policy,
        }

    @property
    def flops(self) -> float:
        """Model FLOPs of the RLP part of the step (:mod:`rlp.flops`): rollouts, teacher, policy fwd + bwd."""
        return self.flops_prefill + self.flops_decode + self.flops_teacher + self.flops_policy
