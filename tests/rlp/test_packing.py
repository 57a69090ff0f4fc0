"""rlp.packing: the shared-prefix training forward (a prompt once, then its thoughts, under a block mask).

Checked against a loop-based reference (tests/helpers/policy_reference.py: one unpadded forward per rollout, full
logits) and against the unpacked path of rlp.scoring.policy_forward: the thought log-probs, S_pred and the gradients
of every parameter of a weighted sum of the log-probs (fp32, atol 1e-5), on tiny Llama / Qwen3 / GPT-2 / Mistral /
Qwen2 models with eager and sdpa attention; prompts of different lengths, thoughts of different lengths including an
empty one (closing tag only) and a truncated one (force-closed, last token untrained), rows split by the token cap,
chunked and unchunked scoring. The mask and the layout against loop-written ones; models that cannot take a custom
mask (flash attention, an architecture outside the list, a sliding window) are detected and keep the unpacked path.
"""

from __future__ import annotations

import pytest
import torch

from rlp import packing, scoring
from rlp.packing import block_mask, pack_rows, supports_block_mask
from rlp.rollouts import Prompts, Rollouts
from rlp.scoring import policy_forward
from tests.helpers.policy_reference import loop_policy_logprobs, param_grads
from tests.helpers.tiny_models import build_tiny_model

VOCAB, PAD, TEMP, WIDTH = 512, 0, 0.7, 6


def _inputs(seed=0):
    """P = 3 prompts of 7, 4, 9 tokens; G = 4 thoughts of lengths up to WIDTH: row 0 has an empty thought (the
    closing tag only, trained) and a truncated one (WIDTH tokens, the forced closing tag untrained)."""
    gen = torch.Generator().manual_seed(seed)
    lens_p, g = [7, 4, 9], 4
    lp = max(lens_p)
    ids = torch.full((3, lp), PAD)
    mask = torch.zeros((3, lp), dtype=torch.long)
    for i, n in enumerate(lens_p):
        ids[i, lp - n :] = torch.randint(1, VOCAB, (n,), generator=gen)
        mask[i, lp - n :] = 1
    prompts = Prompts(ids=ids, mask=mask, target=torch.randint(1, VOCAB, (3,), generator=gen))
    lengths = torch.randint(1, WIDTH + 1, (3, g), generator=gen)
    lengths[0, 0], lengths[0, 1], lengths[1, 2] = 1, WIDTH, WIDTH
    tokens = torch.randint(1, VOCAB, (3, g, WIDTH), generator=gen)
    valid = torch.arange(WIDTH) < lengths.unsqueeze(-1)
    tokens = torch.where(valid, tokens, PAD)
    truncated = torch.zeros((3, g), dtype=torch.bool)
    truncated[0, 1] = True
    trained = valid.clone()
    trained[0, 1, WIDTH - 1] = False
    ro = Rollouts(
        tokens=tokens,
        logp=torch.zeros((3, g, WIDTH)),
        mask=trained,
        lengths=lengths,
        truncated=truncated,
        nothink_logp=torch.zeros(3),
        decode_steps=WIDTH,
    )
    return prompts, ro


def _model(kind, attn='eager'):
    if kind in ('mistral', 'qwen2'):
        from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

        cls = MistralConfig if kind == 'mistral' else Qwen2Config
        cfg = cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                  sliding_window=None)  # fmt: skip
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    else:
        model = build_tiny_model(kind, VOCAB)
        model.config._attn_implementation = attn
    return model.eval()  # eval: GPT-2's dropout off; gradients still flow


@pytest.mark.parametrize(
    'kind,attn',
    [('llama', 'eager'), ('llama', 'sdpa'), ('qwen3', 'eager'), ('qwen3', 'sdpa'), ('gpt2', 'eager'),
     ('gpt2', 'sdpa'), ('mistral', 'sdpa'), ('qwen2', 'eager')],
)  # fmt: skip
@pytest.mark.parametrize('chunk,max_tokens', [(4, None), (None, None), (4, 16)])
def test_packed_equals_loop_reference_and_unpacked_path(kind, attn, chunk, max_tokens, monkeypatch):
    """Packed forward == loop reference == unpacked path: log-probs, S_pred and every parameter's gradient.
    ``max_tokens`` 16 spreads a prompt's thoughts over several rows."""
    model = _model(kind, attn)
    assert supports_block_mask(model)
    prompts, ro = _inputs()
    weights = torch.randn(ro.tokens.shape, generator=torch.Generator().manual_seed(1)) * ro.mask
    ref_logp, ref_s = loop_policy_logprobs(model, prompts, ro, TEMP)
    ref_g = param_grads(model, ref_logp, weights)
    unp_logp, unp_s = policy_forward(model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=chunk)
    unp_g = param_grads(model, unp_logp, weights)

    calls = []
    real = packing.packed_policy_forward
    monkeypatch.setattr(scoring, 'packed_policy_forward', lambda *a, **k: calls.append(1) or real(*a, **k))
    logp, s_pred = policy_forward(
        model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=chunk, packed_tokens=max_tokens or 4096
    )
    assert calls == [1] and not s_pred.requires_grad and logp.shape == ro.tokens.shape
    for want_logp, want_s in ((ref_logp.detach(), ref_s), (unp_logp.detach(), unp_s)):
        torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s_pred, want_s, atol=1e-5, rtol=1e-5)
    got_g = param_grads(model, logp, weights)
    assert got_g.keys() == ref_g.keys()
    for k in ref_g:
        torch.testing.assert_close(got_g[k], ref_g[k], atol=1e-5, rtol=1e-4, msg=k)
        torch.testing.assert_close(got_g[k], unp_g[k], atol=1e-5, rtol=1e-4, msg=k)


def test_layout_against_loop_written_rows():
    """pack_rows: every row is prompt then whole thoughts (cap 16 tokens, >= 1 thought per row), positions restart
    at the prompt's end for each thought, and every source index points at the token before the one it scores."""
    prompts, ro = _inputs()
    rows = pack_rows(prompts, ro, PAD, max_tokens=16)
    w = rows.ids.shape[1]
    flat_ids, flat_pos, flat_seg = rows.ids.view(-1), rows.position_ids.view(-1), rows.segment.view(-1)
    for i in range(3):
        pr = prompts.ids[i][prompts.mask[i].bool()].tolist()
        for j in range(4):
            n = int(ro.lengths[i, j])
            seq = pr + ro.tokens[i, j, :n].tolist()  # the unpacked sequence, without x_t
            srcs = rows.thought_src[i, j, :n].tolist() + [int(rows.s_pred_src[i, j])]
            r = srcs[0] // w
            assert all(s // w == r for s in srcs)  # one row
            assert flat_ids[srcs[0]] == pr[-1] and flat_pos[srcs[0]] == len(pr) - 1 and flat_seg[srcs[0]] == 0
            for k, s in enumerate(srcs[1:], 1):  # the token at the source is the thought's token k - 1
                assert int(flat_ids[s]) == seq[len(pr) + k - 1] and int(flat_pos[s]) == len(pr) + k - 1
                assert int(flat_seg[s]) > 0
            assert rows.ids[r][: len(pr)].tolist() == pr
    for r in range(rows.ids.shape[0]):
        used = int((rows.segment[r] >= 0).sum())
        assert used <= 16 or int(rows.segment[r].max()) == 1
    assert rows.tokens == rows.ids.numel()


def test_block_mask_against_loop():
    """allowed(q, j) written out with loops, for segments with a prompt, two thoughts and padding."""
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, -1, -1], [0, 0, 1, 2, 3, 3, 3, 3, 3, 3]])
    got = block_mask(seg)
    for r in range(2):
        for q in range(10):
            for j in range(10):
                sq, sj = int(seg[r, q]), int(seg[r, j])
                want = (j <= q and sj in (0, sq) and sq >= 0 and sj >= 0) or j == q
                assert bool(got[r, 0, q, j]) == want, (r, q, j)
    add = block_mask(seg, torch.float32)
    assert add.dtype == torch.float32 and torch.equal(add == 0, got)
    assert float(add.min()) == torch.finfo(torch.float32).min


def test_unsupported_models_keep_the_unpacked_path(monkeypatch):
    """Flash attention, a sliding window and an architecture outside the list are detected; policy_forward then
    runs the unpacked path (never the packed one) and still equals the loop reference."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    flash = _model('llama')
    flash.config._attn_implementation = 'flash_attention_2'
    window = _model('mistral')
    window.config.sliding_window = 4
    torch.manual_seed(0)
    neox = AutoModelForCausalLM.from_config(
        GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=512),
        attn_implementation='eager',
    ).eval()  # fmt: skip
    assert not any(supports_block_mask(m) for m in (flash, window, neox))
    monkeypatch.setattr(scoring, 'packed_policy_forward', lambda *a, **k: pytest.fail('packed path used'))
    prompts, ro = _inputs()
    ref_logp, ref_s = loop_policy_logprobs(neox, prompts, ro, TEMP)
    logp, s_pred = policy_forward(neox, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=4, packed_tokens=64)
    torch.testing.assert_close(logp, ref_logp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_pred, ref_s, atol=1e-5, rtol=1e-5)
