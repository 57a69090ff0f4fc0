"""The bf16 numerics of tests/rlp/test_precision.py under CUDA autocast (``@pytest.mark.gpu``, skipped without CUDA).

Checked, on the GPU: the EMA teacher of a bf16 policy against the closed form (1e-6 relative); the importance ratio
with no update under bf16 autocast (1 within 1e-5); S_pred under bf16 autocast against an fp32 head applied by hand
to the model's own final hidden states (1e-4: CUDA's fp32 GEMMs may use other blocking than the hand product);
the weight change of 20 AdamW steps at lr 1e-6 with fp32 master weights and bf16 autocast against fp32 (5%).
"""

from __future__ import annotations

import pytest
import torch

from rlp.config import RLPConfig
from rlp.rollouts import build_prompts, rollout_uniforms, sample_thoughts
from rlp.scoring import policy_forward
from rlp.step import choose_positions, rlp_loss
from rlp.teacher import Teachers
from rlp.template import resolve_template
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, close_biased, rlp_config, skipping_batch
from tests.helpers.tiny_models import build_tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]
CUDA = torch.device('cuda')


def _bf16():
    return torch.autocast('cuda', dtype=torch.bfloat16)


def _batch(tokenizer):
    return {k: v.to(CUDA) for k, v in skipping_batch(tokenizer, rows=4, skip_rows=()).items()}


def test_ema_closed_form_bf16_policy_cuda():
    tau = 0.999
    model = build_tiny_model('llama', VOCAB, seed=0).to(CUDA, torch.bfloat16)
    teachers = Teachers('ema', tau)
    teachers.ensure(model, CUDA)
    phi0 = {k: v.detach().double().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    theta = {k: v.detach().double() for k, v in model.named_parameters()}
    for _ in range(100):
        teachers.update(model)
    num = den = 0.0
    for name, phi in teachers.ema.module.named_parameters():
        exact = theta[name] + tau**100 * (phi0[name] - theta[name])
        num += float(((phi.double() - exact) ** 2).sum())
        den += float((exact**2).sum())
    assert (num / den) ** 0.5 < 1e-6


def test_ratio_and_fp32_head_under_cuda_bf16(tokenizer):
    cfg = RLPConfig.from_dict(
        {**rlp_config(tokenizer).to_dict(), 'rollouts': {'group_size': 4, 'max_thought_tokens': 8, 'temperature': 1.0}}
    )
    template = resolve_template(tokenizer, cfg.template)
    batch = _batch(tokenizer)
    model = close_biased(build_tiny_model('llama', VOCAB, seed=0), CLOSE_ID, 2.0).to(CUDA).train()
    teachers = Teachers('ema', 0.999)
    teachers.ensure(model, CUDA)
    _, stats = rlp_loss(model, teachers, batch, cfg, template, key=(0, 0), autocast=_bf16)
    assert stats.tokens > 0 and abs(stats.ratio_min - 1) < 1e-5 and abs(stats.ratio_max - 1) < 1e-5

    pos = choose_positions(batch, cfg.positions, template, key=(0, 0))
    prompts = build_prompts(batch['input_ids'], pos, template, 0)
    u = rollout_uniforms([(0, 0, str(i), int(t)) for i, t in enumerate(pos.target)], 4, 8)
    ro = sample_thoughts(model, prompts, u, temperature=1.0, top_p=1.0, close_ids=template.close_ids, pad_id=0)
    with _bf16(), torch.no_grad():
        _, s_pred = policy_forward(model.eval(), prompts, ro, temperature=1.0, pad_id=0, chunk_tokens=64)
        head = model.get_output_embeddings()
        for p in range(len(prompts)):
            n, keep = int(ro.lengths[p, 0]), prompts.mask[p].bool()
            seq = torch.cat([prompts.ids[p][keep], ro.tokens[p, 0, :n], prompts.target[p : p + 1]]).view(1, -1)
            h = model(input_ids=seq, output_hidden_states=True).hidden_states[-1][0, -2].float()
            logits = h @ head.weight.float().T + head.bias.float()
            ref = torch.log_softmax(logits, -1)[prompts.target[p]]
            assert abs(float(s_pred[p, 0]) - float(ref)) < 1e-4


def test_fp32_master_weights_track_fp32_cuda():
    def change(autocast):
        model = build_tiny_model('llama', VOCAB, seed=0).to(CUDA).train()
        start = {k: v.detach().double().clone() for k, v in model.named_parameters()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            x = torch.randint(3, VOCAB, (4, 64), generator=gen).to(CUDA)
            with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        return {k: v.detach().double() - start[k] for k, v in model.named_parameters()}

    ref, amp = change(False), change(True)
    num = sum(float(((amp[k] - ref[k]) ** 2).sum()) for k in ref)
    assert (num / sum(float((v**2).sum()) for v in ref.values())) ** 0.5 < 0.05
