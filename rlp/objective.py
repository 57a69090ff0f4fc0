"""RLP objective: the rewards, group-relative advantage, clipped surrogate (pure tensor math).

No Composer, no logging, no distributed code: the Algorithm gathers tensors and calls these functions.

Letters used in shapes:
    P  positions (one prefix x_<t and its target x_t each)
    G  thoughts sampled per position (the group)
    T  thought tokens (padded; ``mask`` says which are real)
    K  targets scored per position (x_t .. x_{t+K-1}; ``rlp.reward.horizon``, 1 for the other kinds)

The paper (arXiv 2510.01265, Eq. 3-8):
    r      = S_pred - S_EMA,  S_pred = log p_theta(x_t | x_<t, c),  S_EMA = log p_phi(x_t | x_<t)
    A_i    = G/(G-1) * (r_i - mean_j r_j)                          (no std division)
    L_clip = -1/|c_i| * sum_u min(rho_u A_i, clip(rho_u, 1-eps_low, 1+eps_high) A_i)
    L      = mean over the P*G rollouts of L_clip

The reward kinds (``rlp.reward.kind``; ``docs/design.md``, "Reward kinds"): :func:`information_gain` (the paper's r),
:func:`horizon_gain` (r summed over K tokens with discount gamma) and :func:`rpt_reward` (RPT's 0/1 reward, arXiv
2506.08007, for one predicted token).

:func:`clipped_surrogate` length-normalises each rollout, sums over the rollouts and divides by ``normalizer``
(default: the number of rollouts with at least one token in this call); which ``normalizer`` a microbatch of a
larger batch needs is decided by :func:`rlp.step.loss_normalizer`.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ['clipped_surrogate', 'group_advantages', 'horizon_gain', 'information_gain', 'rpt_reward']


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are upcast for the reductions)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def information_gain(logp_with_thought: torch.Tensor, logp_no_think: torch.Tensor) -> torch.Tensor:
    """Information-gain reward of each thought.

    .. math:: r_{p,g} = S^{pred}_{p,g} - S^{EMA}_p

    Args:
        logp_with_thought: (P, G) log p_theta(x_t | x_<t, c_g), the current model after thought g.
        logp_no_think: (P,) log p_teacher(x_t | x_<t), the no-think baseline of each position.

    Returns:
        (P, G) rewards, in the inputs' promoted dtype. Not detached: callers pass no-grad scores (the paper
        treats r as a constant).
    """
    if logp_with_thought.dim() != 2 or logp_no_think.shape != logp_with_thought.shape[:1]:
        raise ValueError(
            f'information_gain expects (P, G) and (P,), got {tuple(logp_with_thought.shape)} and '
            f'{tuple(logp_no_think.shape)}'
        )
    return logp_with_thought - logp_no_think.unsqueeze(-1)


def horizon_gain(s_pred: torch.Tensor, s_ema: torch.Tensor, valid: torch.Tensor, discount: float) -> torch.Tensor:
    """Information gain over a horizon of K tokens, discounted (the ``horizon`` reward).

    .. math:: r_{p,g} = \\sum_{j < K,\\ valid_{p,j}} \\gamma^j \\big(S^{pred}_{p,g,j} - S^{EMA}_{p,j}\\big)

    with S^pred_{p,g,j} = log p_theta(x_{t+j} | x_<t, c_g, x_t .. x_{t+j-1}) (the thought stays in the context)
    and S^EMA_{p,j} = log p_phi(x_{t+j} | x_<t+j). Invalid slots (x_{t+j} beyond the document or the row) add
    nothing and may hold any value (NaN, inf) without effect. With K = 1 (and valid[:, 0] True) the result is
    exactly :func:`information_gain` (gamma^0 = 1 is not multiplied in).

    Args:
        s_pred: (P, G, K) log-probs of the targets after each thought.
        s_ema: (P, K) no-think log-probs of the targets under the baseline.
        valid: (P, K) bool, target j of position p exists inside its document and row (valid[:, 0] is x_t itself).
        discount: gamma in (0, 1].

    Returns:
        (P, G) rewards, in the inputs' promoted dtype. Not detached (callers pass no-grad scores).
    """
    if s_pred.dim() != 3 or s_ema.shape != (s_pred.shape[0], s_pred.shape[2]) or valid.shape != s_ema.shape:
        raise ValueError(
            f'horizon_gain expects (P, G, K), (P, K) and (P, K), got {tuple(s_pred.shape)}, {tuple(s_ema.shape)} '
            f'and {tuple(valid.shape)}'
        )
    if not 0.0 < discount <= 1.0:
        raise ValueError(f'horizon_gain needs a discount in (0, 1], got {discount}')
    gain = s_pred - s_ema.unsqueeze(1)  # (P, G, K)
    gain = torch.where(valid.bool().unsqueeze(1), gain, torch.zeros((), dtype=gain.dtype, device=gain.device))
    out = gain[..., 0]
    for j in range(1, gain.shape[-1]):  # term by term, so that K = 1 is information_gain bit for bit
        out = out + gain[..., j] * discount**j
    return out


def rpt_reward(s_pred: torch.Tensor, s_max: torch.Tensor) -> torch.Tensor:
    """RPT's verifiable reward for one predicted token: 1 if x_t is the greedy prediction after the thought, else 0.

    .. math:: r_{p,g} = \\mathbb{1}\\big[S^{pred}_{p,g} \\ge \\max_v \\log p_\\theta(v | x_{<t}, c_g)\\big]

    Greedy (argmax), not sampled: the prediction is a deterministic function of the thought, so all the reward's
    variance within a group comes from the thoughts, and no further random draw is needed. Ties: x_t counts as
    predicted when its log-prob equals the maximum (every tied token is "the" greedy prediction; both values must
    come from the same log-softmax row, as :func:`rlp.scoring.policy_forward` gives them).

    Args:
        s_pred: (P, G) log p_theta(x_t | x_<t, c_g) at temperature 1.
        s_max: (P, G) max over the vocabulary of the same distribution.

    Returns:
        (P, G) rewards in {0, 1}, float32 (float64 for float64 input).
    """
    if s_pred.shape != s_max.shape or s_pred.dim() != 2:
        raise ValueError(f'rpt_reward expects two (P, G) tensors, got {tuple(s_pred.shape)} and {tuple(s_max.shape)}')
    return (s_pred >= s_max).to(_compute_dtype(s_pred, s_max))


def group_advantages(rewards: torch.Tensor, std_normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages (the paper's Eq. 7), detached.

    .. math:: A_{p,g} = \\frac{G}{G-1}\\,(r_{p,g} - \\bar r_p), \\qquad \\bar r_p = \\frac1G \\sum_j r_{p,j}

    With ``std_normalize`` (off in the paper; GRPO's default) the result is further divided by
    ``std_p + eps``, std_p the unbiased standard deviation of the group. Adding a constant to every reward of a
    group (e.g. S_EMA) leaves A unchanged; a group of identical rewards gives A = 0.

    Args:
        rewards: (P, G) rewards, G >= 2.
        std_normalize: divide by the group's standard deviation. Default: False.
        eps: added to the std before dividing. Default: 1e-6.

    Returns:
        (P, G) advantages (float32, or float64 for float64 input), detached.
    """
    if rewards.dim() != 2:
        raise ValueError(f'group_advantages expects rewards of shape (P, G), got {tuple(rewards.shape)}')
    group = rewards.shape[1]
    if group < 2:
        raise ValueError(
            f'group_advantages needs G >= 2 thoughts per position, got G = {group}; the group mean '
            f'is the baseline, so set rlp.rollouts.group_size >= 2'
        )
    r = rewards.detach().to(_compute_dtype(rewards))
    centred = r - r.mean(dim=1, keepdim=True)  # (P, G)
    adv = centred * (group / (group - 1))
    if std_normalize:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv


def clipped_surrogate(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    normalizer: Optional[float | torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped surrogate over thought tokens, length-normalised per rollout (the paper's Eq. 8).

    .. math::
        \\rho_{p,g,u} = \\exp(\\log\\pi_{new} - \\log\\pi_{old}), \\quad
        \\ell_{p,g} = -\\frac{1}{|c_{p,g}|}\\sum_{u \\in c_{p,g}}
            \\min\\big(\\rho A_{p,g},\\ \\mathrm{clip}(\\rho, 1-\\epsilon_{low}, 1+\\epsilon_{high}) A_{p,g}\\big)

    and ``loss = sum over rollouts with |c| >= 1 of l / normalizer``. Rollouts without any masked-in token
    contribute nothing; masked slots may hold any value (NaN, inf) without effect on the loss or its gradient.
    An all-masked input gives loss 0 that still has a graph to ``logp_new``.

    Args:
        logp_new: (P, G, T) log pi_theta of each thought token (carries the gradient).
        logp_old: (P, G, T) log pi_old of each token (the sampling policy); treated as a constant.
        advantages: (P, G) advantages; treated as a constant.
        mask: (P, G, T) bool, True on trained thought tokens.
        eps_low: lower clip, ratio >= 1 - eps_low, in [0, 1).
        eps_high: upper clip, ratio <= 1 + eps_high, >= 0.
        normalizer: the denominator of the sum over rollouts. Default (None): the number of rollouts in this
            call with at least one token (clamped to >= 1), i.e. the mean of the paper. A microbatch of a larger
            batch passes :func:`rlp.step.loss_normalizer` so that gradient accumulation is exact.

    Returns:
        ``(loss, metrics)``: a scalar loss (float32, float64 for float64 input) and detached 0-dim metrics
        ``clip_fraction`` (share of tokens where the clipped branch is active), ``ratio_min``, ``ratio_max``,
        ``ratio_mean``, ``approx_kl`` (mean of rho - 1 - log rho), ``num_tokens``, ``num_rollouts``.
    """
    if logp_new.shape != logp_old.shape or logp_new.shape != mask.shape or logp_new.dim() != 3:
        raise ValueError(
            f'clipped_surrogate expects logp_new, logp_old and mask of one shape (P, G, T), got '
            f'{tuple(logp_new.shape)}, {tuple(logp_old.shape)}, {tuple(mask.shape)}'
        )
    if advantages.shape != logp_new.shape[:2]:
        raise ValueError(
            f'clipped_surrogate expects advantages of shape (P, G) = {tuple(logp_new.shape[:2])}, '
            f'got {tuple(advantages.shape)}'
        )
    if not (0.0 <= eps_low < 1.0 and eps_high >= 0.0):
        raise ValueError(
            f'clip epsilons out of range: eps_low={eps_low} must be in [0, 1), eps_high={eps_high} ' f'must be >= 0'
        )
    dtype = _compute_dtype(logp_new, logp_old, advantages)
    mask = mask.bool()
    new = logp_new.to(dtype)
    old = logp_old.detach().to(dtype)
    # Poison-safe: masked slots become log-ratio 0 before exp, and their gradient is cut by torch.where.
    log_ratio = torch.where(mask, new - old, torch.zeros_like(new))  # (P, G, T)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(dtype).unsqueeze(-1)  # (P, G, 1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = torch.where(mask, -torch.minimum(unclipped, clipped), torch.zeros_like(new))  # (P, G, T)
    n_tok = mask.sum(dim=-1)  # (P, G)
    per_rollout = per_token.sum(dim=-1) / n_tok.clamp(min=1).to(dtype)  # (P, G); 0 where n_tok == 0
    has_tokens = n_tok > 0
    if normalizer is None:
        denom = has_tokens.sum().clamp(min=1).to(dtype)
    else:
        denom = torch.as_tensor(normalizer, dtype=dtype, device=new.device).clamp(min=1e-12)
    loss = per_rollout.sum() / denom

    with torch.no_grad():
        n_total = mask.sum()
        safe_n = n_total.clamp(min=1).to(dtype)
        active = ((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))
        has_any = n_total > 0
        one = torch.ones((), dtype=dtype, device=new.device)
        metrics = {
            'clip_fraction': (active & mask).sum().to(dtype) / safe_n,
            'ratio_min': torch.where(
                has_any, torch.where(mask, ratio, torch.inf).flatten().min() if mask.any() else one, one
            ),
            'ratio_max': torch.where(
                has_any, torch.where(mask, ratio, -torch.inf).flatten().max() if mask.any() else one, one
            ),
            'ratio_mean': torch.where(mask, ratio, 0).sum() / safe_n + torch.where(has_any, 0.0, 1.0),
            'approx_kl': torch.where(mask, ratio - 1.0 - log_ratio, 0).sum() / safe_n,
            'num_tokens': n_total.to(dtype),
            'num_rollouts': has_tokens.sum().to(dtype),
        }
    return loss, metrics
