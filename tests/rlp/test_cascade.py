"""rlp.cascade: shared-prefix attention checked against attention written here as loops over rows and heads.

The reference concatenates, for each live row, its prompt's real (unpadded) keys/values and its own thought's, and
computes softmax(q k^T * scale) v one head at a time. Checked: several prompts with different padding, GQA (4 query
heads on 2 key/value heads), rows that left the batch, one and two new tokens per step (causal within the thought);
the cache's bookkeeping and its growing thought buffer; which models take the path; the model's attention setting
restored after an error.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlp.cascade import SharedPrefixCache, decoding_with, shared_prefix_attention, supports_shared_prefix
from tests.helpers.tiny_models import build_tiny_model

P, G, H, HKV, D, LP = 2, 3, 4, 2, 8, 5


def _reference(query, cache, layer, own_k, own_v, scale):
    """(N, H, q, D) queries; own_k/own_v (N, HKV, t, D) -> (N, q, H, D), by loops."""
    n, h, q, _ = query.shape
    t = own_k.shape[2]
    out = torch.zeros(n, q, h, D, dtype=torch.float64)
    for r in range(n):
        p = int(cache.rows[r]) // G
        real = cache.prefix_mask[p].nonzero().squeeze(1)
        for head in range(h):
            kvh = head // (h // HKV)
            for i in range(q):
                seen = t - q + i + 1  # the thought tokens up to this new token
                keys = torch.cat([cache.prefix_k[layer][p, kvh, real], own_k[r, kvh, :seen]]).double()
                values = torch.cat([cache.prefix_v[layer][p, kvh, real], own_v[r, kvh, :seen]]).double()
                w = torch.softmax(keys @ query[r, head, i].double() * scale, dim=0)
                out[r, i, head] = w @ values
    return out


def _cache(max_tokens=6):
    gen = torch.Generator().manual_seed(0)
    layers = [(torch.randn(P, HKV, LP, D, generator=gen), torch.randn(P, HKV, LP, D, generator=gen)) for _ in range(2)]
    mask = torch.ones(P, LP, dtype=torch.long)
    mask[0, :2] = 0  # prompt 0 is left-padded by 2
    return SharedPrefixCache(layers, mask, G, max_tokens), gen


@pytest.mark.parametrize('new_tokens', [1, 2])
def test_attention_matches_loops_over_rows_and_heads(new_tokens):
    """Live rows 0, 2, 3, 5 of P=2 x G=3 (one prompt padded), thought of 4 tokens of which ``new_tokens`` are new."""
    cache, gen = _cache()
    cache.select(torch.tensor([0, 2, 3, 5]))
    n, layer, t = 4, 1, 4
    own_k, own_v = torch.randn(n, HKV, t, D, generator=gen), torch.randn(n, HKV, t, D, generator=gen)
    old = t - new_tokens
    cache.update(own_k[:, :, :old], own_v[:, :, :old], layer)
    key, value = cache.update(own_k[:, :, old:], own_v[:, :, old:], layer)
    torch.testing.assert_close(key, own_k)
    query = torch.randn(n, H, new_tokens, D, generator=gen)
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation_internal='eager'))
    with decoding_with(model, cache):
        out, weights = shared_prefix_attention(SimpleNamespace(layer_idx=layer), query, key, value, None, scaling=0.3)
    assert weights is None and out.shape == (n, new_tokens, H, D)
    torch.testing.assert_close(out.double(), _reference(query, cache, layer, own_k, own_v, 0.3), atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation_internal == 'eager'


def test_cache_bookkeeping():
    """Sequence length = prompt width + thought tokens of that layer; select keeps rows and their thought; a
    thought longer than the buffer is refused; attention outside decoding_with is refused."""
    cache, gen = _cache(max_tokens=2)
    assert len(cache) == 2 and cache.get_seq_length() == LP
    k = torch.randn(P * G, HKV, 1, D, generator=gen)
    cache.update(k, k, 0)
    assert cache.get_seq_length(0) == LP + 1 and cache.get_seq_length(1) == LP
    cache.select(torch.tensor([1, 4]))
    assert cache.rows.tolist() == [1, 4]
    torch.testing.assert_close(cache.own_k[0][:, :, :1], k[[1, 4]])
    cache.update(k[:2], k[:2], 0)
    with pytest.raises(ValueError, match='holds 2 thought tokens'):
        cache.update(k[:2], k[:2], 0)
    with pytest.raises(RuntimeError, match='only inside'):
        shared_prefix_attention(SimpleNamespace(layer_idx=0), torch.zeros(2, H, 1, D), k[:2], k[:2], None)


def test_thought_buffer_grows_by_doubling_and_keeps_what_it_holds():
    """A budget of 100 tokens starts with room for 64; the 65th token grows it to 100 (not 128, the budget caps it)
    and every token written before is still there; the 101st is refused."""
    cache, gen = _cache(max_tokens=100)
    assert cache.own_k[0].shape[2] == 64
    written = torch.randn(P * G, HKV, 100, D, generator=gen)
    for i in range(100):
        key, value = cache.update(written[:, :, i : i + 1], -written[:, :, i : i + 1], 0)
        if i == 63:
            assert cache.own_k[0].shape[2] == 64
    assert cache.own_k[0].shape[2] == 100 and cache.own_k[1].shape[2] == 64
    torch.testing.assert_close(key, written)
    torch.testing.assert_close(value, -written)
    with pytest.raises(ValueError, match='holds 100 thought tokens'):
        cache.update(written[:, :, :1], written[:, :, :1], 0)


def test_which_models_take_the_path():
    """Llama and Qwen3 with eager or sdpa attention do; GPT-2, another attention implementation, a Qwen3 with its
    sliding window on do not."""
    llama, qwen, gpt2 = (build_tiny_model(kind, 64) for kind in ('llama', 'qwen3', 'gpt2'))
    assert supports_shared_prefix(llama) and supports_shared_prefix(qwen) and not supports_shared_prefix(gpt2)
    llama.config._attn_implementation = 'sdpa'
    assert supports_shared_prefix(llama)
    llama.config._attn_implementation = 'flex_attention'
    assert not supports_shared_prefix(llama)
    qwen.config.use_sliding_window = True
    assert not supports_shared_prefix(qwen)


def test_attention_setting_restored_after_an_error():
    """An exception inside decoding_with leaves the model's attention implementation as it was."""
    model = build_tiny_model('llama', 64)
    cache, _ = _cache()
    with pytest.raises(KeyError), decoding_with(model, cache):
        assert model.config._attn_implementation == 'rlp_shared_prefix'
        raise KeyError('boom')
    assert model.config._attn_implementation == 'eager'
