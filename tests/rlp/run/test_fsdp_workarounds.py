"""The two upstream FSDP2 bugs of ``rlp.run.fsdp``, shown and fixed, on 2 gloo CPU ranks (raw ``fully_shard``).

Reference: the gradient of the same tiny Llama, unsharded, for the mean of the two ranks' losses (what DDP
computes), built here in each rank from both ranks' batches. Checked: gloo's AVG reduce-scatter sums (the probe
says so, and FSDP2's gradients are 2x the reference: the bug); GlooGradAverage brings them to the reference;
Composer's gradient clipping with FSDP on leaves them untouched (the bug); ClipGradNorm scales them by
max_norm / ||g||, ||g|| the norm of the full reference gradient, identically on both ranks.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.gloo import run_ranks, save_rank
from tests.helpers.tiny_models import build_tiny_model

pytestmark = pytest.mark.slow


class _State:
    """The part of Composer's State that the two algorithms read."""

    def __init__(self, model):
        self.model = model


def _worker(rank, world, out_dir):
    from composer.algorithms.gradient_clipping.gradient_clipping import apply_gradient_clipping
    from composer.core import Event
    from torch.distributed.fsdp import fully_shard

    from rlp.run.fsdp import ClipGradNorm, GlooGradAverage, reduce_scatter_avg_sums

    batches = [torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(r)) for r in range(world)]
    reference = build_tiny_model('llama', 64, seed=0)
    loss = sum(reference(input_ids=x, labels=x).loss for x in batches) / world
    loss.backward()
    want = {k: p.grad.clone() for k, p in reference.named_parameters()}

    model = build_tiny_model('llama', 64, seed=0)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model(input_ids=batches[rank], labels=batches[rank]).loss.backward()

    def grads():
        return {k: p.grad.full_tensor().clone() for k, p in model.named_parameters()}

    res = {'want': want, 'sums': reduce_scatter_avg_sums(), 'raw': grads()}
    state = _State(model)
    average = GlooGradAverage()
    average.apply(Event.INIT, state, None)
    average.apply(Event.AFTER_TRAIN_BATCH, state, None)
    res['averaged'] = grads()
    apply_gradient_clipping(model, 'norm', 1e-3, fsdp_enabled=True)  # what Composer's GradientClipping calls
    res['composer_clipped'] = grads()
    ClipGradNorm(1e-3).apply(Event.AFTER_TRAIN_BATCH, state, None)
    res['clipped'] = grads()
    save_rank(res, rank, out_dir)


def test_fsdp2_gradients_on_gloo_and_clipping(tmp_path):
    """See the module docstring."""
    r0, r1 = run_ranks(_worker, tmp_path)
    assert r0['sums'] and r1['sums']  # torch 2.7 gloo: AVG reduce-scatter sums
    want = r0['want']
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in want.values()))
    assert norm > 1e-2  # far above the clipping threshold
    for name, g in want.items():
        torch.testing.assert_close(r0['raw'][name], 2 * g, atol=1e-6, rtol=1e-5, msg=name)  # the gloo bug
        torch.testing.assert_close(r0['averaged'][name], g, atol=1e-6, rtol=1e-5, msg=name)
        assert torch.equal(r0['composer_clipped'][name], r0['averaged'][name]), name  # Composer's bug: no clipping
        torch.testing.assert_close(r0['clipped'][name], g * (1e-3 / (norm + 1e-6)), atol=1e-9, rtol=1e-4, msg=name)
        assert torch.equal(r0['clipped'][name], r1['clipped'][name]), name
