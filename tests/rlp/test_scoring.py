"""rlp.scoring with a reward over several targets (``horizon``) and the greedy prediction (``rpt``).

Checked against loop references written here (one unpadded forward per rollout, full logits): ``policy_scores``
with K = 4 targets, of which 4, 2 and 1 exist (a document ending inside the horizon, a horizon longer than the rest
of the document), gives S_pred[p, g, j] = log p(x_{t+j} | prompt, thought, x_t .. x_{t+j-1}) and the max log-prob at
x_t, on the unpacked and the packed path, chunked and not (fp32, atol 1e-5); the thought log-probs equal the one-target
forward's; ``nothink_horizon`` gives log p(x_{t+j} | prefix, x_t .. x_{t+j-1}) without the opening tag; without
targets ``policy_scores`` is ``policy_forward`` bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from rlp.rollouts import Prompts, Rollouts
from rlp.scoring import nothink_horizon, nothink_logprob, policy_forward, policy_scores
from tests.helpers.tiny_models import build_tiny_model

VOCAB, PAD, TEMP, WIDTH, K = 512, 0, 0.7, 5, 4


def _inputs(seed=0):
    """P = 3 prompts of 7, 4, 9 tokens (the last one the opening tag), G = 3 thoughts each, K = 4 targets of which
    4, 2 and 1 exist."""
    gen = torch.Generator().manual_seed(seed)
    lens_p, g = [7, 4, 9], 3
    lp = max(lens_p)
    ids = torch.full((3, lp), PAD)
    mask = torch.zeros((3, lp), dtype=torch.long)
    for i, n in enumerate(lens_p):
        ids[i, lp - n :] = torch.randint(3, VOCAB, (n,), generator=gen)
        mask[i, lp - n :] = 1
    ids[:, -1] = 1  # the opening tag
    valid_t = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    targets = torch.where(valid_t, torch.randint(3, VOCAB, (3, K), generator=gen), 0)
    prompts = Prompts(ids=ids, mask=mask, target=targets[:, 0].clone(), targets=targets, targets_valid=valid_t)
    lengths = torch.randint(1, WIDTH + 1, (3, g), generator=gen)
    lengths[0, 0] = 1
    tokens = torch.where(
        torch.arange(WIDTH) < lengths.unsqueeze(-1), torch.randint(3, VOCAB, (3, g, WIDTH), generator=gen), PAD
    )
    valid = torch.arange(WIDTH) < lengths.unsqueeze(-1)
    ro = Rollouts(
        tokens=tokens,
        logp=torch.zeros((3, g, WIDTH)),
        mask=valid,
        lengths=lengths,
        truncated=torch.zeros((3, g), dtype=torch.bool),
        nothink_logp=torch.zeros(3),
        decode_steps=WIDTH,
    )
    return prompts, ro


@torch.no_grad()
def _reference(model, prompts, ro):
    """(P, G, K) S_pred (0 where the target is missing) and (P, G) max log-prob at x_t, one forward per rollout."""
    p, g, _ = ro.tokens.shape
    s_pred, s_max = torch.zeros(p, g, K), torch.zeros(p, g)
    for i in range(p):
        pr = prompts.ids[i][prompts.mask[i].bool()]
        m = int(prompts.targets_valid[i].sum())
        for j in range(g):
            n = int(ro.lengths[i, j])
            seq = torch.cat([pr, ro.tokens[i, j, :n], prompts.targets[i, :m]])
            logp = torch.log_softmax(model(input_ids=seq[None]).logits[0].float(), -1)
            for h in range(m):
                s_pred[i, j, h] = logp[len(pr) + n - 1 + h, prompts.targets[i, h]]
            s_max[i, j] = logp[len(pr) + n - 1].max()
    return s_pred, s_max


@pytest.mark.parametrize('chunk,packed', [(None, None), (4, None), (4, 12)])
def test_horizon_scores_and_greedy_max_against_loop_reference(chunk, packed):
    """Every existing target's S_pred and the max at x_t equal the loop's; the thought log-probs equal those of the
    one-target forward (the targets come after the thought, causally invisible to it)."""
    model = build_tiny_model('llama', VOCAB).eval()
    prompts, ro = _inputs()
    want_s, want_max = _reference(model, prompts, ro)
    got = policy_scores(model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=chunk, packed_tokens=packed,
                        greedy=True)  # fmt: skip
    valid = prompts.targets_valid.unsqueeze(1).expand_as(got.s_pred)
    assert got.s_pred.shape == (3, 3, K) and not got.s_pred.requires_grad
    torch.testing.assert_close(torch.where(valid, got.s_pred, 0.0), want_s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.s_max, want_max, atol=1e-5, rtol=1e-5)
    assert bool((got.s_pred[..., 0] <= got.s_max).all())
    one = Prompts(prompts.ids, prompts.mask, prompts.target)
    logp, s_one = policy_forward(model, one, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=chunk, packed_tokens=packed)
    torch.testing.assert_close(got.logp_new.detach(), logp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.s_pred[..., 0], s_one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('chunk,packed', [(None, None), (4, 4096)])
def test_without_targets_policy_scores_is_policy_forward_bit_for_bit(chunk, packed):
    """No targets, no greedy: the same operations as the one-target forward, so rtol = atol = 0."""
    model = build_tiny_model('llama', VOCAB).eval()
    prompts, ro = _inputs()
    one = Prompts(prompts.ids, prompts.mask, prompts.target)
    got = policy_scores(model, one, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=chunk, packed_tokens=packed)
    logp, s_pred = policy_forward(
        model, one, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=chunk, packed_tokens=packed
    )
    assert got.s_pred.shape == (3, 3, 1) and got.s_max is None
    assert torch.equal(got.logp_new, logp) and torch.equal(got.s_pred[..., 0], s_pred)


def test_nothink_horizon_against_loop_reference():
    """log p(x_{t+j} | prefix, x_t .. x_{t+j-1}) from one plain forward per position (no opening tag); j = 0 is the
    one-target no-think score."""
    model = build_tiny_model('llama', VOCAB).eval()
    prompts, _ = _inputs()
    got = nothink_horizon(model, prompts)
    assert got.shape == (3, K)
    with torch.no_grad():
        for i in range(3):
            prefix = prompts.ids[i][prompts.mask[i].bool()][:-1]
            m = int(prompts.targets_valid[i].sum())
            seq = torch.cat([prefix, prompts.targets[i, : m - 1]])
            logp = torch.log_softmax(model(input_ids=seq[None]).logits[0].float(), -1)
            want = torch.stack([logp[len(prefix) - 1 + h, prompts.targets[i, h]] for h in range(m)])
            torch.testing.assert_close(got[i, :m], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, 0], nothink_logprob(model, prompts), atol=1e-5, rtol=1e-5)
