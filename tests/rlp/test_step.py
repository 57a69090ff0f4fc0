"""rlp.step.rlp_loss, the functional RLP step, in plain PyTorch loops (tiny Llama, bundled tokenizer).

Checked: (1) a few optimizer steps with ``rlp_loss`` in a plain loop give the same weights, EMA teacher and
metrics as the same steps through ``composer.Trainer`` with the ``RLP`` algorithm (which calls it); (2) over
several batches the ``frozen`` teacher's baseline is the initial model's no-think log-prob, computed here by a
plain forward of a copy of the initial weights on each unpadded prefix, and differs from the EMA's; (3) the
``none`` teacher's baseline is the current model's own no-think log-prob; (4) RLPStats adds and reports like the
loop-written sums; (5) a batch without eligible positions gives a zero loss and counted skipped rows; (6) the
``horizon`` reward with k 1 is the information-gain step bit for bit; (7) the ``horizon`` and ``rpt`` rewards of
every rollout equal plain per-rollout forwards of the policy (and the teacher), the same key gives the same rewards,
and ``rlp/gain_vs_ema`` stays the one-token gain; (8) at the first batch the horizon rewards against the frozen and
the none baselines equal the EMA's, with their second no-think forward counted.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rlp.config import RLPConfig
from rlp.stats import RLPStats
from rlp.step import rlp_loss
from rlp.teacher import Teachers
from rlp.template import resolve_template
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, close_biased, rlp_config, rlp_trainer, series, skipping_batch
from tests.helpers.tiny_models import build_tiny_model

SEED = 11  # the seed rlp_trainer gives the RLP algorithm


def _model(seed=0):
    return close_biased(build_tiny_model('llama', VOCAB, seed=seed), CLOSE_ID, 2.0).train()


def _plain_loop(model, teachers, batch, cfg, template, steps, opt, on_step=None):
    metrics = []
    for i in range(steps):
        loss, stats = rlp_loss(model, teachers, batch, cfg, template, key=(SEED, i), keep_samples=True)
        if on_step is not None:
            on_step(i, stats)
        loss.backward()
        opt.step()
        opt.zero_grad()
        teachers.update(model)
        metrics.append(stats.metrics())
    return metrics


def test_plain_loop_equals_trainer(tokenizer):
    """Three SGD steps of pure RLP on the same batch: weights, EMA teacher and rlp/ metrics equal the Trainer's."""
    cfg = rlp_config(tokenizer)
    data = skipping_batch(tokenizer)
    trainer, algo, logger, hf_trainer = rlp_trainer(tokenizer, data, cfg, duration='3ba', optimizer='sgd', lr=0.5)
    trainer.fit()

    model = _model()
    teachers = Teachers(cfg.teacher.kind, cfg.teacher.tau)
    teachers.ensure(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    template = resolve_template(tokenizer, cfg.template)
    metrics = _plain_loop(model, teachers, data, cfg, template, 3, opt)

    trained, start = dict(hf_trainer.named_parameters()), _model().state_dict()
    moved = 0.0
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, trained[name], rtol=0, atol=1e-6)
        moved = max(moved, float((p - start[name]).abs().max()))
    assert moved > 1e-4  # the steps did change the weights
    for (name, phi), (_, phi_t) in zip(
        teachers.ema.module.named_parameters(), algo.teachers.ema.module.named_parameters()
    ):
        torch.testing.assert_close(phi, phi_t, rtol=0, atol=1e-6, msg=name)
    for key in ('rlp/reward_mean', 'rlp/s_pred', 'rlp/s_ema', 'rlp/thought_len_mean', 'rlp/positions'):
        assert series(logger, key) == pytest.approx([m[key] for m in metrics], abs=1e-5), key


def _reference_nothink(model, input_ids, samples):
    """(P,) log p(x_t | x[start:t]): a plain forward of ``model`` on each unpadded prefix (no instruction)."""
    out = []
    with torch.no_grad():
        for r, s, t in zip(samples.row.tolist(), samples.start.tolist(), samples.target.tolist()):
            logits = model(input_ids=input_ids[r, s:t].view(1, -1)).logits[0, -1].float()
            out.append(torch.log_softmax(logits, -1)[input_ids[r, t]])
    return torch.stack(out)


@pytest.mark.parametrize('kind', ['frozen', 'none'])
def test_baseline_of_each_teacher_kind_over_several_batches(tokenizer, kind):
    """Adam steps with tau 0.5: rewards are S_pred minus the frozen initial model's (or the current model's)
    no-think log-prob at every batch, and from the second batch on they differ from S_pred - S_EMA."""
    cfg = RLPConfig.from_dict({**rlp_config(tokenizer).to_dict(), 'teacher': {'kind': kind, 'tau': 0.5}})
    data = skipping_batch(tokenizer)
    model = _model()
    initial = copy.deepcopy(model).eval()
    teachers = Teachers(kind, 0.5)
    teachers.ensure(model)
    template = resolve_template(tokenizer, cfg.template)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    seen = []

    def check(i, stats):
        smp = stats.samples
        base = _reference_nothink(initial if kind == 'frozen' else model.eval(), data['input_ids'], smp)
        model.train()
        torch.testing.assert_close(smp.rewards, smp.s_pred - base.unsqueeze(1), rtol=0, atol=1e-5)
        seen.append(float((smp.rewards - (smp.s_pred - smp.s_ema.unsqueeze(1))).abs().max()))

    _plain_loop(model, teachers, data, cfg, template, 4, opt, on_step=check)
    assert seen[0] < 1e-5  # at the first batch every teacher equals the model
    assert min(seen[1:]) > 1e-3  # afterwards the baseline is not the EMA's


def test_stats_add_and_report_means():
    """RLPStats: + adds sums and keeps extremes; metrics are per-rollout and per-token means."""
    a = RLPStats(
        rollouts=2,
        reward=1.0,
        reward_sq=1.0,
        tokens=4,
        clip_tokens=1,
        ratio_min=0.9,
        ratio_max=1.1,
        len_max=3,
        flops_policy=2.0,
    )
    b = RLPStats(
        rollouts=2,
        reward=-3.0,
        reward_sq=5.0,
        tokens=6,
        clip_tokens=0,
        ratio_min=0.8,
        ratio_max=1.0,
        len_max=7,
        flops_decode=3.0,
        flops_policy=1.0,
    )
    m = (a + b).metrics()
    assert m['rlp/reward_mean'] == pytest.approx(-0.5)
    assert m['rlp/reward_std'] == pytest.approx((6.0 / 4 - 0.25) ** 0.5)
    assert m['rlp/clip_fraction'] == pytest.approx(0.1)
    assert (m['rlp/ratio_min'], m['rlp/ratio_max'], m['rlp/thought_len_max']) == (0.8, 1.1, 7)
    assert RLPStats().metrics()['rlp/ratio_min'] == 1.0  # no rollouts: neutral ratio
    assert (a + b).flops == 6.0 and m['rlp/flops_policy'] == 3.0 and m['rlp/flops_rollout_decode'] == 3.0


def test_batch_without_positions_is_zero_loss(tokenizer):
    """All rows EOS: loss 0, no rollouts, every row counted as skipped."""
    cfg = rlp_config(tokenizer)
    data = skipping_batch(tokenizer, rows=4, skip_rows=(0, 1, 2, 3))
    model = _model()
    teachers = Teachers('ema', 0.5)
    teachers.ensure(model)
    loss, stats = rlp_loss(model, teachers, data, cfg, resolve_template(tokenizer, cfg.template), key=(SEED, 0))
    assert float(loss) == 0.0 and stats.rollouts == 0 and stats.rows_skipped == 4 and stats.rows == 4


def _with_reward(tokenizer, **reward):
    return RLPConfig.from_dict({**rlp_config(tokenizer).to_dict(), 'reward': reward})


def _step(tokenizer, cfg, data, key=(SEED, 0), favour=()):
    """One rlp_loss call on a fresh model; ``favour``: token ids whose logit gets + 6 (the LM head's bias)."""
    model = _model()
    with torch.no_grad():
        for tok in favour:
            model.get_output_embeddings().bias[tok] += 6.0
    teachers = Teachers(cfg.teacher.kind, cfg.teacher.tau)
    teachers.ensure(model)
    template = resolve_template(tokenizer, cfg.template)
    loss, stats = rlp_loss(model, teachers, data, cfg, template, key=key, keep_samples=True)
    return model, loss, stats


def test_horizon_of_one_token_is_the_information_gain_step_bit_for_bit(tokenizer):
    """kind horizon with k 1 runs the same operations as info_gain: loss, rewards, scores and metrics equal exactly."""
    data = skipping_batch(tokenizer)
    _, loss_a, a = _step(tokenizer, _with_reward(tokenizer), data)
    _, loss_b, b = _step(tokenizer, _with_reward(tokenizer, kind='horizon', horizon=1, discount=0.5), data)
    assert torch.equal(loss_a, loss_b) and torch.equal(a.samples.rewards, b.samples.rewards)
    assert a.metrics() == b.metrics() and a.samples.rewards.numel() > 0


@pytest.mark.parametrize('kind', ['horizon', 'rpt'])
def test_reward_kinds_against_per_rollout_forwards(tokenizer, kind):
    """Every rollout's reward, recomputed here with one plain forward of the policy over ``prefix <think> thought
    </think> x_t .. x_{t+m-1}`` (and of the EMA teacher over ``prefix x_t .. x_{t+m-1}`` for horizon), with the
    targets walked in the row until the document ends (k 4, gamma 0.7) or the greedy token read off the logits (rpt).
    The same key gives the same rewards again (what a resumed run relies on), and the logged gain against the EMA is
    the one-token information gain for every kind."""
    cfg = (
        _with_reward(tokenizer, kind='horizon', horizon=4, discount=0.7)
        if kind == 'horizon'
        else _with_reward(tokenizer, kind='rpt')
    )
    data = skipping_batch(tokenizer)
    favour = ()
    if kind == 'rpt':  # make x_t of two positions the likely greedy prediction, so that both rewards occur
        first = _step(tokenizer, cfg, data)[2].samples
        favour = tuple(
            {int(data['input_ids'][r, t]) for r, t in zip(first.row[::3].tolist(), first.target[::3].tolist())}
        )
    model, _, stats = _step(tokenizer, cfg, data, favour=favour)
    smp = stats.samples
    ids, seg = data['input_ids'], data['segment_ids']
    open_id = tokenizer.convert_tokens_to_ids('<think>')
    model.eval()
    teacher = model  # at the first batch the EMA teacher equals the model
    want, seen_short = torch.zeros_like(smp.rewards), False
    with torch.no_grad():
        for p, (r, s, t) in enumerate(zip(smp.row.tolist(), smp.start.tolist(), smp.target.tolist())):
            m = 1
            while kind == 'horizon' and m < 4 and t + m < ids.shape[1] and seg[r, t + m] == seg[r, t]:
                m += 1
            seen_short |= 1 < m < 4 or (kind == 'horizon' and m == 1)
            prefix, targets = ids[r, s:t], ids[r, t : t + m]
            base = torch.log_softmax(teacher(input_ids=torch.cat([prefix, targets])[None]).logits[0].float(), -1)
            for g in range(smp.rewards.shape[1]):
                thought = smp.tokens[p, g, : int(smp.lengths[p, g])]
                seq = torch.cat([prefix, torch.tensor([open_id]), thought, targets])
                logp = torch.log_softmax(model(input_ids=seq[None]).logits[0].float(), -1)
                at = len(prefix) + len(thought)  # the logit row predicting x_t
                if kind == 'rpt':
                    want[p, g] = float(int(logp[at].argmax()) == int(targets[0]))
                else:
                    want[p, g] = sum(
                        0.7**j * (logp[at + j, targets[j]] - base[len(prefix) - 1 + j, targets[j]]) for j in range(m)
                    )
    torch.testing.assert_close(smp.rewards, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        torch.tensor(stats.metrics()['rlp/gain_vs_ema']), (smp.s_pred - smp.s_ema.unsqueeze(1)).mean(), atol=1e-6,
        rtol=1e-6,
    )  # fmt: skip
    if kind == 'rpt':
        assert set(smp.rewards.unique().tolist()) == {0.0, 1.0}
    else:
        assert seen_short  # a document ends inside some position's horizon
    _, _, again = _step(tokenizer, cfg, data, favour=favour)
    assert torch.equal(again.samples.rewards, smp.rewards) and again.metrics() == stats.metrics()


def test_horizon_baseline_of_every_teacher_kind_at_the_first_batch(tokenizer):
    """At the first batch the frozen copy, the EMA copy and the current model are the same weights, so the horizon
    rewards against each baseline agree (the frozen copy and the current model score the K targets like the EMA
    does); the frozen and none kinds run a second no-think forward over the targets, counted in the FLOPs."""
    data = skipping_batch(tokenizer)
    runs = {}
    for kind in ('ema', 'frozen', 'none'):
        cfg = RLPConfig.from_dict(
            {**_with_reward(tokenizer, kind='horizon', horizon=4).to_dict(), 'teacher': {'kind': kind, 'tau': 0.5}}
        )
        runs[kind] = _step(tokenizer, cfg, data)[2]
    for kind in ('frozen', 'none'):
        torch.testing.assert_close(runs[kind].samples.rewards, runs['ema'].samples.rewards, atol=1e-5, rtol=1e-5)
        assert runs[kind].flops_teacher == pytest.approx(2 * runs['ema'].flops_teacher, rel=1e-12)
