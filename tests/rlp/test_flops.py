"""rlp.flops: the FLOP count of a step against a hand count on a tiny model and a token-by-token loop reference.

Checked: (1) the sizes read from a tiny Llama (GQA, tied head) and a tiny GPT-2 (Conv1D layers) equal the ones
written out by hand from their configs; (2) next-token FLOPs of a 3-token row equal the formula evaluated by hand;
(3) the RLP parts (prefill, decode, teacher, policy unpacked and packed) equal a reference that walks every token
fed to the model and adds the keys it attends, including a thought closed at once (nothing decoded), a truncated one
(the forced close is never fed) and a packed budget that splits a prompt's thoughts over two rows; (4) ``rlp_loss``
reports the count of what it sampled (the reference applied to its own prompts and thoughts); (5) with a ``horizon``
reward the extra target tokens of the policy and teacher forwards are counted (the reference walks them too).
"""

from __future__ import annotations

import pytest

from rlp.config import RewardConfig
from rlp.flops import FlopModel, causal_keys, forward_flops, ntp_flops, rlp_flops
from rlp.step import rlp_loss
from rlp.teacher import Teachers
from rlp.template import resolve_template
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, close_biased, rlp_config, skipping_batch
from tests.helpers.tiny_models import build_tiny_model

FM = FlopModel(n_body=1000, n_head=300, layers=2, attn_width=8)


def test_sizes_of_tiny_models_by_hand():
    """Llama d 32, 4 heads of 8, 2 KV heads, MLP 64, 2 layers, V 512; GPT-2 d 32, 2 layers, MLP 128, V 512."""
    d, hd, kv, ff, layers, v = 32, 8, 2, 64, 2, VOCAB
    per_layer = d * d + 2 * d * kv * hd + d * d + 3 * d * ff  # q, k, v, o, gate/up/down
    assert FlopModel.of(build_tiny_model('llama', VOCAB)) == FlopModel(
        n_body=layers * per_layer, n_head=d * v, layers=layers, attn_width=4 * hd
    )
    gpt2_layer = d * 3 * d + d * d + 2 * d * 4 * d  # c_attn (qkv), c_proj, c_fc, mlp c_proj
    assert FlopModel.of(build_tiny_model('gpt2', VOCAB)) == FlopModel(
        n_body=layers * gpt2_layer, n_head=d * v, layers=layers, attn_width=d
    )


def test_ntp_by_hand():
    """A 3-token row: 3 x (2*1000*3 + 2*300*3 + 4*8*2*(1+2+3)) = 3 x 9984; two rows add; no row is 0."""
    assert ntp_flops(FM, [3]) == 3 * (6000 + 1800 + 384)
    assert ntp_flops(FM, [3, 3]) == 2 * ntp_flops(FM, [3])
    assert ntp_flops(FM, []) == 0.0


def _reference(prompt_lens, lengths, truncated, teacher_forwards, packed_tokens, fm=FM, horizon=None, tags=(1, 1)):
    def _fwd(keys_per_token: list[int], logits: int) -> float:
        """Forward FLOPs by walking tokens: each token its body matmuls and its attention over the keys it sees."""
        attn = sum(4.0 * fm.attn_width * fm.layers * k for k in keys_per_token)
        return 2.0 * fm.n_body * len(keys_per_token) + attn + 2.0 * fm.n_head * logits

    prefill = decode = teacher = policy = 0.0
    for p, (lp, row_n, row_t) in enumerate(zip(prompt_lens, lengths, truncated)):
        m = 1 if horizon is None else horizon[p]  # targets x_t .. x_{t+m-1} scored
        prompt_keys = [i + 1 for i in range(lp)]
        prefill += _fwd(prompt_keys, min(tags[0] + 1, lp))  # logits from before the opening tag to its last token
        if horizon is None:
            teacher += teacher_forwards * _fwd(prompt_keys, 1)
        else:  # the prefix without the opening tag, then x_t .. x_{t+m-2}; m logit rows
            teacher += teacher_forwards * _fwd([i + 1 for i in range(lp - tags[0] + m - 1)], m)
        for n, trunc in zip(row_n, row_t):
            sampled = n - tags[1] if trunc else n  # a forced close appends the closing tag's tokens
            # token j (0-based) is fed back for j < sampled - 1 and sees the prompt plus thought tokens 0..j
            decode += _fwd([lp + j + 1 for j in range(sampled - 1)], sampled - 1)
            if packed_tokens is None:  # prompt, thought, x_t .. x_{t+m-1}
                policy += 3 * _fwd([i + 1 for i in range(lp + n + m)], n + m)
        if packed_tokens is not None:
            used, rows = None, 0
            for n in row_n:  # greedy rows: a new row (the prompt again) when the next thought does not fit
                span = n + m - 1  # the thought, then x_t .. x_{t+m-2} in its segment
                if used is None or used + span > packed_tokens:
                    rows, used = rows + 1, lp
                    policy += 3 * _fwd(prompt_keys, 0)
                policy += 3 * _fwd([lp + j + 1 for j in range(span)], n + m)
                used += span
    return {'rollout_prefill': prefill, 'rollout_decode': decode, 'teacher': teacher, 'policy': policy}


@pytest.mark.parametrize('packed', [None, 12, 4096])
@pytest.mark.parametrize('teachers', [1, 2])
def test_rlp_parts_against_token_loop(packed, teachers):
    """Two prompts (5 and 1 tokens), thoughts of 1 (closed at once), 4, 5 (truncated at 4 sampled) and 3 tokens;
    budget 12 splits the first prompt's thoughts (5 + 1 + 4 fits, + 5 does not)."""
    prompt_lens, lengths, truncated = [5, 1], [[1, 4, 5], [3, 1, 2]], [[False, False, True], [False, False, True]]
    got = rlp_flops(FM, prompt_lens, lengths, truncated, teacher_forwards=teachers, packed_tokens=packed)
    want = _reference(prompt_lens, lengths, truncated, teachers, packed)
    assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-12)
    assert got['total'] == pytest.approx(sum(want.values()), rel=1e-12)
    assert all(v > 0 for v in want.values())


@pytest.mark.parametrize('packed', [None, 12])
def test_horizon_parts_against_token_loop(packed):
    """A horizon reward with m = 3 and 1 targets (a document ending right after x_t): the policy carries
    x_t .. x_{t+m-2} after each thought (budget 12 then splits differently), the teacher runs the prefix and
    x_t .. x_{t+m-2}; m = 1 everywhere with ``horizon=None`` is the one-target count."""
    prompt_lens, lengths, truncated = [5, 2], [[1, 4, 5], [3, 1, 2]], [[False, False, True], [False, False, True]]
    for teachers in (1, 2):
        got = rlp_flops(FM, prompt_lens, lengths, truncated, teacher_forwards=teachers, packed_tokens=packed,
                        horizon=[3, 1])  # fmt: skip
        want = _reference(prompt_lens, lengths, truncated, teachers, packed, horizon=[3, 1])
        assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-12)
    one = rlp_flops(FM, prompt_lens, lengths, truncated, packed_tokens=packed)
    assert got['policy'] > one['policy'] and got['rollout_decode'] == one['rollout_decode']


@pytest.mark.parametrize('horizon', [None, [3, 1]])
def test_text_tags_against_token_loop(horizon):
    """Tags written as text: a 3-token opening and a 2-token closing string (prompts of 6 and 4 tokens, truncated
    thoughts of 4 sampled + 2 forced tokens): the prefill keeps 4 logit rows, a truncated thought feeds back 3
    tokens, the horizon teacher runs the prompt without its 3 opening tokens."""
    prompt_lens, lengths, truncated = [6, 4], [[2, 4, 6], [3, 2, 6]], [[False, False, True], [False, False, True]]
    got = rlp_flops(FM, prompt_lens, lengths, truncated, horizon=horizon, open_len=3, close_len=2)
    want = _reference(prompt_lens, lengths, truncated, 1, None, horizon=horizon, tags=(3, 2))
    assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-12)
    single = rlp_flops(FM, prompt_lens, lengths, truncated, horizon=horizon)
    assert got['rollout_decode'] < single['rollout_decode'] and got['rollout_prefill'] > single['rollout_prefill']


def test_causal_keys_and_forward():
    """Closed forms against sums; forward_flops is linear in its three counts."""
    assert [causal_keys(n, p) for n, p in ((0, 3), (1, 0), (4, 0), (3, 5))] == [0, 1, 10, 3 * 5 + 6]
    assert forward_flops(FM, 1, 0, 0) == 2000 and forward_flops(FM, 0, 1, 0) == 64 and forward_flops(FM, 0, 0, 1) == 600


@pytest.mark.parametrize('packed, reward', [(None, 'info_gain'), (4096, 'info_gain'), (4096, 'horizon')])
def test_rlp_loss_reports_the_count_of_what_it_ran(tokenizer, packed, reward):
    """stats' four flops fields = the reference on the call's prompts (target - start + opening tag) and thoughts;
    with a horizon reward (k 4) on the targets that exist in each position's document (counted here by a loop)."""
    cfg = rlp_config(tokenizer)
    cfg.loss.packed_forward_tokens = packed
    if reward == 'horizon':
        cfg.reward = RewardConfig(kind='horizon', horizon=4, discount=0.7)
    model = close_biased(build_tiny_model('llama', VOCAB), CLOSE_ID, 2.0).train()
    teachers = Teachers(cfg.teacher.kind, cfg.teacher.tau)
    teachers.ensure(model)
    template = resolve_template(tokenizer, cfg.template)
    batch = skipping_batch(tokenizer)
    _, stats = rlp_loss(model, teachers, batch, cfg, template, key=(3, 0), keep_samples=True)
    s = stats.samples
    prompt_lens = (s.target - s.start + 1).tolist()
    horizon = None
    if reward == 'horizon':
        seg, horizon = batch['segment_ids'], []
        for r, t in zip(s.row.tolist(), s.target.tolist()):
            m = 1
            while m < 4 and t + m < seg.shape[1] and seg[r, t + m] == seg[r, t]:
                m += 1
            horizon.append(m)
        assert max(horizon) == 4
    want = _reference(prompt_lens, s.lengths.tolist(), s.truncated.tolist(), 1, packed, fm=FlopModel.of(model),
                      horizon=horizon)  # fmt: skip
    got = {'rollout_prefill': stats.flops_prefill, 'rollout_decode': stats.flops_decode,
           'teacher': stats.flops_teacher, 'policy': stats.flops_policy}  # fmt: skip
    assert got == pytest.approx(want, rel=1e-12)
    assert stats.flops == pytest.approx(sum(want.values()), rel=1e-12)
    assert len(prompt_lens) > 0 and want['policy'] > 0
