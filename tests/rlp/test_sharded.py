"""rlp.sharded and the FSDP2 teacher (rlp.teacher with ``sharded=True``) on 2 gloo CPU ranks, raw ``fully_shard``.

Checked against references computed here, on a tiny Llama with an untied head (embeddings and head then get FSDP
units of their own in the teacher): the meta copy allocates nothing (and keeps a tied model's weights tied); after
sharding, every teacher tensor has the policy's placement and local shape (half the rows on each rank); phi_0 =
theta_0 and after 3 SGD steps phi equals the closed form tau^3 theta_0 + sum_k (1-tau) tau^(3-k) theta_k from the
gathered thetas (fp32 rounding); the teacher's no-think forward (a collective) equals the same forward of an
unsharded model holding the gathered phi, and leaves no gathered weights behind; the shards saved with
torch.distributed.checkpoint and loaded into a fresh sharded teacher restore it bitwise, forward included (the
non-persistent rotary buffers come from the policy, not from uninitialised memory).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.gloo import run_ranks, save_rank
from tests.helpers.tiny_models import build_tiny_model, tiny_config

pytestmark = pytest.mark.slow

TAU = 0.5


def _untied(seed):
    """A tiny Llama with its own head (untied): the teacher then shards embeddings and head as units of their own."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config('llama', 64)
    cfg.tie_word_embeddings = False
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation='eager').train()


def _shard(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def _worker(rank, world, out_dir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor

    from rlp.sharded import fsdp2_module_names, meta_copy, reshard
    from rlp.teacher import Teachers

    res = {}
    tied = meta_copy(build_tiny_model('llama', 64, seed=0))
    res['tied'] = tied.lm_head.weight is tied.model.embed_tokens.weight
    policy = _untied(0)
    copy_ = meta_copy(policy)
    res['meta'] = all(t.is_meta for t in list(copy_.parameters()) + list(copy_.buffers()))
    thetas = [{k: v.detach().clone() for k, v in policy.named_parameters()}]
    teachers = Teachers('ema', TAU)
    teachers.create(policy, sharded=True)
    _shard(policy)
    teachers.shard(policy)
    teachers.ensure(policy)
    src = dict(policy.named_parameters())
    res['layout'] = all(
        isinstance(p, DTensor)
        and p.placements == src[k].placements
        and p.to_local().shape == src[k].to_local().shape
        and p.to_local().shape[0] * world >= p.shape[0]
        for k, p in teachers.ema.module.named_parameters()
    )
    res['units'] = sorted(fsdp2_module_names(teachers.ema.module))
    res['phi0'] = all(torch.equal(p.full_tensor(), thetas[0][k]) for k, p in teachers.ema.module.named_parameters())
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    for step in range(3):
        x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(10 * step + rank))
        policy(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        teachers.update(policy)
        thetas.append({k: v.full_tensor() for k, v in policy.named_parameters()})
    res['thetas'] = thetas
    res['phi'] = {k: p.full_tensor() for k, p in teachers.ema.module.named_parameters()}
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        res['logits'] = teachers.ema.module(input_ids=ids).logits
    reshard(teachers.ema.module)  # as Teachers.nothink_logprobs does after a teacher forward
    res['resharded'] = all(isinstance(p, DTensor) for p in teachers.ema.module.parameters())
    dcp.save({'teacher': teachers.shard_state()}, storage_writer=dcp.FileSystemWriter(os.path.join(out_dir, 'ck')))

    fresh = Teachers('ema', TAU)
    fresh.create(_untied(5), sharded=True)
    fresh.shard(policy)
    target = {'teacher': fresh.shard_state()}
    dcp.load(target, storage_reader=dcp.FileSystemReader(os.path.join(out_dir, 'ck')))
    fresh.load_shard_state(target['teacher'])
    res['restored'] = fresh.ema.synced and all(
        torch.equal(p.full_tensor(), res['phi'][k]) for k, p in fresh.ema.module.named_parameters()
    )
    with torch.no_grad():
        res['restored_logits'] = fresh.ema.module(input_ids=ids).logits
    save_rank(res, rank, out_dir)


def test_sharded_teacher_two_gloo_ranks(tmp_path):
    """See the module docstring."""
    r0, r1 = run_ranks(_worker, tmp_path)
    for r in (r0, r1):
        assert r['meta'] and r['tied'] and r['layout'] and r['phi0'] and r['resharded'] and r['restored']
        assert torch.equal(r['restored_logits'], r['logits'])
        assert r['units'] == ['', 'lm_head', 'model.embed_tokens', 'model.layers.0', 'model.layers.1']
    thetas = r0['thetas']
    for name, phi in r0['phi'].items():
        want = thetas[0][name] * TAU**3
        for k in (1, 2, 3):
            want = want + (1 - TAU) * TAU ** (3 - k) * thetas[k][name]
        torch.testing.assert_close(phi, want, atol=1e-6, rtol=0, msg=name)
        assert torch.equal(phi, r1['phi'][name]), name
    reference = _untied(0).eval()
    reference.load_state_dict(r0['phi'], strict=False)
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        torch.testing.assert_close(r0['logits'], reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
