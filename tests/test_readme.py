"""The README's "Without Composer" snippet, run as written (tiny Llama, bundled tokenizer, synthetic batches).

Checked: the snippet's code block, taken from README.md and executed with the names it expects (``cfg``, ``model``,
``tokenizer``, ``loader``, ``opt``, ``seed``), trains with ``positions.strategy: after`` (the positions need the
``after`` texts resolved into the template): every step has positions and thoughts, its printed metrics are
finite, the policy's weights move and the EMA teacher follows them (one update per step).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from rlp.config import RLPConfig
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, close_biased, packed_batch
from tests.helpers.tiny_models import build_tiny_model

README = Path(__file__).resolve().parents[1] / 'README.md'


def _without_composer_snippet() -> str:
    """The first ```python block after the README's "**Without Composer**" paragraph."""
    text = README.read_text(encoding='utf-8')
    start = text.index('**Without Composer**')
    match = re.compile(r'```python\n(.*?)```', re.S).search(text, start)
    assert match is not None, 'README: no python block after "Without Composer"'
    return match.group(1)


def test_without_composer_snippet_trains_with_after_positions(tokenizer):
    """Two steps of the snippet on batches with '=' answers: positions found, metrics finite, weights and EMA move."""
    assert tokenizer.convert_tokens_to_ids('</think>') == CLOSE_ID
    cfg = RLPConfig.from_dict(
        {
            'positions': {'strategy': 'after', 'after': ['='], 'min_context': 4},
            'rollouts': {'group_size': 3, 'max_thought_tokens': 4, 'temperature': 1.0},
            'teacher': {'tau': 0.5},
        }
    )
    model = close_biased(build_tiny_model('llama', VOCAB, seed=0), CLOSE_ID, 2.0).train()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    printed: list[dict[str, float]] = []
    names = {
        'cfg': cfg,
        'model': model,
        'tokenizer': tokenizer,
        'loader': [packed_batch(tokenizer, 4, 48, seed=s) for s in (0, 1)],
        'opt': torch.optim.SGD(model.parameters(), lr=0.5),
        'seed': 3,
        'print': printed.append,
    }
    exec(compile(_without_composer_snippet(), str(README), 'exec'), names)

    assert len(printed) == 2
    for metrics in printed:
        assert metrics['rlp/positions'] > 0 and metrics['rlp/thought_len_mean'] >= 1
        assert all(math.isfinite(v) for v in metrics.values()), metrics
    moved = max(float((p - start[k]).abs().max()) for k, p in model.named_parameters())
    assert moved > 1e-4
    teachers = names['teachers']
    assert teachers.updates == 2
    ema = dict(teachers.ema.module.named_parameters())
    assert any(not torch.equal(ema[k], start[k]) for k in start)
