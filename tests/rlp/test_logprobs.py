"""rlp.logprobs and the chunked path of rlp.scoring.policy_forward on tiny Llama / Qwen3 / GPT-2 models.

Checked against a loop-based reference (tests/helpers/policy_reference.py: one unpadded full forward per rollout,
full logits, log_softmax(logits / T)): the thought-token log-probs, S_pred and the gradients of every parameter, for
several chunk sizes (atol 1e-5: same ops, only the GEMM blocking differs); the unchunked path agrees too; a model
whose logits are not a plain Linear head (a scaled head output, a non-Linear head) falls back with a warning and
stays exact; once a head passed the check its logits are computed once per call (the model's own head runs on no
position); the chunked path saves far fewer bytes for backward (counted with saved_tensors_hooks).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from rlp import scoring
from rlp.logprobs import chunked_token_logprobs, linear_head
from rlp.rollouts import Prompts, Rollouts
from rlp.scoring import policy_forward
from tests.helpers.policy_reference import loop_policy_logprobs, param_grads
from tests.helpers.tiny_models import TINY_KINDS, build_tiny_model

VOCAB, PAD, TEMP = 512, 0, 0.7


def _inputs(p=3, g=2, width=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lens_p = [7, 4, 9][:p]
    lp = max(lens_p)
    ids = torch.full((p, lp), PAD)
    mask = torch.zeros((p, lp), dtype=torch.long)
    for i, n in enumerate(lens_p):
        ids[i, lp - n :] = torch.randint(1, VOCAB, (n,), generator=gen)
        mask[i, lp - n :] = 1
    prompts = Prompts(ids=ids, mask=mask, target=torch.randint(1, VOCAB, (p,), generator=gen))
    lengths = torch.randint(1, width + 1, (p, g), generator=gen)
    lengths[0, 0] = width
    tokens = torch.randint(1, VOCAB, (p, g, width), generator=gen)
    valid = torch.arange(width) < lengths.unsqueeze(-1)
    tokens = torch.where(valid, tokens, PAD)
    z = torch.zeros((p, g, width))
    ro = Rollouts(
        tokens=tokens,
        logp=z,
        mask=valid,
        lengths=lengths,
        truncated=torch.zeros_like(valid[..., 0]),
        nothink_logp=torch.zeros(p),
        decode_steps=width,
    )
    return prompts, ro


@pytest.mark.parametrize('kind', TINY_KINDS)
@pytest.mark.parametrize('chunk', [1, 4, None])
def test_chunked_matches_loop_reference_with_gradients(kind, chunk, monkeypatch):
    """policy_forward (chunk = 1, 4 rows, or the unchunked path) == the loop reference, values and gradients."""
    model = build_tiny_model(kind, VOCAB).eval()  # eval: GPT-2's dropout off; gradients still flow
    prompts, ro = _inputs()
    weights = torch.randn(ro.tokens.shape, generator=torch.Generator().manual_seed(1)) * ro.mask
    ref_logp, ref_s = loop_policy_logprobs(model, prompts, ro, TEMP)
    ref_g = param_grads(model, ref_logp, weights)
    calls = []
    real = scoring.chunked_token_logprobs
    monkeypatch.setattr(scoring, 'chunked_token_logprobs', lambda *a, **k: calls.append(1) or real(*a, **k))
    logp, s_pred = policy_forward(model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=chunk)
    assert len(calls) == (0 if chunk is None else 2)  # thought tokens + S_pred: the chunked path really ran
    assert not s_pred.requires_grad and logp.shape == ro.tokens.shape
    torch.testing.assert_close(logp, ref_logp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_pred, ref_s, atol=1e-5, rtol=1e-5)
    got_g = param_grads(model, logp, weights)
    assert got_g.keys() == ref_g.keys()
    for k in ref_g:
        torch.testing.assert_close(got_g[k], ref_g[k], atol=1e-5, rtol=1e-4, msg=k)
    if chunk is not None:
        assert linear_head(model) is model.get_output_embeddings()


def test_chunked_token_logprobs_against_log_softmax():
    """(M, D) rows scored in chunks of 3 == log_softmax(head(h) / T)[y] in one go; bias included; empty input."""
    gen = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(8, 50, bias=True)
    h = torch.randn(10, 8, generator=gen, requires_grad=True)
    y = torch.randint(0, 50, (10,), generator=gen)
    got = chunked_token_logprobs(h, head, y, temperature=0.5, chunk=3)
    want = torch.log_softmax(head(h) / 0.5, -1).gather(-1, y[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got.sum(), [h, head.weight, head.bias])
    g2 = torch.autograd.grad(want.sum(), [h, head.weight, head.bias])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert chunked_token_logprobs(h[:0], head, y[:0]).shape == (0,)
    with pytest.raises(ValueError, match='logprob_chunk_tokens'):
        chunked_token_logprobs(h, head, y, chunk=0)


class _Scaled(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x) * 0.5


@pytest.mark.parametrize('how', ['hook', 'module'])
def test_non_linear_head_falls_back_exactly(how, monkeypatch):
    """Logits that are not head(h) — scaled after the Linear (caught by the per-call check) or a non-Linear head
    (refused up front) — take the unchunked path (warning once) and still match the loop reference."""
    monkeypatch.setattr(scoring, '_WARNED', set())
    model = build_tiny_model('llama', VOCAB).eval()
    if how == 'hook':
        model.get_output_embeddings().register_forward_hook(lambda m, a, out: out * 0.5)
    else:
        model.lm_head = _Scaled(model.lm_head)
        assert linear_head(model) is None
    prompts, ro = _inputs()
    ref_logp, ref_s = loop_policy_logprobs(model, prompts, ro, TEMP)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        logp, s_pred = policy_forward(model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=4)
        policy_forward(model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=4)
    torch.testing.assert_close(logp, ref_logp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_pred, ref_s, atol=1e-5, rtol=1e-5)
    fallback = [w for w in caught if 'falls back' in str(w.message)]
    assert len(fallback) == (1 if how == 'hook' else 0)


def test_the_head_runs_on_no_position_once_checked(monkeypatch):
    """The first scoring call on a head checks the model's own last-position logits against W h + b (the head runs
    on one position); after that the head runs on no position (its logits are computed once per call, by the
    scoring) and the values still equal the loop reference; last_logits likewise; a head that fails the check
    keeps running in full on every call."""
    from rlp.logprobs import last_logits

    monkeypatch.setattr(scoring, '_WARNED', set())  # the failing head below disables the chunked path for its class
    model = build_tiny_model('llama', VOCAB).eval()
    prompts, ro = _inputs()
    ref_logp, ref_s = loop_policy_logprobs(model, prompts, ro, TEMP)
    with torch.no_grad():
        full = model(input_ids=prompts.ids, attention_mask=prompts.mask).logits[:, -2:]
    shapes = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    for _ in range(2):
        logp, s_pred = policy_forward(model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=4)
        torch.testing.assert_close(logp, ref_logp.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s_pred, ref_s, atol=1e-5, rtol=1e-5)
    assert [s[1] for s in shapes] == [1, 0]
    with torch.no_grad():
        _, logits = last_logits(model, 2, input_ids=prompts.ids, attention_mask=prompts.mask)
    assert len(shapes) == 3 and shapes[2][1] == 0
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)

    scaled = build_tiny_model('llama', VOCAB).eval()
    shapes.clear()
    scaled.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)) or out * 2)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for _ in range(2):
            policy_forward(scaled, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=4)
    # the failed check (one position), then the unchunked path's full forward on each call: never skipped
    assert len(shapes) == 3 and shapes[0][1] == 1 and all(s[1] > 1 for s in shapes[1:])


def saved_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_chunked_path_saves_far_less_for_backward():
    """With a 16384-token vocabulary and 6 rollouts x 40 thought tokens, the unchunked path saves the (N, T+2, V)
    logits and their (N, T, V) log_softmax for backward (>= 2 such fp32 tensors); the chunked path saves less than
    ONE of them (hidden states, weights, activations only)."""
    vocab = 16384
    model = build_tiny_model('llama', vocab).eval()
    prompts, ro = _inputs(width=40)
    unchunked = saved_bytes(lambda: policy_forward(model, prompts, ro, temperature=TEMP, pad_id=PAD))
    chunked = saved_bytes(lambda: policy_forward(model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=16))
    one = ro.tokens.numel() * vocab * 4  # bytes of one fp32 (N, T, V) tensor
    assert unchunked >= 2 * one
    assert chunked < one


def _fsdp_worker(rank, world, port, out_dir):
    import os

    import torch.distributed as tdist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    tdist.init_process_group('gloo', rank=rank, world_size=world)
    model = FSDP(
        build_tiny_model('llama', VOCAB).eval(),
        use_orig_params=True,
        device_id=torch.device('cpu'),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
    )
    prompts, ro = _inputs(seed=rank)
    weights = torch.randn(ro.tokens.shape, generator=torch.Generator().manual_seed(1)) * ro.mask
    res, calls, real = {}, [], scoring.chunked_token_logprobs
    scoring.chunked_token_logprobs = lambda *a, **k: calls.append(1) or real(*a, **k)
    for chunk in (None, 3):
        model.zero_grad()
        logp, _ = policy_forward(model, prompts, ro, temperature=TEMP, pad_id=PAD, chunk_tokens=chunk)
        (logp * weights).sum().backward()
        with FSDP.summon_full_params(model, with_grads=True, writeback=False):
            res[chunk] = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
        res[f'logp{chunk}'] = logp.detach()
    res['calls'] = len(calls)
    if rank == 0:
        torch.save(res, os.path.join(out_dir, 'fsdp.pt'))
    tdist.destroy_process_group()


@pytest.mark.slow
def test_chunked_path_under_fsdp_full_shard_two_cpu_ranks(tmp_path):
    """FSDP1 FULL_SHARD (use_orig_params) on 2 gloo CPU ranks: the chunked path (head weight used after the
    forward and in the checkpoint recomputation) gives the same log-probs and reduced gradients as the unchunked."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    res = torch.load(tmp_path / 'fsdp.pt')
    assert res['calls'] == 2  # the chunked path ran (no fallback)
    torch.testing.assert_close(res['logp3'], res['logpNone'], atol=1e-5, rtol=1e-5)
    assert res[3].keys() == res[None].keys() and len(res[3]) > 0
    for k in res[None]:
        torch.testing.assert_close(res[3][k], res[None][k], atol=1e-5, rtol=1e-4, msg=k)
