"""A loop-based reference for the policy forward of the training step, shared by the log-prob and packing tests:
each rollout scored alone, unpadded, with full logits; and the parameter gradients of a weighted sum."""

from __future__ import annotations

import torch


def loop_policy_logprobs(model, prompts, ro, temperature: float):
    """Thought-token log-probs at ``temperature`` ((P, G, W), zero past each thought) and S_pred at temperature 1
    ((P, G), the target after prompt + thought), one unpadded forward per rollout."""
    p, g, width = ro.tokens.shape
    logp, s_pred = [], []
    for i in range(p):
        pr = prompts.ids[i][prompts.mask[i].bool()]
        for j in range(g):
            n = int(ro.lengths[i, j])
            th = ro.tokens[i, j, :n]
            logits = model(input_ids=torch.cat([pr, th, prompts.target[i : i + 1]])[None]).logits[0].float()
            pred = torch.log_softmax(logits[len(pr) - 1 : len(pr) - 1 + n] / temperature, -1)
            row = pred.gather(-1, th[:, None]).squeeze(-1)
            logp.append(torch.cat([row, row.new_zeros(width - n)]))
            s_pred.append(torch.log_softmax(logits[len(pr) - 1 + n], -1)[prompts.target[i]].detach())
    return torch.stack(logp).view(p, g, width), torch.stack(s_pred).view(p, g)


def param_grads(model, logp, weights) -> dict[str, torch.Tensor]:
    """Gradients of ``sum(logp * weights)`` for every parameter that gets one."""
    model.zero_grad()
    (logp * weights).sum().backward()
    return {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
