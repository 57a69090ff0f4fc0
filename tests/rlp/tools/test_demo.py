"""rlp.tools.demo's report: the table lists every metric for every model, and the verdict's differences are the
ones computed here from the evaluation results (the full demo runs minutes and is not part of the suite)."""

from __future__ import annotations

from rlp.tools.demo import ROWS, table, verdict


def _result(**metrics):
    base = {k: 0.0 for k in ROWS}
    return {'metrics': {**base, 'best_of_g_helps': 0.5, **metrics}}


def test_table_and_verdict():
    base = _result(gain_vs_baseline=-2.5, acc_think=0.40, nll_nothink=1.00, best_of_g_helps=0.90)
    rlp = _result(gain_vs_baseline=-2.0, acc_think=0.47, nll_nothink=1.02, best_of_g_helps=0.95)
    ntp = _result(gain_vs_baseline=-2.4, acc_think=0.44, nll_nothink=0.90)
    text = table({'base': base, 'rlp': rlp, 'ntp': ntp})
    assert text.splitlines()[0].split() == ['base', 'rlp', 'ntp'] and len(text.splitlines()) == 1 + len(ROWS)
    line = verdict(base, rlp, ntp)
    assert '+0.500 nats' in line and '+7.0 points' in line and 'NLL +0.020' in line and 'by +4.0 points' in line
    assert '95% of answers after RLP' in line and '90% before' in line
