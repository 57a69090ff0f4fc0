"""Seeded percentile-bootstrap intervals over evaluation positions (pure functions; ``rlp eval`` uses them).

For per-position values ``v`` (P, K) (K metrics, each the mean over positions of a per-position value), draw
``B`` resamples of the P positions with replacement, ``idx`` (B, P) from a generator seeded with ``seed``; the
resampled means are ``m_b = mean_i v[idx[b, i]]`` (B, K) and the interval at ``level`` is the pair of quantiles
``(1 - level) / 2`` and ``(1 + level) / 2`` of ``m_b`` (linear interpolation between order statistics, as
``torch.quantile``). For two models evaluated at the same positions (same data, seed and settings), the interval of
the difference is the same computation on the paired differences ``v_a - v_b``: position-level noise that both
share cancels, which makes it much narrower than the two separate intervals suggest.
"""

from __future__ import annotations

import torch

__all__ = ['DEFAULT_RESAMPLES', 'bootstrap_intervals', 'resample_indices']

DEFAULT_RESAMPLES = 2000


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> torch.Tensor:
    """(resamples, n) int64 indices in [0, n), drawn with replacement from ``torch.Generator().manual_seed(seed)``."""
    if n < 1 or resamples < 1:
        raise ValueError(f'bootstrap needs n >= 1 positions and resamples >= 1, got n={n}, resamples={resamples}')
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (resamples, n), generator=gen)


def bootstrap_intervals(
    values: torch.Tensor, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95
) -> torch.Tensor:
    """(K, 2) lower and upper bounds of the mean of each column of ``values`` (P, K) (or (P,) -> (1, 2)).

    The same ``seed`` gives the same resamples for every call with the same P, so the columns (and two models at
    the same positions) are resampled together.
    """
    if not 0 < level < 1:
        raise ValueError(f'level must be in (0, 1), got {level}')
    idx = resample_indices(int(values.shape[0]), resamples, seed)
    v = values.double().reshape(values.shape[0], -1)
    means = v[idx].mean(1)  # (B, K)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return torch.quantile(means, q, dim=0).T.contiguous()
