"""rlp.objective checked against loop-based references written here, plus the algebraic invariants of RLP.

References: plain Python loops over positions, thoughts and tokens in float64 (the paper's Eq. 3-8 read
literally). Invariants: a constant added to a group's rewards leaves the advantages unchanged; a group of
identical rewards has zero advantage; with logp_old == logp_new the gradient equals REINFORCE's; values in
masked slots change nothing; an all-masked batch gives a finite zero loss with a graph. The reward kinds: the
horizon gain against a loop sum (a document boundary inside the horizon, a horizon longer than the rest of the
document, non-finite values in missing slots), K = 1 equal to the information gain bit for bit, RPT's 0/1 reward
against a loop over logits with ties, and all-equal rewards giving zero advantages.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlp.objective import clipped_surrogate, group_advantages, horizon_gain, information_gain, rpt_reward

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.bfloat16: dict(rtol=1e-5, atol=1e-5),
}


def ref_advantages(rewards, std_normalize=False, eps=1e-6):
    b, g = len(rewards), len(rewards[0])
    out = []
    for i in range(b):
        mean = sum(rewards[i]) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards[i]) / (g - 1))
        row = [g / (g - 1) * (r - mean) for r in rewards[i]]
        out.append([a / (std + eps) for a in row] if std_normalize else row)
    return out


def ref_surrogate(new, old, adv, mask, eps_low, eps_high):
    """Eq. 8 with loops: per-rollout length-normalised, then mean over rollouts with >= 1 token."""
    b, g, t = len(new), len(new[0]), len(new[0][0])
    total, count = 0.0, 0
    for i in range(b):
        for j in range(g):
            terms = []
            for u in range(t):
                if not mask[i][j][u]:
                    continue
                rho = math.exp(new[i][j][u] - old[i][j][u])
                a = adv[i][j]
                terms.append(-min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a))
            if terms:
                total += sum(terms) / len(terms)
                count += 1
    return total / max(count, 1)


def _random_case(seed, b, g, t, dtype):
    gen = torch.Generator().manual_seed(seed)
    new = (-torch.rand(b, g, t, generator=gen, dtype=torch.float64) * 3).to(dtype)
    old = (new.double() + 0.3 * torch.randn(b, g, t, generator=gen, dtype=torch.float64)).to(dtype)
    adv = torch.randn(b, g, generator=gen, dtype=torch.float64).to(dtype)
    mask = torch.rand(b, g, t, generator=gen) < 0.7
    return new, old, adv, mask


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', [(1, 2), (3, 4), (5, 16)])
def test_information_gain_matches_loop(dtype, shape):
    """r[b, g] == S_pred[b, g] - S_EMA[b] elementwise, for every dtype."""
    gen = torch.Generator().manual_seed(sum(shape))
    s_pred = torch.randn(*shape, generator=gen).to(dtype)
    s_ema = torch.randn(shape[0], generator=gen).to(dtype)
    r = information_gain(s_pred, s_ema)
    for i in range(shape[0]):
        for j in range(shape[1]):
            assert r[i, j].item() == pytest.approx((s_pred[i, j] - s_ema[i]).item(), rel=1e-2)
    with pytest.raises(ValueError, match='expects'):
        information_gain(s_pred, s_ema[:1] if shape[0] > 1 else s_ema.repeat(2))


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('std_normalize', [False, True])
@pytest.mark.parametrize('shape', [(1, 2), (4, 3), (6, 16)])
def test_group_advantages_matches_loop(dtype, std_normalize, shape):
    """A = G/(G-1)(r - mean) (optionally / (std + eps)) equals the loop reference computed from the same inputs."""
    r = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1])).to(dtype)
    got = group_advantages(r, std_normalize=std_normalize)
    want = torch.tensor(ref_advantages(r.double().tolist(), std_normalize), dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, **TOL[dtype])
    assert not got.requires_grad


def test_group_advantages_invariances():
    """Shifting a group's rewards by a constant (S_EMA) changes nothing; identical rewards give exactly zero."""
    r = torch.randn(5, 8, dtype=torch.float64)
    shift = torch.randn(5, 1, dtype=torch.float64) * 100
    torch.testing.assert_close(group_advantages(r), group_advantages(r + shift))
    torch.testing.assert_close(group_advantages(r, std_normalize=True), group_advantages(r + shift, True))
    same = torch.full((3, 4), -2.5)
    assert torch.equal(group_advantages(same), torch.zeros(3, 4))
    assert torch.equal(group_advantages(same, std_normalize=True), torch.zeros(3, 4))  # no 0/0


def test_group_advantages_rejects_group_of_one():
    """G = 1 has no baseline: a clear error, not a division by zero."""
    with pytest.raises(ValueError, match='G >= 2'):
        group_advantages(torch.zeros(3, 1))


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', [(1, 2, 1), (2, 3, 5), (4, 4, 9)])
@pytest.mark.parametrize('eps', [(0.2, 0.2), (0.1, 0.3), (0.0, 0.0)])
def test_clipped_surrogate_matches_loop(dtype, shape, eps):
    """The loss equals the loop reference of Eq. 8 over random shapes, dtypes and clip ranges."""
    new, old, adv, mask = _random_case(sum(shape), *shape, dtype)
    mask[0, 0] = False  # always one rollout without tokens
    loss, metrics = clipped_surrogate(new, old, adv, mask, *eps)
    want = ref_surrogate(new.double().tolist(), old.double().tolist(), adv.double().tolist(), mask.tolist(), *eps)
    assert loss.item() == pytest.approx(want, **{k: v for k, v in zip(('rel', 'abs'), TOL[dtype].values())})
    assert metrics['num_rollouts'].item() == (mask.sum(-1) > 0).sum().item()
    assert metrics['num_tokens'].item() == mask.sum().item()
    ratio = torch.exp(new.double() - old.double())[mask]
    if ratio.numel():
        assert metrics['ratio_min'].item() == pytest.approx(ratio.min().item(), rel=1e-4)
        assert metrics['ratio_max'].item() == pytest.approx(ratio.max().item(), rel=1e-4)


def test_clipped_surrogate_explicit_normalizer_is_sum_over_count():
    """normalizer=N gives sum over rollouts / N: splitting rollouts into chunks and summing reproduces the mean."""
    new, old, adv, mask = _random_case(7, 6, 4, 5, torch.float64)
    full, _ = clipped_surrogate(new, old, adv, mask, 0.2, 0.2)
    n = (mask.sum(-1) > 0).sum()
    parts = sum(
        clipped_surrogate(new[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], 0.2, 0.2, normalizer=n)[0]
        for i in range(0, 6, 2)
    )
    torch.testing.assert_close(parts, full)


def test_clip_branches_by_hand():
    """One token per rollout; each row below exercises one branch of min(rho A, clip(rho) A)."""
    eps = 0.2
    rho = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    want = [
        -1.2,  # rho > 1+eps, A > 0: clipped to 1.2 (no incentive to push further)
        1.5,  # rho > 1+eps, A < 0: unclipped branch, -(1.5 * -1)
        -0.5,  # rho < 1-eps, A > 0: unclipped branch
        0.8,  # rho < 1-eps, A < 0: clipped to 0.8
        -2.0,  # rho == 1: plain REINFORCE value
    ]
    new = torch.log(rho).view(5, 1, 1)
    old = torch.zeros(5, 1, 1)
    loss, m = clipped_surrogate(new, old, adv.view(5, 1), torch.ones(5, 1, 1, dtype=torch.bool), eps, eps)
    assert loss.item() == pytest.approx(sum(want) / 5, abs=1e-6)
    assert m['clip_fraction'].item() == pytest.approx(2 / 5)  # rows 1 and 4


def test_gradient_equals_reinforce_when_on_policy():
    """With logp_old == logp_new the gradient is that of -mean_rollouts(1/|c| sum_u A * logp)."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 6, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 10, (3, 4, 6), generator=gen)
    mask = torch.rand(3, 4, 6, generator=gen) < 0.8
    adv = torch.randn(3, 4, generator=gen, dtype=torch.float64)

    def logp():
        return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    loss, _ = clipped_surrogate(logp(), logp().detach(), adv, mask, 0.2, 0.2)
    (g_clip,) = torch.autograd.grad(loss, logits)
    lp = logp()
    n = mask.sum(-1)
    reinforce = -((lp * mask).sum(-1) / n.clamp(min=1) * adv)[n > 0].sum() / (n > 0).sum()
    (g_ref,) = torch.autograd.grad(reinforce, logits)
    torch.testing.assert_close(g_clip, g_ref)


def test_poison_in_masked_slots_changes_nothing():
    """Replacing masked-out logp_new / logp_old by +-1e4, inf and NaN leaves loss, gradient and metrics identical."""
    new, old, adv, mask = _random_case(11, 3, 4, 6, torch.float64)
    base_new = new.clone().requires_grad_(True)
    loss, m = clipped_surrogate(base_new, old, adv, mask, 0.2, 0.2)
    (g,) = torch.autograd.grad(loss, base_new)
    for poison in (1e4, -1e4, float('inf'), float('nan')):
        p_new = torch.where(mask, new, torch.full_like(new, poison)).requires_grad_(True)
        p_old = torch.where(mask, old, torch.full_like(old, -poison if poison == poison else poison))
        loss_p, m_p = clipped_surrogate(p_new, p_old, adv, mask, 0.2, 0.2)
        (g_p,) = torch.autograd.grad(loss_p, p_new)
        assert torch.equal(loss_p, loss)
        assert torch.equal(g_p, g)
        for k in m:
            assert torch.equal(m_p[k], m[k]), k


def test_all_masked_and_empty_thoughts_give_zero_loss_with_graph():
    """No masked-in token at all: loss is exactly 0, finite, has a grad_fn, gradient zero; metrics finite."""
    new = torch.randn(2, 3, 4, requires_grad=True)
    loss, m = clipped_surrogate(
        new, torch.randn(2, 3, 4), torch.randn(2, 3), torch.zeros(2, 3, 4, dtype=bool), 0.2, 0.2
    )
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(new.grad, torch.zeros_like(new))
    assert all(torch.isfinite(v).all() for v in m.values())
    assert m['ratio_min'].item() == 1.0 and m['ratio_max'].item() == 1.0
    # zero-size batch (no positions at all)
    empty = torch.zeros(0, 2, 3, requires_grad=True)
    loss0, m0 = clipped_surrogate(empty, empty.detach(), torch.zeros(0, 2), torch.zeros(0, 2, 3, dtype=bool), 0.2, 0.2)
    assert loss0.item() == 0.0 and loss0.requires_grad
    assert all(torch.isfinite(v).all() for v in m0.values())


def test_identical_rewards_give_zero_gradient():
    """A group whose thoughts all earn the same reward produces no policy gradient."""
    new = torch.randn(1, 4, 5, requires_grad=True)
    adv = group_advantages(torch.full((1, 4), 0.3))
    loss, _ = clipped_surrogate(new, new.detach(), adv, torch.ones(1, 4, 5, dtype=bool), 0.2, 0.2)
    loss.backward()
    assert torch.equal(new.grad, torch.zeros_like(new))


def test_bad_inputs_raise_clear_errors():
    """Shape mismatches and out-of-range epsilons raise ValueError naming the problem."""
    x = torch.zeros(2, 3, 4)
    m = torch.ones(2, 3, 4, dtype=bool)
    with pytest.raises(ValueError, match='one shape'):
        clipped_surrogate(x, x[:, :, :3], torch.zeros(2, 3), m, 0.2, 0.2)
    with pytest.raises(ValueError, match='advantages of shape'):
        clipped_surrogate(x, x, torch.zeros(2, 2), m, 0.2, 0.2)
    with pytest.raises(ValueError, match='eps_low'):
        clipped_surrogate(x, x, torch.zeros(2, 3), m, 1.0, 0.2)


def ref_horizon_gain(s_pred, s_ema, valid, gamma):
    """r[p][g] = sum over j < K with valid[p][j] of gamma**j (s_pred[p][g][j] - s_ema[p][j]), with loops."""
    out = []
    for p in range(len(s_pred)):
        row = []
        for g in range(len(s_pred[p])):
            total = 0.0
            for j in range(len(s_ema[p])):
                if valid[p][j]:
                    total += gamma**j * (s_pred[p][g][j] - s_ema[p][j])
            row.append(total)
        out.append(row)
    return out


def test_horizon_gain_against_loop_reference():
    """Position 0 has all K = 4 targets, position 1 a document boundary after 2 (targets 2, 3 missing, holding NaN
    and inf: no effect), position 2 only x_t (k larger than the rest of the document): equal to the loop sum."""
    gen = torch.Generator().manual_seed(0)
    s_pred = -torch.rand(3, 5, 4, generator=gen, dtype=torch.float64) * 5
    s_ema = -torch.rand(3, 4, generator=gen, dtype=torch.float64) * 5
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    s_pred[1, :, 2:] = float('nan')
    s_ema[1, 3] = float('inf')
    s_ema[2, 1:] = float('nan')
    got = horizon_gain(s_pred, s_ema, valid, 0.7)
    want = ref_horizon_gain(s_pred.tolist(), s_ema.tolist(), valid.tolist(), 0.7)
    assert got.shape == (3, 5) and torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # position 2 reduces to the one-token gain, position 1 to two terms
    torch.testing.assert_close(got[2], s_pred[2, :, 0] - s_ema[2, 0], rtol=0, atol=0)


@pytest.mark.parametrize('dtype', DTYPES)
def test_horizon_with_one_token_is_information_gain_bit_for_bit(dtype):
    """K = 1 (any discount): exactly information_gain, compared with rtol = atol = 0."""
    gen = torch.Generator().manual_seed(1)
    s_pred = (-torch.rand(4, 6, generator=gen) * 7).to(dtype)
    s_ema = (-torch.rand(4, generator=gen) * 7).to(dtype)
    want = information_gain(s_pred, s_ema)
    for gamma in (1.0, 0.7, 1e-3):
        got = horizon_gain(s_pred.unsqueeze(-1), s_ema.unsqueeze(-1), torch.ones(4, 1, dtype=torch.bool), gamma)
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_horizon_gain_refuses_bad_shapes_and_discounts():
    s_pred, s_ema, valid = torch.zeros(2, 3, 4), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r'\(P, G, K\)'):
        horizon_gain(s_pred, s_ema[:, :3], valid, 0.7)
    with pytest.raises(ValueError, match='discount'):
        horizon_gain(s_pred, s_ema, valid, 0.0)


def test_rpt_reward_against_loop_reference_with_ties():
    """From a full log-softmax: 1 where x_t is an argmax of its row (a tie of two tokens rewards both), else 0."""
    logits = torch.tensor(
        [
            [[2.0, 1.0, 0.0], [0.0, 3.0, 3.0], [1.0, 1.0, 1.0]],
            [[0.5, 0.2, 0.1], [0.1, 0.2, 0.5], [4.0, 4.0, -1.0]],
        ]
    )  # (P = 2, G = 3, V = 3)
    target = torch.tensor([1, 0])  # x_t of each position
    logp = torch.log_softmax(logits, -1)
    s_pred = logp.gather(-1, target.view(2, 1, 1).expand(2, 3, 1)).squeeze(-1)
    s_max = logp.amax(-1)
    want = [[1.0 if max(logits[p, g].tolist()) == logits[p, g, target[p]] else 0.0 for g in range(3)] for p in range(2)]
    assert want == [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]  # ties at (0, 1), (0, 2) and (1, 2) count as predicted
    assert rpt_reward(s_pred, s_max).tolist() == want
    assert rpt_reward(s_pred.double(), s_max.double()).dtype == torch.float64
    with pytest.raises(ValueError, match=r'\(P, G\)'):
        rpt_reward(s_pred, s_max[:, :2])


@pytest.mark.parametrize('kind', ['horizon', 'rpt'])
def test_all_equal_rewards_give_zero_advantages(kind):
    """A group whose thoughts all get the same reward (every thought predicts x_t, or the same gains) has A = 0."""
    if kind == 'rpt':
        rewards = rpt_reward(torch.full((2, 4), -0.1), torch.full((2, 4), -0.1))
        assert torch.equal(rewards, torch.ones(2, 4))
    else:
        s_pred = torch.tensor([-1.0, -2.0, -0.5]).expand(2, 4, 3)
        rewards = horizon_gain(s_pred, torch.full((2, 3), -1.5), torch.ones(2, 3, dtype=torch.bool), 0.7)
    assert torch.equal(group_advantages(rewards), torch.zeros(2, 4))
    assert torch.equal(group_advantages(rewards, std_normalize=True), torch.zeros(2, 4))
