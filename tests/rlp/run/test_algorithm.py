"""rlp.run.algorithm.RLP inside a real composer.Trainer on CPU (tiny Llama, bundled tokenizer, in-memory batches).

Checked: metrics are logged and move over a few steps of training; the loss dict {'total','ntp','rlp'} reaches
Composer; gradient accumulation gives the same update for 1 microbatch of 8 rows as for 8 of 1 (with rows that
have no eligible position, pure RLP and mixed with NTP), compared parameter by parameter; a batch without any
eligible position is a counted skip with a finite zero RLP loss; a run resumed from a checkpoint ends with the
same weights and teacher as the uninterrupted run (keyed draws + teacher in the checkpoint); the thought JSONL;
the algorithm state is tensors/scalars only; a state written with another seed is refused.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from composer import Trainer
from composer.loggers import InMemoryLogger
from composer.models import HuggingFaceModel

from rlp.config import RLPConfig
from rlp.run.algorithm import RLP
from rlp.strictcfg import ConfigError
from tests.helpers.rlp_batches import (
    CLOSE_ID,
    VOCAB,
    Rows,
    close_biased,
    rlp_config,
    rlp_trainer,
    series,
    skipping_batch,
)
from tests.helpers.tiny_models import build_tiny_model


def test_trainer_runs_logs_metrics_that_move(tokenizer, tmp_path):
    """A few Adam steps of pure RLP (ntp_weight 0): every rlp/ metric is logged per batch and finite (no NTP loss is
    logged: none is computed), the reward changes across batches, the EMA is updated each batch, and the thought
    JSONL holds readable rows."""
    data = skipping_batch(tokenizer, rows=32, skip_rows=(1,))
    trainer, algo, logger, _ = rlp_trainer(
        tokenizer, data, rlp_config(tokenizer, tmp_path), duration='4ba', optimizer='adam', lr=3e-2
    )
    trainer.fit()
    for key in (
        'rlp/reward_mean',
        'rlp/reward_std',
        'rlp/s_pred',
        'rlp/s_ema',
        'rlp/gain_vs_ema',
        'rlp/gain_vs_current',
        'rlp/advantage_std',
        'rlp/clip_fraction',
        'rlp/ratio_min',
        'rlp/ratio_max',
        'rlp/thought_len_mean',
        'rlp/thought_len_max',
        'rlp/truncation_rate',
        'rlp/positions',
        'rlp/rows_skipped',
        'loss/train/rlp',
        'loss/train/total',
    ):
        values = series(logger, key)
        assert len(values) == 4, key
        assert all(torch.isfinite(torch.tensor(values))), (key, values)
    rewards = series(logger, 'rlp/reward_mean')
    assert len(set(rewards)) == 4, rewards
    assert series(logger, 'rlp/rows_skipped')[0] == 1  # row 1 of the first batch is all EOS
    assert series(logger, 'rlp/ema_updates') == [1, 2, 3, 4]
    lengths = series(logger, 'rlp/thought_len_mean')
    assert all(1 <= v <= 6 for v in lengths)
    # ntp_weight 0: no NTP forward worth reporting (it runs on a 2-token stub), the total is the RLP term alone
    assert 'loss/train/ntp' not in logger.data
    torch.testing.assert_close(
        torch.tensor(series(logger, 'loss/train/total')), torch.tensor(series(logger, 'loss/train/rlp'))
    )
    rows = [json.loads(line) for line in (tmp_path / 'thoughts.jsonl').read_text().splitlines()]
    assert len(rows) == 16 and {r['batch'] for r in rows} == {0, 1, 2, 3}
    assert {'context', 'thought', 'target', 'reward', 'advantage', 'truncated'} <= set(rows[0])
    assert algo.totals['batches'] == 4 and algo.totals['positions'] > 0


@pytest.mark.parametrize('loss', [{}, {'ntp_weight': 0.3, 'rlp_weight': 2.0}])
def test_gradient_accumulation_one_by_eight_equals_eight_by_one(tokenizer, loss):
    """One SGD step on 8 rows (2 without any eligible position): microbatch 8 and microbatch 1 give the same
    updated parameters (the RLP normaliser is the whole batch's rollout count, Composer's scaling undone)."""
    data = skipping_batch(tokenizer)
    cfg = rlp_config(tokenizer, **loss)
    results = []
    for mb in (8, 1):
        trainer, algo, logger, hf = rlp_trainer(tokenizer, data, cfg, microbatch=mb)
        before = {k: v.detach().clone() for k, v in hf.named_parameters()}
        trainer.fit()
        results.append(({k: v.detach().clone() for k, v in hf.named_parameters()}, logger))
    (p8, log8), (p1, log1) = results
    moved = max((p8[k] - before[k]).abs().max().item() for k in p8)
    assert moved > 1e-4, 'the step should change the weights'
    for k in p8:
        torch.testing.assert_close(p1[k], p8[k], atol=1e-6, rtol=1e-5, msg=f'{k} differs')
    for key in ('loss/train/rlp', 'loss/train/total', 'rlp/reward_mean', 'rlp/positions', 'rlp/rows_skipped'):
        assert series(log1, key)[0] == pytest.approx(series(log8, key)[0], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize('ntp_weight', [0.0, 1.0])
def test_batch_without_eligible_position_is_counted_skip(tokenizer, ntp_weight):
    """All rows EOS: no position anywhere; the RLP loss is exactly 0, the step still runs (NTP weight 0 or 1),
    nothing is NaN."""
    data = skipping_batch(tokenizer, skip_rows=range(8))
    trainer, algo, logger, hf = rlp_trainer(tokenizer, data, rlp_config(tokenizer, ntp_weight=ntp_weight), microbatch=4)
    trainer.fit()
    assert series(logger, 'loss/train/rlp') == [0.0]
    assert series(logger, 'rlp/rows_skipped') == [8.0] and series(logger, 'rlp/positions') == [0.0]
    assert all(torch.isfinite(v).all() for v in _series_tensors(hf))
    assert all(torch.isfinite(torch.tensor(v)) for v in series(logger, 'loss/train/total'))


def _series_tensors(hf):
    return [p.detach() for p in hf.parameters()]


# rpt trains under `composer -n 2` (tests/rlp/run/test_train.py) and resumes at the function level (the same key
# gives the same rewards: tests/rlp/test_step.py); its reward adds no state to a checkpoint
REWARDS = {
    'info_gain': {},
    'horizon': {'kind': 'horizon', 'horizon': 4, 'discount': 0.7},
}


@pytest.mark.parametrize('reward', sorted(REWARDS))
def test_resume_from_checkpoint_matches_uninterrupted_run(tokenizer, tmp_path, reward):
    """Train 3 batches in one go vs 1 batch, save, resume in a fresh Trainer for 2 more: identical weights and
    identical EMA teacher (positions and thoughts are keyed on the batch index and sample id, the teacher and the
    counters travel in the checkpoint), bit for bit, with the paper's reward and the horizon reward; the uninterrupted
    run logs the kind's reward (equal to the one-token gain against the EMA for info_gain only)."""
    data = skipping_batch(tokenizer, rows=24, skip_rows=(3,))
    cfg = RLPConfig.from_dict({**rlp_config(tokenizer).to_dict(), 'reward': REWARDS[reward]})
    full, algo_full, log_full, hf_full = rlp_trainer(tokenizer, data, cfg, duration='3ba', optimizer='adam', lr=1e-2)
    full.fit()
    rewards, gains = series(log_full, 'rlp/reward_mean'), series(log_full, 'rlp/gain_vs_ema')
    assert len(rewards) == 3 and all(map(math.isfinite, rewards + gains))
    assert (rewards[0] == pytest.approx(gains[0], abs=1e-5)) == (reward == 'info_gain')

    part, _, _, _ = rlp_trainer(
        tokenizer,
        data,
        cfg,
        duration='1ba',
        optimizer='adam',
        lr=1e-2,
        save_folder=str(tmp_path / 'ckpt'),
        save_interval='1ba',
    )
    part.fit()
    part.close()
    resumed, algo_res, _, hf_res = rlp_trainer(
        tokenizer,
        data,
        cfg,
        duration='3ba',
        optimizer='adam',
        lr=1e-2,
        model_seed=5,
        load_path=str(tmp_path / 'ckpt' / 'ep0-ba1-rank0.pt'),
    )
    resumed.fit()
    for (k, a), (_, b) in zip(hf_full.named_parameters(), hf_res.named_parameters()):
        assert torch.equal(b, a), f'{k} differs after resume'
    ema_full, ema_res = algo_full.teachers.ema.module.state_dict(), algo_res.teachers.ema.module.state_dict()
    for k in ema_full:
        assert torch.equal(ema_res[k], ema_full[k]), k
    assert algo_res.totals == algo_full.totals and algo_res.teachers.updates == 3


def test_state_dict_is_plain_and_round_trips(tokenizer):
    """state_dict holds only tensors, numbers, strings, lists and dicts; load_state_dict restores it."""
    trainer, algo, _, _ = rlp_trainer(tokenizer, skipping_batch(tokenizer), rlp_config(tokenizer))
    trainer.fit()
    state = algo.state_dict()

    def check(x):
        if isinstance(x, dict):
            assert all(isinstance(k, str) for k in x)
            for v in x.values():
                check(v)
        elif isinstance(x, list):
            for v in x:
                check(v)
        else:
            assert isinstance(x, torch.Tensor | int | float | str | bool), type(x)

    check(state)
    other = RLP(rlp_config(tokenizer), seed=11)
    other.load_state_dict(state)
    assert other.totals == algo.totals
    assert other.teachers.state_dict()['ema'].keys() == state['teacher']['ema'].keys()


def test_checkpoint_of_another_seed_is_refused(tokenizer):
    """The seed travels in the state and is checked on load: a state written with seed 11 loads into RLP(seed=11)
    and is refused by RLP(seed=12) with one line naming both seeds and the fix, nothing restored."""
    state = RLP(rlp_config(tokenizer), seed=11).state_dict()
    state['totals'] = {'positions': 5, 'rows_skipped': 1, 'batches': 2}
    RLP(rlp_config(tokenizer), seed=11).load_state_dict(state)
    other = RLP(rlp_config(tokenizer), seed=12)
    with pytest.raises(ConfigError) as err:
        other.load_state_dict(state)
    line = str(err.value)
    assert '\n' not in line and 'seed 11' in line and 'seed 12' in line and 'set seed: 11' in line
    assert other.totals == {'positions': 0, 'rows_skipped': 0, 'batches': 0}


def test_missing_tags_refused_at_init(tokenizer):
    """A template whose tags the tokenizer lacks fails at Trainer construction with the add_tags hint."""
    cfg = RLPConfig.from_dict({'template': {'open_tag': '<reason>', 'close_tag': '</reason>'}})
    hf = build_tiny_model('llama', VOCAB)
    with pytest.raises(ValueError, match='add_tags'):
        Trainer(
            model=HuggingFaceModel(hf, tokenizer=tokenizer, use_logits=True),
            algorithms=[RLP(cfg)],
            device='cpu',
            progress_bar=False,
            log_to_console=False,
        )


@pytest.mark.parametrize(
    'teacher, positions',
    [('ema', {}), ('frozen', {'strategy': 'entropy', 'unit': 'sample', 'k': 2}), ('none', {'unit': 'sample'})],
)
def test_teacher_kinds_and_entropy_positions(tokenizer, teacher, positions):
    """The logged reward is the gain against the chosen baseline (EMA, frozen copy = EMA at the first batch, or the
    current model), while the gain against the EMA is always logged; the entropy strategy runs in the Trainer."""
    cfg = rlp_config(tokenizer)
    cfg = RLPConfig.from_dict(
        {
            **cfg.to_dict(),
            'teacher': {'kind': teacher, 'tau': 0.5},
            'positions': {**cfg.to_dict()['positions'], **positions},
        }
    )
    trainer, algo, logger, _ = rlp_trainer(tokenizer, skipping_batch(tokenizer), cfg)
    trainer.fit()
    reward = series(logger, 'rlp/reward_mean')[0]
    baseline = 'rlp/gain_vs_current' if teacher == 'none' else 'rlp/gain_vs_ema'
    assert reward == pytest.approx(series(logger, baseline)[0], abs=1e-5)
    # at the first batch every teacher equals the model, so all three baselines agree
    assert series(logger, 'rlp/gain_vs_ema')[0] == pytest.approx(series(logger, 'rlp/gain_vs_current')[0], abs=1e-4)
    if positions.get('strategy') == 'entropy':
        assert series(logger, 'rlp/positions')[0] == 2 * 6  # k=2 per sample, 6 rows with eligible positions


def _ddp_worker(rank, world, port, out_dir, data, cfg_dict):
    import os

    from composer.utils import dist as cdist

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        NODE_RANK='0',
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from pipeline.bundled_tokenizer import load_bundled_tokenizer

    tok = load_bundled_tokenizer()
    cdist.initialize_dist('cpu')
    ds = Rows(data)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=cdist.get_sampler(ds, shuffle=False))
    hf = close_biased(build_tiny_model('llama', VOCAB, seed=0), CLOSE_ID, 2.0)
    model = HuggingFaceModel(hf, tokenizer=tok, use_logits=True)
    logger = InMemoryLogger()
    trainer = Trainer(
        model=model,
        train_dataloader=loader,
        max_duration='1ba',
        optimizers=torch.optim.SGD(model.parameters(), lr=0.5),
        algorithms=[RLP(RLPConfig.from_dict(cfg_dict), seed=11)],
        loggers=[logger],
        device='cpu',
        device_train_microbatch_size=2,
        progress_bar=False,
        log_to_console=False,
        seed=3,
    )
    trainer.fit()
    if rank == 0:
        torch.save(
            {
                'params': {k: v.detach() for k, v in hf.named_parameters()},
                'positions': series(logger, 'rlp/positions'),
            },
            os.path.join(out_dir, 'ddp.pt'),
        )


@pytest.mark.slow
def test_ddp_two_ranks_match_single_process_update(tokenizer, tmp_path):
    """2 gloo ranks x 4 rows (rank 1 has NO eligible position: it runs a weight-0 dummy rollout to stay in step)
    end with the same weights as one process on the 8 rows: the normaliser counts the global batch."""
    import socket

    import torch.multiprocessing as mp

    data = skipping_batch(tokenizer, skip_rows=(1, 3, 5, 7))  # DistributedSampler gives rank 1 the odd rows
    cfg = rlp_config(tokenizer)
    single, _, log1, hf = rlp_trainer(tokenizer, data, cfg, microbatch=8)
    single.fit()
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), data, cfg.to_dict()), nprocs=2)
    ddp = torch.load(tmp_path / 'ddp.pt')
    assert ddp['positions'] == series(log1, 'rlp/positions')
    for k, v in hf.named_parameters():
        torch.testing.assert_close(ddp['params'][k], v.detach(), atol=1e-6, rtol=1e-5, msg=f'{k} differs')
