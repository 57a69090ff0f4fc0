"""RLP on a hybrid model: a tiny random-init Nemotron-H (Mamba2 + attention + MLP layers, pattern ``M*M-``, the
PyTorch Mamba2 path on CPU).

Checked against references written here or in tests/helpers: the recurrent layers are found from the model (and none
in a plain transformer); ``rlp_loss`` with packing enabled runs the unpacked forward (said once in the log) on
right-padded sequences, and its
loss and parameter gradients equal the clipped surrogate over log-probs from one unpadded full forward per rollout
(tests/helpers/policy_reference.py); the EMA teacher moves every parameter, the Mamba2 ones (A_log, D, dt_bias,
conv1d) included, by phi <- tau phi + (1 - tau) theta; no-think entropies equal one forward per document.
"""

from __future__ import annotations

import logging

import torch

from rlp import scoring, step
from rlp.hf import recurrent_layers
from rlp.objective import clipped_surrogate
from rlp.scoring import nothink_entropy
from rlp.step import rlp_loss
from rlp.teacher import Teachers
from rlp.template import resolve_template
from tests.helpers.policy_reference import loop_policy_logprobs, param_grads
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, close_biased, packed_batch, rlp_config
from tests.helpers.tiny_models import build_tiny_model


def _nemotron(seed=0):
    return close_biased(build_tiny_model('nemotron_h', VOCAB, seed=seed), CLOSE_ID, 5.0).train()


def test_recurrent_layers_are_found_from_the_model():
    """The Mamba2 layers of ``M*M-`` are 0 and 2; a Llama has none. Only the hybrid model gets per-block FSDP units
    (its NemotronHBlocks, not their mixers); the Llama is left as it was."""
    from rlp.run.models import wrap_blocks_for_fsdp

    hybrid, llama = _nemotron(), build_tiny_model('llama', VOCAB)
    assert recurrent_layers(hybrid) == [0, 2] and recurrent_layers(llama) == []
    assert wrap_blocks_for_fsdp(hybrid) == ['NemotronHBlock']
    assert [m for m in hybrid.modules() if hybrid.fsdp_wrap_fn(m)] == list(hybrid.model.layers)
    assert wrap_blocks_for_fsdp(llama) == [] and not hasattr(llama, 'fsdp_wrap_fn')


def test_rlp_loss_gradients_equal_the_loop_reference(tokenizer, monkeypatch, caplog):
    """rlp_loss on Nemotron-H with packed_forward_tokens set: the unpacked path is used (logged once), S_pred and the
    loss equal the reference's, and every parameter gradient equals that of the clipped surrogate computed from one
    unpadded full forward per rollout (sampler log-probs as pi_old, the same advantages)."""
    model = _nemotron()
    tpl = resolve_template(tokenizer, rlp_config(tokenizer).template)
    cfg = rlp_config(tokenizer, packed_forward_tokens=4096)
    batch = packed_batch(tokenizer, rows=2, length=40)
    teachers = Teachers('ema', tau=0.5)
    teachers.ensure(model)
    seen = {}
    real = step.sample_thoughts

    def recording(model_, prompts, u, **kw):
        ro = real(model_, prompts, u, **kw)
        seen.setdefault('first', (prompts, ro))
        return ro

    monkeypatch.setattr(step, 'sample_thoughts', recording)
    monkeypatch.setattr(scoring, '_LOGGED_UNPACKED', set())  # said once per process: earlier tests may have said it
    monkeypatch.setattr(step, 'policy_scores', _no_packing(step.policy_scores))
    masks = []  # the attention masks of the training forwards (train mode)
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: masks.append(kw['attention_mask']) if m.training else None, with_kwargs=True
    )
    with caplog.at_level(logging.INFO, logger='rlp.scoring'):
        loss, stats = rlp_loss(model, teachers, batch, cfg, tpl, key=(3, 0), keep_samples=True)
        rlp_loss(model, teachers, batch, cfg, tpl, key=(3, 1))
    hook.remove()
    # right padding only: no recurrent state sees padding before the sequence (a fused Mamba2 kernel would carry it)
    assert len(masks) == 2 and all(bool((m[:, 1:] <= m[:, :-1]).all()) and not m.all() for m in masks)
    said = [r.getMessage() for r in caplog.records if 'recurrent layers [0, 2]' in r.getMessage()]
    assert len(said) == 1 and 'one sequence per rollout' in said[0]
    got = param_grads(model, loss, torch.ones(()))

    prompts, ro = seen['first']
    assert ro.lengths.unique().numel() > 1, 'thoughts of several lengths'
    ref_logp, ref_s = loop_policy_logprobs(model, prompts, ro, cfg.rollouts.temperature)
    torch.testing.assert_close(stats.samples.s_pred, ref_s.detach(), atol=1e-5, rtol=1e-5)
    ref_loss, _ = clipped_surrogate(
        ref_logp, ro.logp, stats.samples.advantages, ro.mask, cfg.loss.eps_low, cfg.loss.eps_high
    )
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    want = param_grads(model, ref_loss, torch.ones(()))
    assert got.keys() == want.keys() and any('mixer.A_log' in k for k in want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-4, msg=k)


def _no_packing(policy_forward):
    """The training forward (policy_scores) that fails the test if the packed path is taken."""
    from rlp import scoring

    def wrapped(*a, **kw):
        real = scoring.packed_policy_forward
        scoring.packed_policy_forward = lambda *_a, **_k: (_ for _ in ()).throw(AssertionError('packed path used'))
        try:
            return policy_forward(*a, **kw)
        finally:
            scoring.packed_policy_forward = real

    return wrapped


def test_ema_teacher_moves_every_parameter():
    """After one update the EMA copy holds tau * phi + (1 - tau) * theta for every parameter, Mamba2's included."""
    model = _nemotron()
    teachers = Teachers('ema', tau=0.75)
    teachers.ensure(model)
    before = {k: v.detach().clone() for k, v in teachers.ema.module.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    teachers.update(model)
    theta = dict(model.named_parameters())
    phi = dict(teachers.ema.module.named_parameters())
    assert phi.keys() == theta.keys() and {'A_log', 'D', 'dt_bias', 'conv1d.weight'} <= {
        k.split('mixer.')[-1] for k in phi
    }
    for k, v in phi.items():
        torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * theta[k].detach(), msg=k)


def test_nothink_entropy_is_per_document(tokenizer):
    """nothink_entropy on a packed batch equals the entropy of one forward per document (no cross-document state)."""
    model = _nemotron().eval()
    batch = packed_batch(tokenizer, rows=2, length=40)
    ent = nothink_entropy(model, batch['input_ids'], batch['segment_ids'], pad_id=0)
    ids, seg = batch['input_ids'], batch['segment_ids']
    with torch.no_grad():
        for r in range(ids.shape[0]):
            for s in seg[r].unique().tolist():
                cols = (seg[r] == s).nonzero().squeeze(1)
                lp = torch.log_softmax(model(ids[r, cols][None]).logits[0], -1)
                ref = -(lp.exp() * lp).sum(-1)[:-1]
                torch.testing.assert_close(ent[r, cols[1:]], ref, atol=1e-5, rtol=1e-5)
