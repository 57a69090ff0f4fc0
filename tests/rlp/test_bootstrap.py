"""rlp.bootstrap: seeded percentile intervals, against a loop reference on the same resamples.

Checked: (1) the bounds equal a reference that means each resample in a Python loop, sorts the means and
interpolates the two order statistics by hand, for several columns at once; (2) the interval of a paired difference
is the interval of the per-position differences; (3) degenerate cases: constant values give a zero-width interval,
one position gives its value, bad level / no positions are refused; (4) the same seed gives the same interval and
another seed another; (5) on 400 normal draws the 95% interval is close to mean +- 1.96 sd / sqrt(n).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlp.bootstrap import bootstrap_intervals, resample_indices


def _reference(column: list[float], idx: torch.Tensor, level: float) -> tuple[float, float]:
    means = sorted(sum(column[i] for i in row) / len(row) for row in idx.tolist())

    def quantile(q: float) -> float:
        h = (len(means) - 1) * q
        lo = math.floor(h)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (h - lo) * (means[hi] - means[lo])

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


@pytest.mark.parametrize('level', [0.95, 0.8])
def test_matches_loop_reference(level):
    gen = torch.Generator().manual_seed(4)
    values = torch.stack([torch.randn(37, generator=gen), (torch.rand(37, generator=gen) > 0.6).float()], 1)
    got = bootstrap_intervals(values, resamples=300, seed=9, level=level)
    idx = resample_indices(37, 300, 9)
    for k in range(2):
        want = _reference(values[:, k].tolist(), idx, level)
        assert got[k].tolist() == pytest.approx(want, abs=1e-12)
        assert got[k, 0] <= float(values[:, k].double().mean()) <= got[k, 1]


def test_paired_difference_is_the_interval_of_differences():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(50, generator=gen)
    b = a + 0.1 + 0.01 * torch.randn(50, generator=gen)  # b shares a's position noise
    diff = bootstrap_intervals(b - a, resamples=500, seed=2)[0]
    want = _reference((b - a).tolist(), resample_indices(50, 500, 2), 0.95)
    assert diff.tolist() == pytest.approx(want, abs=1e-12)
    separate = bootstrap_intervals(torch.stack([a, b], 1), resamples=500, seed=2)
    assert diff[1] - diff[0] < 0.1 * (separate[0, 1] - separate[0, 0])  # pairing removes the shared noise
    assert diff[0] > 0  # the shift of 0.1 is resolved


def test_degenerate_cases():
    assert bootstrap_intervals(torch.full((20,), 0.25)).tolist() == [[0.25, 0.25]]
    assert bootstrap_intervals(torch.tensor([-1.5])).tolist() == [[-1.5, -1.5]]
    with pytest.raises(ValueError, match='level'):
        bootstrap_intervals(torch.zeros(3), level=1.0)
    with pytest.raises(ValueError, match='n=0'):
        bootstrap_intervals(torch.zeros(0))


def test_seeded():
    v = torch.randn(30, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bootstrap_intervals(v, seed=5), bootstrap_intervals(v, seed=5))
    assert not torch.equal(bootstrap_intervals(v, seed=5), bootstrap_intervals(v, seed=6))


def test_normal_width():
    v = torch.randn(400, generator=torch.Generator().manual_seed(3)).double()
    lo, hi = bootstrap_intervals(v, resamples=2000, seed=0)[0].tolist()
    half = 1.96 * float(v.std()) / math.sqrt(400)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
