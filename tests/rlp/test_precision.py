"""Numerics of RLP under bf16 autocast (CPU autocast; tiny Llama / GPT-2, bundled tokenizer).

Checked against references computed here: (1) the EMA teacher of a bf16 policy after 100 updates at tau 0.999 equals
the closed form theta + tau^100 (phi_0 - theta) (float64) within 1e-6 relative; (2) the no-think log-prob and S_pred
under bf16 autocast equal an fp32 head applied by hand to the model's own final hidden states (so only the body is
rounded, not the scores); (3) with no update between sampling and the training forward, the importance ratio is 1
within 1e-5 under bf16 autocast; (4) a policy with dropout in train mode is refused with the settings named, and
accepted in eval mode or without dropout.
"""

from __future__ import annotations

import torch

from rlp.config import RLPConfig
from rlp.rollouts import build_prompts, rollout_uniforms, sample_thoughts
from rlp.scoring import nothink_logprob, policy_forward
from rlp.step import choose_positions, rlp_loss
from rlp.strictcfg import ConfigError
from rlp.teacher import Teachers
from rlp.template import resolve_template
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, close_biased, rlp_config, skipping_batch
from tests.helpers.tiny_models import build_tiny_model


def _bf16():
    return torch.autocast('cpu', dtype=torch.bfloat16)


def _model(kind='llama'):
    return close_biased(build_tiny_model(kind, VOCAB, seed=0), CLOSE_ID, 2.0).train()


def test_ema_of_a_bf16_policy_matches_the_closed_form():
    """phi_100 = theta + tau^100 (phi_0 - theta) for a bf16 policy held at theta after phi_0 = theta_0."""
    tau = 0.999
    model = build_tiny_model('llama', VOCAB, seed=0).to(torch.bfloat16)
    teachers = Teachers('ema', tau)
    teachers.ensure(model)
    phi0 = {k: v.detach().double().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(p.dtype) * 0.02)
    theta = {k: v.detach().double() for k, v in model.named_parameters()}
    for _ in range(100):
        teachers.update(model)
    num = den = 0.0
    for name, phi in teachers.ema.module.named_parameters():
        assert phi.dtype == torch.float32, name
        exact = theta[name] + tau**100 * (phi0[name] - theta[name])
        num += float(((phi.double() - exact) ** 2).sum())
        den += float((exact**2).sum())
    assert (num / den) ** 0.5 < 1e-6
    assert all(v.dtype == torch.float32 for v in teachers.state_dict()['ema'].values() if v.is_floating_point())


def _setup(tokenizer, group_size=4, thought_tokens=6):
    cfg = RLPConfig.from_dict(
        {
            **rlp_config(tokenizer).to_dict(),
            'rollouts': {'group_size': group_size, 'max_thought_tokens': thought_tokens, 'temperature': 1.0},
        }
    )
    template = resolve_template(tokenizer, cfg.template)
    batch = skipping_batch(tokenizer, rows=4, skip_rows=())
    pos = choose_positions(batch, cfg.positions, template, key=(0, 0))
    prompts = build_prompts(batch['input_ids'], pos, template, 0)
    u = rollout_uniforms([(0, 0, str(i), int(t)) for i, t in enumerate(pos.target)], group_size, thought_tokens)
    return cfg, template, batch, prompts, u


def _fp32_head_logp(model, ids, attn, target, index):
    """log_softmax(W h + b)[target] in fp32 from the model's final hidden state at ``index`` (bf16 autocast body)."""
    pos_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), _bf16():
        h = model(input_ids=ids, attention_mask=attn, position_ids=pos_ids, output_hidden_states=True).hidden_states
    head = model.get_output_embeddings()
    logits = h[-1][:, index].float() @ head.weight.float().T + head.bias.float()
    return torch.log_softmax(logits, -1).gather(-1, target.view(-1, 1)).squeeze(-1)


def test_scores_use_an_fp32_head_under_bf16_autocast(tokenizer):
    """S_EMA-style no-think log-probs and S_pred equal an fp32 head on the bf16-autocast hidden states (1e-5), and
    differ from the fp32 model by no more than bf16 body rounding (measured ~3e-4 nats max on this model)."""
    model = _model().eval()
    cfg, template, batch, prompts, u = _setup(tokenizer)
    with _bf16():
        s_nothink = nothink_logprob(model, prompts)
    ref = _fp32_head_logp(model, prompts.ids, prompts.mask, prompts.target, -2)
    torch.testing.assert_close(s_nothink, ref, rtol=0, atol=1e-5)

    ro = sample_thoughts(model, prompts, u, temperature=1.0, top_p=1.0, close_ids=template.close_ids, pad_id=0)
    with _bf16(), torch.no_grad():
        _, s_pred = policy_forward(model, prompts, ro, temperature=1.0, pad_id=0, chunk_tokens=64)
    with torch.no_grad():
        _, s_pred32 = policy_forward(model, prompts, ro, temperature=1.0, pad_id=0, chunk_tokens=64)
    assert float((s_pred - s_pred32).abs().max()) < 2e-3
    for p in range(len(prompts)):  # S_pred of rollout 0 by hand: prompt + thought + x_t, unpadded
        n = int(ro.lengths[p, 0])
        keep = prompts.mask[p].bool()
        seq = torch.cat([prompts.ids[p][keep], ro.tokens[p, 0, :n], prompts.target[p : p + 1]]).view(1, -1)
        ref = _fp32_head_logp(model, seq, torch.ones_like(seq), prompts.target[p : p + 1], -2)
        assert abs(float(s_pred[p, 0]) - float(ref)) < 1e-5


def test_ratio_is_one_without_an_update_under_bf16_autocast(tokenizer):
    """The sampler's log-probs (pi_old) against the training forward's (pi_new), same weights, bf16 autocast."""
    cfg, template, batch, *_ = _setup(tokenizer, group_size=4, thought_tokens=8)
    model = _model()
    teachers = Teachers('ema', 0.999)
    teachers.ensure(model)
    assert cfg.loss.behaviour_logprobs == 'sampler'
    _, stats = rlp_loss(model, teachers, batch, cfg, template, key=(0, 0), autocast=_bf16)
    assert stats.tokens > 0
    assert abs(stats.ratio_min - 1.0) < 1e-5 and abs(stats.ratio_max - 1.0) < 1e-5


def test_dropout_is_refused_in_train_mode(tokenizer):
    """GPT-2's default dropout (0.1) in train mode: a one-line ConfigError naming the modules and config keys."""
    cfg, template, batch, *_ = _setup(tokenizer)
    model = _model('gpt2')
    teachers = Teachers('ema', 0.999)
    teachers.ensure(model)
    try:
        rlp_loss(model, teachers, batch, cfg, template, key=(0, 0))
    except ConfigError as err:
        msg = str(err)
    else:
        raise AssertionError('dropout was not refused')
    assert '\n' not in msg and 'p=0.1' in msg and 'resid_pdrop: 0.0' in msg and 'model.config_overrides' in msg
    rlp_loss(model.eval(), teachers, batch, cfg, template, key=(0, 0))  # eval mode: no dropout active

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    loss, _ = rlp_loss(model.train(), teachers, batch, cfg, template, key=(0, 0))
    assert torch.isfinite(loss)
