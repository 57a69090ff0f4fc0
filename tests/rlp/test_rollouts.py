"""rlp.rollouts and rlp.scoring on tiny Llama / Qwen3 / GPT-2 models and a tiny hybrid Nemotron-H (Mamba2 + attention).

Checked against references written here: per-rollout full forwards WITHOUT cache or padding (the KV-cache
sharing and left padding must give the same log-probs, no-think log-probs and S_pred); the closing-tag stop and
force-close rules; keyed determinism (batched positions == one position at a time); eval mode restored; the
inverse-CDF sampler against softmax(l/T) frequencies and the top-p nucleus; synced decoding on 2 processes.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from rlp.config import PositionsConfig, TemplateConfig
from rlp.positions import select_positions
from rlp.rollouts import build_prompts, rollout_uniforms, sample_from_logits, sample_thoughts
from rlp.scoring import nothink_entropy, nothink_horizon, nothink_logprob, policy_forward
from rlp.template import resolve_template
from tests.helpers.rlp_batches import VOCAB, close_biased, packed_batch
from tests.helpers.tiny_models import TINY_KINDS, build_tiny_model

TEXT_TAGS = TemplateConfig(tags='text', open_tag=' Hmm,', close_tag=' so)')  # 5 and 2 tokens of the bundled tokenizer


def _setup(tokenizer, kind, bias=2.0, rows=3, length=48, k=2, instruction='Think.', tags=None):
    cfg = TemplateConfig(instruction=instruction) if tags is None else tags
    tpl = resolve_template(tokenizer, cfg)
    model = close_biased(build_tiny_model(kind, VOCAB), tpl.close_ids[0], bias)
    with torch.no_grad():  # every token of the closing sequence gets the bias
        model.get_output_embeddings().bias[list(tpl.close_ids)] = bias
    batch = packed_batch(tokenizer, rows, length)
    keys = [str(int(s)) for s in batch['sample_id']]
    pos = select_positions(
        batch['input_ids'],
        batch['segment_ids'],
        keys,
        PositionsConfig(unit='sample', k=k, min_context=4),
        tpl.excluded_targets,
        seed=0,
        batch_index=3,
    )
    prompts = build_prompts(batch['input_ids'], pos, tpl, pad_id=0)
    rkeys = [(0, 3, keys[r], t) for r, t in zip(pos.row.tolist(), pos.target.tolist())]
    return tpl, model, batch, pos, prompts, rkeys


def _unpadded_prompt(prompts, i):
    return prompts.ids[i][prompts.mask[i].bool()]


@pytest.mark.parametrize('kind', [*TINY_KINDS, 'nemotron_h'])
def test_shared_cache_matches_full_forward(tokenizer, kind):
    """Sampler log-probs, no-think log-probs, policy_forward log-probs and S_pred all equal per-rollout full
    forwards of the unpadded sequence without any cache (eval mode, float32 tolerance). For Nemotron-H this checks
    the per-rollout Mamba2 states (the prompt's state repeated G times, rows dropped as thoughts close) next to the
    shared-prefix attention layers, and left padding through the Mamba2 layers."""
    tpl, model, _, _, prompts, rkeys = _setup(tokenizer, kind)
    g, temp = 3, 0.7
    ro = sample_thoughts(
        model,
        prompts,
        rollout_uniforms(rkeys, g, 6),
        temperature=temp,
        top_p=1.0,
        close_ids=tpl.close_ids,
        pad_id=0,
    )
    assert 0 < ro.truncated.float().mean() < 1, 'the bias should give a mix of closed and truncated thoughts'
    model.eval()
    logp_new, s_pred = policy_forward(model, prompts, ro, temperature=temp, pad_id=0)
    nothink = nothink_logprob(model, prompts)
    with torch.no_grad():
        for i in range(len(prompts)):
            prompt = _unpadded_prompt(prompts, i)
            ref_nt = torch.log_softmax(model(prompt[None]).logits[0, -2], -1)[prompts.target[i]]
            torch.testing.assert_close(ro.nothink_logp[i], ref_nt, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(nothink[i], ref_nt, atol=1e-5, rtol=1e-5)
            for j in range(g):
                n = int(ro.lengths[i, j])
                thought = ro.tokens[i, j, :n]
                seq = torch.cat([prompt, thought, prompts.target[i : i + 1]])
                logits = model(seq[None]).logits[0]
                lp = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + n] / temp, -1)
                ref = lp.gather(-1, thought[:, None]).squeeze(-1)
                m = ro.mask[i, j, :n]
                torch.testing.assert_close(ro.logp[i, j, :n][m], ref[m], atol=2e-5, rtol=1e-5)
                torch.testing.assert_close(logp_new[i, j, :n], ref, atol=2e-5, rtol=1e-5)
                ref_pred = torch.log_softmax(logits[-2], -1)[prompts.target[i]]
                torch.testing.assert_close(s_pred[i, j], ref_pred, atol=2e-5, rtol=1e-5)


def test_text_tags_stop_on_the_closing_sequence(tokenizer):
    """Tags written as text (``rlp.template.tags: text``): each prompt ends with the opening string's tokens; the
    sampler's thoughts equal a loop reference that draws one token at a time from full forwards (no cache, no
    padding) with the same uniforms and stops right after the last K sampled tokens are the closing string's K
    tokens; a thought without them gets the whole closing sequence appended, untrained, and is flagged truncated.
    Then the policy's log-probs and S_pred after a multi-token closing tag equal full forwards of
    ``prompt thought x_t``, and every no-think prediction (the sampler's prefill, ``nothink_logprob``,
    ``nothink_horizon`` over x_t, x_{t+1}) is read before the whole opening string: a full forward of the prefix."""
    tpl, model, _, _, prompts, rkeys = _setup(tokenizer, 'llama', bias=5.0, tags=TEXT_TAGS)
    close, k = list(tpl.close_ids), len(tpl.close_ids)
    assert k == 2 and len(tpl.open_ids) == 5 and tpl.text_tags
    g, steps, temp = 4, 10, 1.0
    u = rollout_uniforms(rkeys, g, steps)
    ro = sample_thoughts(model, prompts, u, temperature=temp, top_p=1.0, close_ids=close, pad_id=0)
    model.eval()
    logp_new, s_pred = policy_forward(model, prompts, ro, temperature=temp, pad_id=0)
    nothink = nothink_logprob(model, prompts)
    second = torch.arange(len(prompts)) % 7 + 20  # an arbitrary x_{t+1} per position
    two = dataclasses.replace(prompts, targets=torch.stack([prompts.target, second], 1),
                              targets_valid=torch.ones(len(prompts), 2, dtype=torch.bool))  # fmt: skip
    horizon = nothink_horizon(model, two)
    with torch.no_grad():
        for i in range(len(prompts)):
            prompt = _unpadded_prompt(prompts, i)
            assert prompt[-5:].tolist() == list(tpl.open_ids) and prompts.open_len == 5
            prefix_logp = torch.log_softmax(
                model(torch.cat([prompt[:-5], prompts.target[i : i + 1]])[None]).logits[0], -1
            )
            ref_nt = prefix_logp[-2, prompts.target[i]]
            for got in (ro.nothink_logp[i], nothink[i], horizon[i, 0]):
                torch.testing.assert_close(got, ref_nt, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(horizon[i, 1], prefix_logp[-1, second[i]], atol=1e-5, rtol=1e-5)
            for j in range(g):
                seq, drawn = prompt, []
                for s in range(steps):
                    tok, _ = sample_from_logits(model(seq[None]).logits[:, -1], u[i, j, s : s + 1], temp)
                    drawn.append(int(tok))
                    seq = torch.cat([seq, tok])
                    if drawn[-k:] == close:
                        break
                cut = drawn[-k:] != close
                n = int(ro.lengths[i, j])
                assert bool(ro.truncated[i, j]) == cut
                assert ro.tokens[i, j, :n].tolist() == drawn + (close if cut else [])
                assert ro.mask[i, j, :n].tolist() == [True] * len(drawn) + [False] * (k if cut else 0)
                thought = ro.tokens[i, j, :n]
                logits = model(torch.cat([prompt, thought, prompts.target[i : i + 1]])[None]).logits[0]
                ref = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + n] / temp, -1)
                ref = ref.gather(-1, thought[:, None]).squeeze(-1)
                torch.testing.assert_close(logp_new[i, j, :n], ref, atol=2e-5, rtol=1e-5)
                ref_pred = torch.log_softmax(logits[-2], -1)[prompts.target[i]]
                torch.testing.assert_close(s_pred[i, j], ref_pred, atol=2e-5, rtol=1e-5)
    closed = ~ro.truncated
    assert closed.any() and ro.truncated.any(), 'the bias should give a mix of closed and truncated thoughts'
    assert (ro.lengths[closed] >= k).all() and (ro.lengths[ro.truncated] == steps + k).all()


def test_stop_and_force_close_rules(tokenizer):
    """A sampled closing tag ends the thought and is trained; after it only padding; a thought that reaches
    max_thought_tokens gets a forced, untrained closing tag and is flagged truncated."""
    tpl, model, _, _, prompts, rkeys = _setup(tokenizer, 'llama', bias=2.0)
    ro = sample_thoughts(
        model,
        prompts,
        rollout_uniforms(rkeys, 4, 5),
        temperature=1.0,
        top_p=1.0,
        close_ids=tpl.close_ids,
        pad_id=0,
    )
    for i in range(len(prompts)):
        for j in range(4):
            n = int(ro.lengths[i, j])
            row, m = ro.tokens[i, j], ro.mask[i, j]
            assert row[n - 1] == tpl.close_ids[0] and (row[: n - 1] != tpl.close_ids[0]).all()
            assert (row[n:] == 0).all() and not m[n:].any()
            if ro.truncated[i, j]:
                assert n == 6 and m[:5].all() and not m[5]  # 5 sampled tokens + forced close
                assert ro.logp[i, j, 5] == 0
            else:
                assert n <= 5 and m[:n].all()  # sampled close is trained
    assert ro.truncated.any() and (~ro.truncated).any()
    never = close_biased(build_tiny_model('gpt2', VOCAB), tpl.close_ids[0], -50.0)
    ro2 = sample_thoughts(
        never,
        prompts,
        rollout_uniforms(rkeys, 2, 3),
        temperature=1.0,
        top_p=1.0,
        close_ids=tpl.close_ids,
        pad_id=0,
    )
    assert ro2.truncated.all() and (ro2.lengths == 4).all() and ro2.decode_steps == 2
    always = close_biased(build_tiny_model('qwen3', VOCAB), tpl.close_ids[0], 50.0)
    ro3 = sample_thoughts(
        always,
        prompts,
        rollout_uniforms(rkeys, 2, 3),
        temperature=1.0,
        top_p=1.0,
        close_ids=tpl.close_ids,
        pad_id=0,
    )
    assert (ro3.lengths == 1).all() and ro3.mask[..., 0].all() and ro3.decode_steps == 0  # empty thought


def test_keyed_determinism_batched_equals_one_by_one_and_mode_restored(tokenizer):
    """Same keys -> same thoughts; sampling all positions together equals sampling each position alone;
    train mode is restored and nothing requires grad."""
    tpl, model, batch, pos, prompts, rkeys = _setup(tokenizer, 'qwen3', bias=1.5)
    model.train()
    kw = dict(temperature=0.7, top_p=0.9, close_ids=tpl.close_ids, pad_id=0)
    u = rollout_uniforms(rkeys, 3, 6)
    a = sample_thoughts(model, prompts, u, **kw)
    b = sample_thoughts(model, prompts, rollout_uniforms(rkeys, 3, 6), **kw)
    assert model.training
    assert torch.equal(a.tokens, b.tokens) and not a.logp.requires_grad
    for i in range(len(prompts)):
        sub = build_prompts(
            batch['input_ids'], type(pos)(pos.row[i : i + 1], pos.target[i : i + 1], pos.start[i : i + 1], 1, 0), tpl, 0
        )
        one = sample_thoughts(model, sub, u[i : i + 1], **kw)
        n = one.tokens.shape[-1]
        assert torch.equal(one.tokens[0], a.tokens[i, :, :n]), f'position {i} differs when sampled alone'
    other = sample_thoughts(model, prompts, rollout_uniforms([k + ('x',) for k in rkeys], 3, 6), **kw)
    assert not torch.equal(other.tokens, a.tokens)


def test_sampler_matches_tempered_softmax_and_top_p():
    """Inverse-CDF draws follow softmax(l/T) (frequencies within 4 sigma) and never leave the top-p nucleus."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    n = 20000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    tok, lp = sample_from_logits(logits.expand(n, -1), u, temperature=0.7)
    p = torch.softmax(logits[0] / 0.7, -1)
    freq = torch.bincount(tok, minlength=5).double() / n
    assert torch.all((freq - p).abs() <= 4 * torch.sqrt(p * (1 - p) / n) + 1e-4)
    torch.testing.assert_close(lp, torch.log(p)[tok])
    tok_p, _ = sample_from_logits(logits.expand(n, -1), u, temperature=1.0, top_p=0.7)
    p1 = torch.softmax(logits[0], -1)  # 0.64, 0.24, ...: the nucleus for 0.7 is tokens {0, 1}
    assert set(tok_p.tolist()) == {0, 1}
    assert abs((tok_p == 0).double().mean() - p1[0] / (p1[0] + p1[1])) < 0.02


def test_nothink_entropy_stays_inside_documents(tokenizer):
    """Entropies equal those of each document run alone; document starts are -inf."""
    batch = packed_batch(tokenizer, 2, 40)
    model = build_tiny_model('llama', VOCAB).eval()
    ent = nothink_entropy(model, batch['input_ids'], batch['segment_ids'], pad_id=0)
    r = 1
    seg = batch['segment_ids'][r]
    d = int(seg.max())
    idx = (seg == d).nonzero().flatten()
    with torch.no_grad():
        lp = torch.log_softmax(model(batch['input_ids'][r, idx][None]).logits[0], -1)
    ref = -(lp.exp() * lp).sum(-1)
    torch.testing.assert_close(ent[r, idx[1:]], ref[:-1], atol=1e-5, rtol=1e-5)
    assert ent[r, idx[0]] == -torch.inf


def _synced_worker(rank, world, port, out_dir, prompts, rkeys, close_id):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world)
    try:
        model = close_biased(build_tiny_model('llama', VOCAB), close_id, 50.0 if rank == 0 else -50.0)
        ro = sample_thoughts(
            model,
            prompts,
            rollout_uniforms(rkeys, 2, 5),
            temperature=1.0,
            top_p=1.0,
            close_ids=[close_id],
            pad_id=0,
            synced=True,
        )
        torch.save({'steps': ro.decode_steps, 'lengths': ro.lengths}, os.path.join(out_dir, f'{rank}.pt'))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_synced_decoding_keeps_ranks_in_step(tokenizer, tmp_path):
    """Two gloo ranks: rank 0's thoughts close at once, rank 1's never; both run the same number of decode
    steps (all-reduced stop), and rank 0's results are unchanged by the extra steps."""
    import socket

    import torch.multiprocessing as mp

    tpl, _, _, _, prompts, rkeys = _setup(tokenizer, 'llama')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_synced_worker, args=(2, port, str(tmp_path), prompts, rkeys, tpl.close_ids[0]), nprocs=2)
    r0, r1 = torch.load(tmp_path / '0.pt'), torch.load(tmp_path / '1.pt')
    assert r0['steps'] == r1['steps'] == 4
    assert (r0['lengths'] == 1).all() and (r1['lengths'] == 6).all()


def test_closed_thoughts_leave_the_decoded_batch(tokenizer):
    """Each decode step runs only the rows whose thought is still open: the batch size of every decoder forward
    equals the number of rollouts that had not closed before it (counted from the returned lengths)."""
    tpl, model, _, _, prompts, rkeys = _setup(tokenizer, 'llama', bias=4.0)
    g, steps = 4, 10
    sizes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw['input_ids'].shape), with_kwargs=True)
    ro = sample_thoughts(model, prompts, rollout_uniforms(rkeys, g, steps), temperature=1.0, top_p=1.0,
                         close_ids=tpl.close_ids, pad_id=0)  # fmt: skip
    hook.remove()
    lengths = ro.lengths.flatten()
    decode = [s[0] for s in sizes[1:]]  # sizes[0] is the prefill of the P prompts
    assert decode == [int((lengths > s + 1).sum()) for s in range(len(decode))]
    assert decode[0] < len(prompts) * g  # some thoughts closed after one token, so the batch did shrink


@pytest.mark.parametrize('kind', ['llama', 'qwen3', 'nemotron_h'])
def test_shared_prefix_decoding_equals_the_expanded_cache(tokenizer, kind):
    """The same prompts and uniforms decoded with the shared-prefix cache (each prompt's KV once) and with an ordinary
    cache expanded G times: the same tokens, lengths and truncation flags, log-probs within float32 rounding, with
    thoughts closing at different steps (rows leave both batches); the model's attention setting is unchanged."""
    tpl, model, _, _, prompts, rkeys = _setup(tokenizer, kind, bias=3.0)
    u = rollout_uniforms(rkeys, 4, 8)
    kw = dict(temperature=0.8, top_p=0.9, close_ids=tpl.close_ids, pad_id=0)
    shared = sample_thoughts(model, prompts, u, shared_prefix=True, **kw)
    expanded = sample_thoughts(model, prompts, u, shared_prefix=False, **kw)
    assert 1 < len(set(shared.lengths.flatten().tolist())), 'thoughts should close at different steps'
    assert torch.equal(shared.tokens, expanded.tokens) and torch.equal(shared.lengths, expanded.lengths)
    assert torch.equal(shared.truncated, expanded.truncated) and shared.decode_steps == expanded.decode_steps
    torch.testing.assert_close(shared.logp, expanded.logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.nothink_logp, expanded.nothink_logp)
    assert model.config._attn_implementation == 'eager'


def test_shared_prefix_refused_for_a_model_without_it(tokenizer):
    """shared_prefix=True on GPT-2 (its attention does not take the shared-prefix cache): a ValueError saying so."""
    tpl, model, _, _, prompts, rkeys = _setup(tokenizer, 'gpt2')
    with pytest.raises(ValueError, match='shared_prefix=True needs a Llama, Qwen2, Qwen3 or Nemotron-H model'):
        sample_thoughts(model, prompts, rollout_uniforms(rkeys, 2, 4), temperature=1.0, top_p=1.0,
                        close_ids=tpl.close_ids, pad_id=0, shared_prefix=True)  # fmt: skip
