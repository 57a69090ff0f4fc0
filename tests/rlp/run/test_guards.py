"""rlp.run.guards.FiniteSteps in real composer.Trainer runs (tiny Llama, CPU).

Checked: a microbatch without any next-token label makes Composer log NaN without the guard (the bug, shown) and a
finite total with it, counted, for next-token-only and RLP+NTP runs; a NaN or inf injected into the loss, into one
gradient, or into the RLP rewards (the information gain of one batch, in an RLP+NTP run) skips the optimizer step
on every parameter (the weights and Adam's moments after that batch equal those before it, bit for bit) and is
counted; too many in a row stop the run with NonFiniteError, and through ``python -m rlp.train`` (a learning rate of
1e30 makes every gradient after the first step non-finite) with exit code 1 and one line; with ntp_weight 0 no
forward runs over the whole microbatch (the NTP forward sees a 2-token stub), with ntp_weight 1 one does.
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
from rlp.run.metrics import read_metrics
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, Rows, close_biased, rlp_config, series, skipping_batch
from tests.helpers.tiny_models import build_tiny_model
from tests.helpers.training import launch, packed_samples, tiny_recipe, write_mds, write_recipe


class _Inject(Algorithm):
    """Makes the loss (``what='loss'``), one gradient (``what='grad'``) or, with ``rewards``, the RLP rewards
    (``what='reward'``) ``value`` at the given batches."""

    def __init__(self, batches, what='loss', value=float('nan'), rewards=None):
        self.batches, self.what, self.value, self.rewards = set(batches), what, value, rewards

    def match(self, event, state):
        return event in (Event.BEFORE_TRAIN_BATCH, Event.AFTER_LOSS, Event.AFTER_BACKWARD)

    def apply(self, event, state, logger):
        due = int(state.timestamp.batch) in self.batches
        if event == Event.BEFORE_TRAIN_BATCH and self.rewards is not None:
            self.rewards['value'] = self.value if due and self.what == 'reward' else None
        elif event == Event.AFTER_LOSS and self.what == 'loss' and due:
            state.loss = state.loss * self.value
        elif event == Event.AFTER_BACKWARD and self.what == 'grad' and due:
            next(p for p in state.model.parameters() if p.grad is not None).grad[0] = self.value


def _poisoned_rewards(monkeypatch):
    """Wraps the information gain (the reward) of ``rlp.step``: while ``rewards['value']`` is set, one reward is it."""
    import rlp.step

    rewards, gain = {'value': None}, rlp.step.information_gain

    def information_gain(*args, **kwargs):
        r = gain(*args, **kwargs)
        if rewards['value'] is not None:
            r = r.clone()
            r.view(-1)[0] = rewards['value']
        return r

    monkeypatch.setattr(rlp.step, 'information_gain', information_gain)
    return rewards


class _Weights(Callback):
    """The parameters and the optimizer's per-parameter state after every batch."""

    def __init__(self):
        self.after, self.moments = [], []

    def batch_end(self, state, logger):
        self.after.append({k: v.detach().clone() for k, v in state.model.named_parameters()})
        opt = state.optimizers[0].state_dict()['state']
        self.moments.append({i: {k: v.clone() for k, v in s.items()} for i, s in opt.items()})


def _fit(tokenizer, data, algorithms, duration='3ba', microbatch=8, recorder=None):
    hf = close_biased(build_tiny_model('llama', VOCAB, seed=0), CLOSE_ID, 2.0)
    model = HuggingFaceModel(hf, tokenizer=tokenizer, use_logits=True)
    logger, weights = InMemoryLogger(), recorder or _Weights()
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


@pytest.mark.parametrize(
    'what, value',
    [('loss', math.nan), ('loss', math.inf), ('grad', math.nan), ('grad', -math.inf), ('reward', math.nan),
     ('reward', math.inf)],
)  # fmt: skip
def test_nonfinite_step_is_skipped(tokenizer, monkeypatch, what, value):
    """A NaN/inf at batch 1 (of 3): counted once; weights and Adam's moments after batch 1 == after batch 0."""
    rewards = _poisoned_rewards(monkeypatch) if what == 'reward' else None
    algorithms = [RLP(rlp_config(tokenizer, ntp_weight=1.0), seed=11)] if what == 'reward' else []
    algorithms += [FiniteSteps(), _Inject({1}, what, value, rewards)]
    logger, weights, _ = _fit(tokenizer, skipping_batch(tokenizer), algorithms, recorder=(recorder := _Weights()))
    assert series(logger, 'train/nonfinite_steps') == [0.0, 1.0, 1.0]
    if what == 'reward':  # the poisoned reward reached the logged statistics, and only at batch 1
        assert [math.isfinite(v) for v in series(logger, 'rlp/reward_mean')] == [True, False, True]
    for name, w in weights[1].items():
        assert torch.equal(w, weights[0][name]), name  # batch 1 changed nothing
    for i, moments in recorder.moments[1].items():
        for k, v in moments.items():
            assert torch.equal(v, recorder.moments[0][i][k]), (i, k)  # nor the optimizer's state
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


def test_training_stops_after_max_nonfinite_steps_with_one_line(tmp_path):
    """``python -m rlp.train`` with lr 1e30: batch 0 trains (to huge weights), every later gradient is non-finite;
    with ``trainer.max_nonfinite_steps=2`` the run exits 1 after batches 1 and 2 were skipped, with exactly one
    ``rlp.train: stopped:`` line naming the count and the setting, and no traceback."""
    write_mds(str(tmp_path / 'data' / 'train'), packed_samples(24, 32, seed=3))
    recipe = tiny_recipe(streams={'web': {'local': str(tmp_path / 'data'), 'split': 'train'}}, max_duration='6ba')
    proc = launch(
        write_recipe(tmp_path / 'recipe.yaml', recipe),
        nproc=None,
        cwd=tmp_path,
        overrides=('trainer.optimizer.lr=1e30', 'trainer.max_nonfinite_steps=2'),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    stopped = [line for line in output.splitlines() if 'rlp.train: stopped' in line]
    assert len(stopped) == 1 and stopped[0].startswith('rlp.train: stopped: 2 optimizer steps in a row'), output
    assert 'trainer.max_nonfinite_steps=2' in stopped[0] and 'Traceback' not in output, output[-4000:]
    records = read_metrics(str(tmp_path / 'runs' / 'tiny' / 'metrics.jsonl'))
    assert [records[b]['train/nonfinite_steps'] for b in sorted(records)] == [0.0, 1.0][: len(records)], records
