"""Checks `metrics.jsonl` against what a real Composer Trainer logs: one record per batch with the batch index and
Composer's metric names (`loss/train/total`, and `loss/train/<part>` for a dict loss), metrics logged at
BATCH_END filed under the batch that ran, the record of every checkpointed batch on disk before the checkpoint,
and a resumed run keeping exactly the records before its start point; the console line per logged batch against the
same run's records."""

from __future__ import annotations

import io
import json

import torch
from composer.core import Algorithm, Callback, Event

from rlp.run.metrics import ConsoleLine, MetricsJsonlLogger, read_metrics

VOCAB = 64


class SplitLoss(Algorithm):
    """Turns the loss into {'total', 'ntp', 'rlp'} like the RLP algorithm, and logs a metric at BATCH_END."""

    def match(self, event, state):
        return event in (Event.AFTER_LOSS, Event.BATCH_END)

    def apply(self, event, state, logger):
        if event == Event.AFTER_LOSS:
            state.loss = {'total': state.loss * 1.0, 'ntp': state.loss.detach(), 'rlp': torch.zeros(())}
        else:
            logger.log_metrics({'rlp/after_step': float(state.timestamp.batch.value)})


class CheckpointProbe(Callback):
    """At each BATCH_CHECKPOINT records which batches metrics.jsonl holds. Composer runs logger destinations
    first and its checkpoint saver last, so this sees exactly what is on disk when a checkpoint is written."""

    def __init__(self, path):
        self.path, self.seen = path, {}

    def batch_checkpoint(self, state, logger):
        self.seen[state.timestamp.batch.value] = sorted(read_metrics(self.path))


def _fit(tmp_path, max_duration, load_path=None, algorithms=(), callbacks=(), loggers=()):
    from composer import Trainer
    from composer.models import HuggingFaceModel
    from torch.utils.data import DataLoader

    from tests.helpers.tiny_models import build_tiny_model

    gen = torch.Generator().manual_seed(0)
    data = [{'input_ids': ids, 'labels': ids.clone()} for ids in torch.randint(0, VOCAB, (32, 8), generator=gen)]
    path = str(tmp_path / 'out' / 'metrics.jsonl')
    model = HuggingFaceModel(build_tiny_model('llama', VOCAB), use_logits=True)
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(data, batch_size=2),
        max_duration=max_duration,
        optimizers=torch.optim.SGD(model.parameters(), lr=0.01),
        device='cpu',
        run_name='m',
        loggers=[MetricsJsonlLogger(path), *loggers],
        algorithms=list(algorithms),
        callbacks=list(callbacks),
        progress_bar=False,
        save_folder=str(tmp_path / 'ck'),
        save_interval='2ba',
        load_path=load_path,
        seed=1,
    )
    trainer.fit()
    trainer.close()
    return path


def test_one_record_per_batch_with_composer_names(tmp_path):
    """5 batches -> records 0..4 in order; each has the dict-loss names; BATCH_END metrics carry their batch."""
    path = _fit(tmp_path, '5ba', algorithms=[SplitLoss()])
    lines = [json.loads(line) for line in open(path)]
    assert [r['batch'] for r in lines] == [0, 1, 2, 3, 4]
    for r in lines:
        assert {'loss/train/total', 'loss/train/ntp', 'loss/train/rlp'} <= set(r)
        assert r['rlp/after_step'] == r['batch'] + 1  # logged after the counter moved, filed under its batch


def test_records_written_before_checkpoint(tmp_path):
    """When the ba2 checkpoint is taken, records 0 and 1 are already on disk (the flush precedes the saver)."""
    path = str(tmp_path / 'out' / 'metrics.jsonl')
    probe = CheckpointProbe(path)
    _fit(tmp_path, '4ba', callbacks=[probe])
    assert trainer_order_ok(tmp_path)
    assert probe.seen == {1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [0, 1, 2, 3]}
    assert sorted(read_metrics(path)) == [0, 1, 2, 3]


def trainer_order_ok(tmp_path) -> bool:
    """The checkpoints the probe's timestamps refer to exist (ba2, ba4)."""
    return all((tmp_path / 'ck' / f'ep0-ba{b}-rank0.pt').exists() for b in (2, 4))


def test_resume_keeps_records_before_start(tmp_path):
    """A killed run wrote batches 0..5 (and a cut line); resuming from ba4 keeps 0..3 and rewrites 4..7."""
    _fit(tmp_path, '4ba')
    path = tmp_path / 'out' / 'metrics.jsonl'
    before = read_metrics(str(path))
    with open(path, 'a') as fh:
        fh.write(json.dumps({'batch': 4, 'loss/train/total': -1.0}) + '\n')
        fh.write(json.dumps({'batch': 5, 'loss/train/total': -1.0}) + '\n{"batch": 6, "lo')
    _fit(tmp_path, '8ba', load_path=str(tmp_path / 'ck' / 'ep0-ba4-rank0.pt'))
    lines = [json.loads(line) for line in open(path)]
    assert [r['batch'] for r in lines] == list(range(8))
    assert all(lines[i] == before[i] for i in range(4))
    assert all(r['loss/train/total'] > 0 for r in lines)


def test_console_line_per_logged_batch(tmp_path):
    """A real Trainer, 5 batches, ConsoleLine every 2 batches: exactly three lines (batches 2 and 4, and the last
    batch at fit end), each ``[batch i/5] loss T (ntp N, rlp R)`` with the values metrics.jsonl holds for that
    batch; the metric logged under another name (rlp/after_step) is not printed."""
    stream = io.StringIO()
    path = _fit(tmp_path, '5ba', algorithms=[SplitLoss()], loggers=[ConsoleLine('2ba', stream=stream)])
    records = read_metrics(path)
    expected = [
        f'[batch {i + 1}/5] loss {records[i]["loss/train/total"]:.4f} (ntp {records[i]["loss/train/ntp"]:.4f}, '
        f'rlp {records[i]["loss/train/rlp"]:.4f})'
        for i in (1, 3, 4)
    ]
    assert stream.getvalue().splitlines() == expected


def test_console_line_names_the_rlp_metrics_and_throughput():
    """With RLP and SpeedMonitor metrics logged, the line shows reward, gain vs EMA, clip fraction, thought length,
    truncation rate and tokens/s (preferred over samples/s), in that order, and no other metric."""
    line = ConsoleLine('1ba')
    line.log_metrics(
        {
            'loss/train/total': torch.tensor(3.14159),
            'loss/train/rlp': 0.00123,
            'rlp/reward_mean': -2.31,
            'rlp/gain_vs_ema': 0.042,
            'rlp/gain_vs_current': 9.9,
            'rlp/clip_fraction': 0.03125,
            'rlp/thought_len_mean': 12.5,
            'rlp/truncation_rate': 0.125,
            'throughput/samples_per_sec': 5.2,
            'throughput/tokens_per_sec': 1331.2,
            'lr-DecoupledAdamW/group0': 1e-6,
        }
    )
    assert line.format_line(40, 100) == (
        '[batch 40/100] loss 3.1416 (rlp 0.0012) | reward -2.3100 gain_vs_ema 0.0420 clip 0.031 thought_len 12.5 '
        'trunc 0.125 | 1331.2 tokens/s'
    )
    assert line.format_line(40, None).startswith('[batch 40] loss 3.1416')
