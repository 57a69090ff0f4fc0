"""The whole RLP step as one function: positions -> G thoughts -> scores -> information gain -> clipped surrogate.

:func:`rlp_loss` is the functional form of the method (in the style of ``composer.functional``): a researcher can
call it in a plain PyTorch loop, and the Composer ``Algorithm`` (:mod:`rlp.run.algorithm`) calls it once per
microbatch. It needs no Composer::

    teachers = Teachers('ema', tau=0.999); teachers.ensure(model)
    for i, batch in enumerate(loader):
        loss, stats = rlp_loss(model, teachers, batch, cfg, template, key=(seed, i))
        loss.backward(); opt.step(); opt.zero_grad(); teachers.update(model)
        print(stats.metrics())

For one position (prefix x_<t, target x_t) and its G thoughts c_1..c_G:

    s_pred_g = log p_theta(x_t | x_<t, c_g)       (training forward, detached, temperature 1)
    s_ema    = log p_phi(x_t | x_<t)              (the EMA teacher, no thought)
    r_g      = s_pred_g - s_base                  (s_base = s_ema for the paper's teacher kind ``ema``)
               (``rlp.reward.kind``: or the discounted gain over x_t .. x_{t+k-1}, ``horizon``; or 1 when x_t
               is the greedy prediction after c_g, ``rpt``: :func:`reward_of`)
    A_g      = G/(G-1) (r_g - mean_g r)
    loss     = sum over rollouts of the length-normalised clipped surrogate / loss_normalizer(...)

Shapes: P positions in the batch, G = ``cfg.rollouts.group_size``, T = longest thought.

Randomness: every draw is keyed on ``key = (seed, batch index)`` plus the row's sample id, the target index and
the rollout index (:mod:`rlp.keys`), so the same batch and key give the same thoughts on any rank, microbatch split
or restart.

Distributed: with ``synced=True`` (several ranks whose forwards are collective, e.g. FSDP) a rank whose batch has no
eligible position still runs one throw-away rollout with weight 0, and the decode loop takes the same number of
steps on every rank. The returned :class:`rlp.stats.RLPStats` sums over microbatches with ``+`` and over ranks with
:meth:`~rlp.stats.RLPStats.all_reduce`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, NamedTuple, Optional

import torch

from rlp import dist
from rlp.config import PositionsConfig, RewardConfig, RLPConfig
from rlp.flops import FlopModel, rlp_flops
from rlp.hf import active_dropout, unwrap_hf
from rlp.keys import row_key
from rlp.objective import clipped_surrogate, group_advantages, horizon_gain, information_gain, rpt_reward
from rlp.packing import supports_block_mask
from rlp.positions import Positions, horizon_targets, select_positions
from rlp.rollouts import Prompts, Rollouts, build_prompts, rollout_uniforms, sample_thoughts
from rlp.scoring import PolicyScores, nothink_entropy, nothink_horizon, policy_scores
from rlp.stats import RLPStats, ThoughtSamples
from rlp.strictcfg import ConfigError
from rlp.teacher import Teachers
from rlp.template import ThoughtTemplate
from rlp.timing import StepTimer, untimed

__all__ = [
    'GlobalRollouts',
    'check_no_dropout',
    'choose_positions',
    'count_rollouts',
    'loss_normalizer',
    'reward_of',
    'rlp_loss',
]


def check_no_dropout(model: Any, training: Optional[bool] = None) -> None:
    """Refuse a policy in train mode with dropout > 0 (one-line ``ConfigError`` naming the settings and the fix).

    ``training``: the mode the model will run in; None = its current mode.

    S_pred and pi_new come from the training forward and pi_old from sampling in eval mode: with dropout the ratio
    and the reward carry dropout noise (measured on GPT-2's default 0.1: ratios 0.84-1.17 with no update).
    """
    hf = unwrap_hf(model)
    found = active_dropout(hf) if (hf.training if training is None else training) else []
    if found:
        keys = sorted(
            k
            for k, v in getattr(hf, 'config', object()).__dict__.items()
            if 'drop' in k and isinstance(v, float) and v > 0
        )
        more = f' and {len(found) - 3} more' if len(found) > 3 else ''
        raise ConfigError(
            f'RLP needs a model without dropout, but {", ".join(found[:3])}{more} are > 0: the importance ratio and '
            f'the reward would carry dropout noise; set the dropout to 0 (in a recipe: model.config_overrides: '
            f'{{{", ".join(f"{k}: 0.0" for k in keys) or "<dropout keys>: 0.0"}}})'
        )


def pad_id(template: ThoughtTemplate) -> int:
    """The padding id of prompts and thoughts: the tokenizer's pad, else its EOS, else 0."""
    return template.pad_id if template.pad_id is not None else (template.eos_id or 0)


def choose_positions(
    batch: dict[str, torch.Tensor],
    cfg: PositionsConfig,
    template: ThoughtTemplate,
    *,
    key: tuple[int, int],
    teachers: Optional[Teachers] = None,
    count_only: bool = False,
) -> Positions:
    """The target positions of a batch (``rlp.positions.select_positions`` with the batch contract's fields).

    ``strategy: entropy`` scores positions with the EMA teacher's no-think entropy (``teachers`` required), unless
    ``count_only`` (the count does not depend on the scores).
    """
    entropy = None
    if cfg.strategy == 'entropy' and not count_only:
        assert teachers is not None and teachers.ema.module is not None, 'entropy positions need the EMA teacher'
        entropy = nothink_entropy(teachers.ema.module, batch['input_ids'], batch.get('segment_ids'), pad_id(template))
    return select_positions(
        batch['input_ids'],
        batch.get('segment_ids'),
        row_key(batch.get('sample_id'), batch['input_ids']),
        cfg,
        template.excluded_targets,
        seed=key[0],
        batch_index=key[1],
        attention_mask=batch.get('attention_mask'),
        entropy=entropy,
        after_ids=template.after_ids,
    )


class GlobalRollouts(NamedTuple):
    """What the RLP loss of a global batch is divided by: its rollouts and rows, summed over all ranks.

    :func:`count_rollouts` measures it once per global batch; :func:`loss_normalizer` turns it into the denominator
    of one microbatch.
    """

    rollouts: float  # N: G times the positions of the global batch
    rows: float  # the rows of the global batch


def count_rollouts(
    batch: dict[str, torch.Tensor], cfg: RLPConfig, template: ThoughtTemplate, *, key: tuple[int, int]
) -> GlobalRollouts:
    """The rollouts and rows of the global batch, over ALL ranks (collective; positions counted, nothing sampled)."""
    pos = choose_positions(batch, cfg.positions, template, key=key, count_only=True)
    n_pos, rows = dist.all_reduce([float(len(pos)), float(batch['input_ids'].shape[0])])
    return GlobalRollouts(rollouts=n_pos * cfg.rollouts.group_size, rows=rows)


def loss_normalizer(global_rollouts: Optional[GlobalRollouts], rows: int) -> Optional[float]:
    """What the summed clipped surrogate of a (micro)batch of ``rows`` rows is divided by.

    The RLP loss of a global batch is the mean over its N = ``global_rollouts.rollouts`` rollouts of the
    length-normalised surrogate. A microbatch of B = ``rows`` rows is divided by ``N * B / B_all``
    (B_all = ``global_rollouts.rows``, at least 1): Composer scales a microbatch's loss by ``B / C`` (C the mean rows
    per rank) and DDP averages over the ranks (ranks * C = B_all), so the update is the sum over all rollouts / N
    whatever the microbatch split or the world size.

    ``global_rollouts=None`` (one call per update, as in a plain loop): None, which
    :func:`rlp.objective.clipped_surrogate` reads as the rollouts of this call with at least one token (their mean).

    Example: 48 rollouts over 8 rows; a microbatch of 2 rows carries a quarter of them.

        >>> loss_normalizer(GlobalRollouts(rollouts=48.0, rows=8.0), rows=2)
        12.0
        >>> loss_normalizer(None, rows=2) is None
        True
    """
    if global_rollouts is None:
        return None
    return global_rollouts.rollouts * rows / max(global_rollouts.rows, 1.0)


def _dummy_position(input_ids: torch.Tensor, min_context: int) -> Positions:
    """One throw-away position (row 0, last token) so a rank without positions joins the collective forwards."""
    t = torch.tensor([input_ids.shape[1] - 1])
    return Positions(
        row=torch.tensor([0]), target=t, start=(t - min_context).clamp(min=0), num_rows=0, rows_without_position=0
    )


def rlp_loss(
    model: Any,
    teachers: Teachers,
    batch: dict[str, torch.Tensor],
    cfg: RLPConfig,
    template: ThoughtTemplate,
    *,
    key: tuple[int, int],
    global_rollouts: Optional[GlobalRollouts] = None,
    synced: bool = False,
    keep_samples: bool = False,
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
    timer: Optional[StepTimer] = None,
    flop_model: Optional[FlopModel] = None,
) -> tuple[torch.Tensor, RLPStats]:
    """The RLP loss of one (micro)batch and its statistics.

    Args:
        model: the policy: an HF causal LM, or Composer's ``HuggingFaceModel`` around one (possibly DDP/FSDP
            wrapped); called in its current (train) mode for the training forward, in eval mode for sampling.
        teachers: the no-think baselines (:class:`rlp.teacher.Teachers`), already holding weights (``ensure``).
        batch: ``input_ids`` (B, L), optional ``segment_ids`` (B, L), ``attention_mask`` (B, L) and ``sample_id``
            (B,) (rows are keyed by a hash of their tokens without it).
        cfg: the algorithm's configuration (:class:`rlp.config.RLPConfig`).
        template: the resolved thought template (:func:`rlp.template.resolve_template`).
        key: ``(seed, global batch index)``, the shared part of every generator key.
        global_rollouts: the rollouts and rows of the global batch (:func:`count_rollouts`) when this call is one
            microbatch of it; the summed surrogate is divided by :func:`loss_normalizer`. None = the mean over the
            rollouts of this call.
        synced: several ranks with collective forwards: all ranks run the same decode steps, and a rank without
            positions runs one rollout with weight 0.
        keep_samples: also return what was sampled, on CPU, in ``stats.samples``.
        autocast: a context factory around the model calls (e.g. Composer's precision context).
        timer: adds the seconds of the parts (positions, rollout, teacher, policy_forward, objective) to it
            (:class:`rlp.timing.StepTimer`; benchmarks).
        flop_model: the model's sizes for the FLOP count in ``stats`` (:mod:`rlp.flops`); None = read from
            ``model`` (give it when the model is sharded: the count needs the unsharded sizes).

    Raises:
        ConfigError: the model is in train mode with dropout > 0 (:func:`check_no_dropout`).

    Returns:
        ``(loss, stats)``: a scalar float32 loss with a graph to the thought tokens' log-probs (0 with a graph-free
        zero when the batch has no eligible position and ``synced`` is off), and :class:`RLPStats`.
    """
    check_no_dropout(model)
    part = timer if timer is not None else untimed
    input_ids = batch['input_ids']
    with part('positions'):
        pos = choose_positions(batch, cfg.positions, template, key=key, teachers=teachers)
    stats = RLPStats(rows=float(pos.num_rows), rows_skipped=float(pos.rows_without_position))
    dummy = len(pos) == 0 and synced
    if dummy:
        pos = _dummy_position(input_ids, cfg.positions.min_context)
    if len(pos) == 0:
        return torch.zeros((), device=input_ids.device, dtype=torch.float32), stats

    pad = pad_id(template)
    ro_cfg = cfg.rollouts
    with part('positions'):
        keys = row_key(batch.get('sample_id'), input_ids)
        prompts = build_prompts(input_ids, pos, template, pad)
        if cfg.reward.tokens > 1:
            prompts.targets, prompts.targets_valid = horizon_targets(
                input_ids, batch.get('segment_ids'), batch.get('attention_mask'), pos, cfg.reward.tokens
            )
        rkeys = [(key[0], key[1], keys[r], t) for r, t in zip(pos.row.tolist(), pos.target.tolist())]
        u = rollout_uniforms(rkeys, ro_cfg.group_size, ro_cfg.max_thought_tokens)
    with autocast():
        with part('rollout'):
            ro = sample_thoughts(
                model,
                prompts,
                u,
                temperature=ro_cfg.temperature,
                top_p=ro_cfg.top_p,
                close_ids=template.close_ids,
                pad_id=pad,
                synced=synced,
            )
        with part('teacher'):
            current = ro.nothink_logp
            if prompts.targets is not None and cfg.teacher.kind == 'none':
                current = nothink_horizon(model, prompts)  # the current model's no-think scores of the K targets
            s_base, s_ema = teachers.nothink_logprobs(prompts, current=current)
        with part('policy_forward'):
            scores = policy_scores(
                model,
                prompts,
                ro,
                temperature=ro_cfg.temperature,
                pad_id=pad,
                chunk_tokens=cfg.loss.logprob_chunk_tokens,
                packed_tokens=cfg.loss.packed_forward_tokens,
                greedy=cfg.reward.kind == 'rpt',
            )
    logp_new = scores.logp_new
    s_pred = scores.s_pred[..., 0]  # (P, G): x_t after the thought
    s_ema = s_ema if s_ema.dim() == 1 else s_ema[:, 0]  # (P,): the one-token baseline every kind logs
    with part('objective'):
        rewards = reward_of(cfg.reward, scores, s_base, prompts)  # (P, G)
        adv = group_advantages(rewards, std_normalize=cfg.loss.std_normalize)
        logp_old = ro.logp if cfg.loss.behaviour_logprobs == 'sampler' else logp_new.detach()
        loss, m = clipped_surrogate(
            logp_new,
            logp_old,
            adv,
            ro.mask,
            cfg.loss.eps_low,
            cfg.loss.eps_high,
            normalizer=loss_normalizer(global_rollouts, input_ids.shape[0]),
        )
    if dummy:
        return loss * 0.0, stats
    with part('objective'):
        stats = stats + _rollout_stats(pos, ro, rewards, s_pred, s_ema, adv, m)
        packed = cfg.loss.packed_forward_tokens if supports_block_mask(model) else None
        horizon = None if prompts.targets_valid is None else prompts.targets_valid.sum(1).tolist()
        flops = rlp_flops(
            flop_model or FlopModel.of(model),
            prompts.mask.sum(1).tolist(),
            ro.lengths.tolist(),
            ro.truncated.tolist(),
            teacher_forwards=2 if cfg.teacher.kind == 'frozen' or (horizon and cfg.teacher.kind == 'none') else 1,
            packed_tokens=packed,
            horizon=horizon,
            open_len=prompts.open_len,
            close_len=len(template.close_ids),
        )
        stats.flops_prefill, stats.flops_decode = flops['rollout_prefill'], flops['rollout_decode']
        stats.flops_teacher, stats.flops_policy = flops['teacher'], flops['policy']
    if keep_samples:
        stats.samples = ThoughtSamples(
            row=pos.row,
            start=pos.start,
            target=pos.target,
            sample_keys=keys,
            tokens=ro.tokens.cpu(),
            lengths=ro.lengths.cpu(),
            truncated=ro.truncated.cpu(),
            rewards=rewards.cpu(),
            s_pred=s_pred.cpu(),
            s_ema=s_ema.cpu(),
            advantages=adv.cpu(),
        )
    return loss, stats


def reward_of(cfg: RewardConfig, scores: PolicyScores, s_base: torch.Tensor, prompts: Prompts) -> torch.Tensor:
    """(P, G) rewards of the kind ``cfg.kind`` (:mod:`rlp.objective`), float32, from the policy's scores and the
    baseline ``s_base`` ((P,), or (P, K) with ``prompts.targets``)."""
    if cfg.kind == 'rpt':
        assert scores.s_max is not None, 'the rpt reward needs policy_scores(greedy=True)'
        return rpt_reward(scores.s_pred[..., 0].float(), scores.s_max.float())
    if prompts.targets is None:  # info_gain, and horizon with k = 1: the paper's reward, the same operations
        return information_gain(scores.s_pred[..., 0].float(), s_base.float())
    return horizon_gain(scores.s_pred.float(), s_base.float(), prompts.targets_valid, float(cfg.discount))


def _rollout_stats(
    pos: Positions,
    ro: Rollouts,
    rewards: torch.Tensor,
    s_pred: torch.Tensor,
    s_ema: torch.Tensor,
    adv: torch.Tensor,
    m: dict[str, torch.Tensor],
) -> RLPStats:
    g = rewards.shape[1]
    s_pred, s_ema, nothink = s_pred.float(), s_ema.float().unsqueeze(1), ro.nothink_logp.float().unsqueeze(1)
    return RLPStats(
        positions=float(len(pos)),
        rollouts=float(rewards.numel()),
        reward=float(rewards.sum()),
        reward_sq=float((rewards**2).sum()),
        s_pred=float(s_pred.sum()),
        s_ema=float(s_ema.sum()) * g,
        gain_ema=float((s_pred - s_ema).sum()),
        s_nothink=float(nothink.sum()) * g,
        gain_current=float((s_pred - nothink).sum()),
        adv_sq=float((adv**2).sum()),
        tokens=float(m['num_tokens']),
        clip_tokens=float(m['clip_fraction'] * m['num_tokens']),
        kl_tokens=float(m['approx_kl'] * m['num_tokens']),
        length=float(ro.lengths.sum()),
        truncated=float(ro.truncated.sum()),
        ratio_min=float(m['ratio_min']),
        ratio_max=float(m['ratio_max']),
        len_max=float(ro.lengths.max()),
    )
