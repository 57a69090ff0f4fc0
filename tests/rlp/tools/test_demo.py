"""rlp.tools.demo's report (the full demo runs minutes and is not part of the suite).

Checked: the table lists every metric with its interval for every model, plus the extra rows; the verdict's
differences are the paired differences of the per-position values and a difference is claimed ('better' /
'worse') only when its 95% interval excludes 0, in the right direction for each metric (lower NLL is better);
'thinking helps' reads the paired accuracy difference within a model; CPT's matched batch count rounds FLOPs.
"""

from __future__ import annotations

import pytest
import torch

from rlp.tools.demo import ROWS, matched_batches, table, verdict
from rlp.tools.evaluate import intervals

KEYS = [[i, 5] for i in range(200)]


def _result(seed: int, shift: dict[str, float]) -> dict:
    """An rlp eval --json-like result: per-position values (200 positions), their means and intervals."""
    from rlp.tools.evaluate import EvalSettings

    gen = torch.Generator().manual_seed(seed)
    common = torch.Generator().manual_seed(99)  # position effects shared by every model (what pairing removes)
    per = {}
    for key in ROWS:
        shared = torch.randn(200, generator=common)
        per[key] = shared + 0.05 * torch.randn(200, generator=gen) + shift.get(key, 0.0)
    per['acc_think'] = (torch.rand(200, generator=gen) < 0.4 + shift.get('acc_think', 0.0)).float()
    per['acc_nothink'] = (torch.rand(200, generator=gen) < 0.6).float()
    settings = EvalSettings(seed=0, resamples=500)
    return {
        'model': f'm{seed}',
        'settings': {**settings.__dict__, 'after': []},
        'metrics': {k: float(v.mean()) for k, v in per.items()},
        'intervals': intervals(per, settings),
        'positions_keys': KEYS,
        'per_position': {k: v.tolist() for k, v in per.items()},
    }


def test_table_has_every_metric_and_interval():
    results = {'base': _result(0, {}), 'rlp': _result(1, {})}
    text = table(results, {'train FLOPs': {'rlp': '1e9'}})
    lines = text.splitlines()
    assert lines[0].split() == ['base', 'rlp'] and len(lines) == 1 + len(ROWS) + 1
    lo, hi = results['rlp']['intervals']['nll_nothink']
    assert f'[{lo:.3f},{hi:.3f}]' in lines[1 + ROWS.index('nll_nothink')]
    assert lines[-1].split()[-1] == '1e9' and lines[-1].split()[-2] == '-'


def test_verdict_claims_only_outside_the_interval():
    base = _result(0, {})
    cpt = _result(1, {'nll_nothink': -0.3})  # clearly lower no-think NLL than base (pairing removes shared noise)
    rlp = _result(2, {'gain_vs_baseline': 0.5, 'nll_nothink': 0.0})
    lines = verdict({'base': base, 'rlp': rlp, 'cpt': cpt})
    vs_cpt = next(line for line in lines if line.startswith('rlp vs cpt'))
    vs_base = next(line for line in lines if line.startswith('rlp vs base'))
    parts = dict(p.split(' ', 1) for p in vs_cpt.split(': ', 1)[1].split('; '))
    assert parts['gain_vs_baseline'].startswith('+0.4') and parts['gain_vs_baseline'].endswith('better')
    assert parts['acc_think'].endswith('no resolved difference')  # both draw accuracy 0.4
    nll = parts['nll_nothink']
    assert nll.startswith('+0.3') and nll.endswith('worse')  # higher NLL than CPT: worse
    assert 'nll_nothink' in vs_base and 'no resolved difference' in vs_base.split('nll_nothink')[1]
    diff = torch.tensor(rlp['per_position']['gain_vs_baseline']) - torch.tensor(
        base['per_position']['gain_vs_baseline']
    )
    assert f'{float(diff.mean()):+.3f}' in vs_base
    thinking = lines[-1]
    assert thinking.count('hurts') == 3  # accuracy 0.4 with a thought against 0.6 without, in every model


def test_matched_batches():
    assert matched_batches(10.0, 3.0) == 3 and matched_batches(1.0, 5.0) == 1 and matched_batches(11.0, 2.0) == 6
    with pytest.raises(ValueError):
        matched_batches(1.0, 0.0)
