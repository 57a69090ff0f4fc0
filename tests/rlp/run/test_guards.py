"""rlp.run.guards.FiniteSteps in real composer.Trainer runs (tiny Llama, CPU).

Checked: a microbatch without any next-token label makes Composer log NaN without the guard (the bug, shown) and a
finite total with it, counted, for next-token-only and RLP+NTP runs; an injected NaN loss or NaN gradient skips the
optimizer step on every parameter (the weights after that batch equal those before it, bit for bit) and is
counted; too many in a row stop the run with NonFiniteError; with ntp_weight 0 no forward runs over the whole
microbatch (the NTP forward sees a 2-token stub), with ntp_weight 1 one does.
"""

from __future__ import annotations

import math

import pytest
import torch
from composer import Trainer
from composer.core import Algorithm, Callback, Event
from composer.loggers import InMemoryLogger
from composer.models import HuggingFaceModel

from rlp.run.algorithm import RLP
from rlp.run.guards import FiniteSteps, NonFiniteError
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, Rows, close_biased, rlp_config, series, skipping_batch
from tests.helpers.tiny_models import build_tiny_model


class _Inject(Algorithm):
    """Makes the loss (``what='loss'``) or one gradient (``what='grad'``) NaN at the given batches."""

    def __init__(self, batches, what='loss'):
        self.batches, self.what = set(batches), what

    def match(self, event, state):
        return event in (Event.AFTER_LOSS, Event.AFTER_BACKWARD) and int(state.timestamp.batch) in self.batches

    def apply(self, event, state, logger):
        if event == Event.AFTER_LOSS and self.what == 'loss':
            state.loss = state.loss * float('nan')
        elif event == Event.AFTER_BACKWARD and self.what == 'grad':
            next(p for p in state.model.parameters() if p.grad is not None).grad[0] = float('nan')


class _Weights(Callback):
    def __init__(self):
        self.after = []

    def batch_end(self, state, logger):
        self.after.append({k: v.detach().clone() for k, v in state.model.named_parameters()})


def _fit(tokenizer, data, algorithms, duration='3ba', microbatch=8):
    hf = close_biased(build_tiny_model('llama', VOCAB, seed=0), CLOSE_ID, 2.0)
    model = HuggingFaceModel(hf, tokenizer=tokenizer, use_logits=True)
    logger, weights = InMemoryLogger(), _Weights()
    trainer = Trainer(
        model=model,
        train_dataloader=torch.utils.data.DataLoader(Rows(data), batch_size=8, shuffle=False),
        max_duration=duration,
        optimizers=torch.optim.Adam(model.parameters(), lr=1e-2),
        algorithms=algorithms,
        loggers=[logger],
        callbacks=[weights],
        device='cpu',
        device_train_microbatch_size=microbatch,
        progress_bar=False,
        log_to_console=False,
        seed=3,
    )
    trainer.fit()
    return logger, weights.after, hf


def _unlabelled_row(tokenizer, row=3):
    data = skipping_batch(tokenizer, skip_rows=())
    data['labels'][row, 1:] = -100  # nothing to predict after the shift: a one-token sample
    return data


def test_microbatch_without_labels_is_nan_without_the_guard(tokenizer):
    logger, _, _ = _fit(tokenizer, _unlabelled_row(tokenizer), [], duration='1ba', microbatch=1)
    assert math.isnan(series(logger, 'loss/train/total')[0])


@pytest.mark.parametrize('with_rlp', [False, True])
def test_microbatch_without_labels_contributes_a_counted_zero(tokenizer, with_rlp):
    algorithms = [RLP(rlp_config(tokenizer, ntp_weight=1.0), seed=11)] if with_rlp else []
    logger, weights, _ = _fit(tokenizer, _unlabelled_row(tokenizer), algorithms + [FiniteSteps()], microbatch=1)
    assert all(math.isfinite(v) for v in series(logger, 'loss/train/total'))
    assert series(logger, 'train/ntp_empty_microbatches') == [1.0, 2.0, 3.0]
    assert series(logger, 'train/nonfinite_steps') == [0.0, 0.0, 0.0]
    assert all(torch.isfinite(w).all() for w in weights[-1].values())


@pytest.mark.parametrize('what', ['loss', 'grad'])
def test_nonfinite_step_is_skipped(tokenizer, what):
    logger, weights, _ = _fit(tokenizer, skipping_batch(tokenizer), [FiniteSteps(), _Inject({1}, what)])
    assert series(logger, 'train/nonfinite_steps') == [0.0, 1.0, 1.0]
    for name, w in weights[1].items():
        assert torch.equal(w, weights[0][name]), name  # batch 1 changed nothing
    assert any(not torch.equal(w, weights[1][n]) for n, w in weights[2].items())  # batch 2 trained again
    assert all(torch.isfinite(w).all() for w in weights[2].values())


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tokenizer):
    with pytest.raises(NonFiniteError, match='2 optimizer steps in a row'):
        _fit(tokenizer, skipping_batch(tokenizer), [FiniteSteps(max_consecutive=2), _Inject({0, 1, 2})])


@pytest.mark.parametrize('ntp_weight', [0.0, 1.0])
def test_ntp_forward_runs_only_when_weighted(tokenizer, ntp_weight):
    """Forward calls of the HF model whose input is the whole microbatch (8 rows x 48 tokens)."""
    data = skipping_batch(tokenizer)
    shapes = []
    hf = close_biased(build_tiny_model('llama', VOCAB, seed=0), CLOSE_ID, 2.0)
    hf.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs['input_ids'].shape)), with_kwargs=True
    )
    model = HuggingFaceModel(hf, tokenizer=tokenizer, use_logits=True)
    Trainer(
        model=model,
        train_dataloader=torch.utils.data.DataLoader(Rows(data), batch_size=8, shuffle=False),
        max_duration='1ba',
        optimizers=torch.optim.SGD(model.parameters(), lr=0.1),
        algorithms=[RLP(rlp_config(tokenizer, ntp_weight=ntp_weight), seed=11), FiniteSteps()],
        device='cpu',
        progress_bar=False,
        log_to_console=False,
    ).fit()
    assert shapes.count((8, 48)) == (1 if ntp_weight else 0)
    assert (1, 2) in shapes if ntp_weight == 0 else (1, 2) not in shapes
