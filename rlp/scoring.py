"""Scoring: the policy forward over ``prompt thought x_t``, the no-think baseline, and no-think entropies.

- :func:`policy_forward` runs the *training* forward (with grad) over every rollout's sequence
  ``[instruction] prefix <think> c </think> x_t``, right-aligned (left padding), and returns the tempered
  log-probs of the thought tokens (the policy, carrying the gradient) and S_pred = log p_theta(x_t | prefix, c)
  at temperature 1, detached. Fusing S_pred into the training forward is exact because theta = theta_old when
  it runs (one optimizer step per generation batch) and saves a full forward per rollout. It runs in the model's
  current mode: with dropout > 0 both terms carry dropout noise (RLP recipes should set dropout to 0). With
  ``chunk_tokens`` the log-probs come from the final hidden states in checkpointed chunks (``rlp.logprobs``): no
  (N, T+2, V) logits are stored; models whose logits are not a plain Linear head fall back (warned once per class).
  With ``packed_tokens`` the prompt is run once with its thoughts in one sequence under a block attention mask
  (:mod:`rlp.packing`) where the model accepts one; otherwise (and as the fallback) one sequence per rollout.
  A model with recurrent layers (Mamba2 in Nemotron-H; detected from its cache layout, :func:`rlp.hf.recurrent_layers`)
  always runs unpacked: in a packed row a thought's recurrent state would carry into the next thought, which no mask
  can stop (said once in the log), and its sequences are right-padded (no padding before a recurrent state).
  :func:`policy_scores` is the same forward with more outputs: with ``prompts.targets`` (the ``horizon`` reward) the
  sequences also carry x_t .. x_{t+K-2} after the thought and S_pred is read for each of the K targets; with
  ``greedy`` (the ``rpt`` reward) the max log-prob at x_t's slot too, from the same log-softmax row.
- :func:`nothink_logprob` gives S_EMA = log p_teacher(x_t | [instruction] prefix) from the same left-padded
  prompts (the logit before the opening tag), no grad, eval mode.
- :func:`nothink_horizon` gives the same for the K targets x_t .. x_{t+K-1} of a ``horizon`` reward (the prompt without
  its opening tag, followed by x_t .. x_{t+K-2}).
- :func:`nothink_entropy` gives H(p_teacher(. | x_<t)) at every token of a batch, with each document's context
  only (segments are run as separate sequences), for the ``entropy`` position strategy.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, NamedTuple, Optional

import torch

from rlp.hf import call_model, eval_mode, keep_last_logits, recurrent_layers, unwrap_hf
from rlp.logprobs import HeadCapture, chunked_token_logprobs, last_logits, linear_head, logprob_and_max
from rlp.packing import packed_policy_forward, supports_block_mask
from rlp.positions import segment_starts
from rlp.rollouts import Prompts, Rollouts

__all__ = ['PolicyScores', 'nothink_entropy', 'nothink_horizon', 'nothink_logprob', 'policy_forward', 'policy_scores']

log = logging.getLogger(__name__)


def _align(seq: torch.Tensor, valid: torch.Tensor, pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid tokens to one end, keeping their order: (N, L) -> ids, mask. ``left=False``: valid
    tokens at the right end (left padding); ``left=True``: at the left end (right padding)."""
    flag = (~valid if left else valid).to(torch.int8)
    order = torch.argsort(flag, dim=1, stable=True)
    ids = torch.where(valid, seq, torch.full_like(seq, pad_id)).gather(1, order)
    return ids, valid.gather(1, order).long()


class PolicyScores(NamedTuple):
    """What the training forward gives (:func:`policy_scores`).

    Attributes:
        logp_new: (P, G, T) tempered log-probs of the thought tokens (with grad; 0 beyond each length).
        s_pred: (P, G, K) log p_theta(x_{t+j} | prefix, c, x_t .. x_{t+j-1}) at temperature 1, detached; K = 1
            without ``prompts.targets``; slots of missing targets (``prompts.targets_valid`` False) hold any value.
        s_max: (P, G) max over the vocabulary of log p_theta(. | prefix, c) at x_t's slot, from the same log-softmax
            row as s_pred[..., 0] (``greedy=True``), else None.
    """

    logp_new: torch.Tensor
    s_pred: torch.Tensor
    s_max: Optional[torch.Tensor]


def policy_forward(
    model: Any,
    prompts: Prompts,
    rollouts: Rollouts,
    *,
    temperature: float,
    pad_id: int,
    chunk_tokens: Optional[int] = None,
    packed_tokens: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training forward over ``prompt thought x_t`` for all P*G rollouts (:func:`policy_scores` for x_t alone).

    Args:
        model: the model to call (HF module or Composer's HuggingFaceModel), in its current (train) mode.
        prompts: the P prompts the rollouts were sampled from (their ``targets`` are not used).
        rollouts: P x G thoughts (tokens, lengths).
        temperature: the sampling temperature; the policy is softmax(logits / temperature).
        pad_id: padding id.
        chunk_tokens: score the thought tokens from the final hidden states ``chunk_tokens`` at a time without
            keeping full-vocabulary logits for backward (``rlp.logprobs``); None = materialise the last T+2
            logits of every rollout (also the fallback for models whose logits are not ``lm_head(h)``).
        packed_tokens: run each prompt once, followed by its thoughts, in rows of at most this many tokens with a
            block attention mask (:func:`rlp.packing.packed_policy_forward`; the same values and gradients), for
            models that accept a custom 4D mask (:func:`rlp.packing.supports_block_mask`); None, or a model that
            does not, = one unpacked sequence per rollout.

    Returns:
        ``logp_new`` (P, G, T) tempered log-probs of the thought tokens (with grad; 0 beyond each length) and
        ``s_pred`` (P, G) log p(x_t | prompt, thought) at temperature 1, detached.
    """
    if prompts.targets is not None:
        prompts = Prompts(prompts.ids, prompts.mask, prompts.target, open_len=prompts.open_len)
    out = policy_scores(
        model,
        prompts,
        rollouts,
        temperature=temperature,
        pad_id=pad_id,
        chunk_tokens=chunk_tokens,
        packed_tokens=packed_tokens,
    )
    return out.logp_new, out.s_pred[..., 0]


def policy_scores(
    model: Any,
    prompts: Prompts,
    rollouts: Rollouts,
    *,
    temperature: float,
    pad_id: int,
    chunk_tokens: Optional[int] = None,
    packed_tokens: Optional[int] = None,
    greedy: bool = False,
) -> PolicyScores:
    """Training forward over ``prompt thought x_t .. x_{t+K-2}`` for all P*G rollouts (:class:`PolicyScores`).

    The same arguments as :func:`policy_forward`, plus: ``prompts.targets`` (P, K) (K > 1: the forward also carries
    the existing targets x_t .. x_{t+m-2} after the thought, m = targets_valid.sum(1), and scores the m targets)
    and ``greedy`` (also return ``s_max``, for the ``rpt`` reward). Without targets and ``greedy`` the values are
    those of :func:`policy_forward`, computed by the same operations.
    """
    if packed_tokens and _packable(model):
        packed = packed_policy_forward(
            model,
            prompts,
            rollouts,
            temperature=temperature,
            pad_id=pad_id,
            chunk_tokens=chunk_tokens,
            max_tokens=packed_tokens,
            greedy=greedy,
        )
        if packed is not None:
            return PolicyScores(*packed)
    p, g, width = rollouts.tokens.shape
    n = p * g
    k = prompts.horizon
    dev = prompts.ids.device
    ids_p = prompts.ids.repeat_interleave(g, dim=0)  # (N, Lp)
    mask_p = prompts.mask.repeat_interleave(g, dim=0).bool()
    thought = rollouts.tokens.reshape(n, width)  # (N, T)
    lengths = rollouts.lengths.reshape(n)
    col = torch.arange(width, device=dev)
    thought_valid = col.unsqueeze(0) < lengths.unsqueeze(1)
    if prompts.targets is None:
        target = prompts.target.repeat_interleave(g, dim=0).view(n, 1)  # (N, K = 1)
        target_valid = torch.ones_like(target, dtype=torch.bool)
    else:
        target = prompts.targets.repeat_interleave(g, dim=0)  # (N, K)
        target_valid = prompts.targets_valid.repeat_interleave(g, dim=0).bool()  # type: ignore[union-attr]
    m = target_valid.sum(1)  # (N,) existing targets, >= 1
    seq = torch.cat([ids_p, thought, target], dim=1)
    valid = torch.cat([mask_p, thought_valid, target_valid], dim=1)
    # A recurrent model gets right padding: its state must see no padding before the sequence (mamba-ssm's fused
    # training kernel masks padding only at the block input; with trailing padding nothing reads the padded steps).
    # Every position is then kept; otherwise the logits predicting thought token 0 .. x_{t+K-1} sit in the last
    # width + K + 1.
    recurrent = bool(recurrent_layers(model))
    ids, attn = _align(seq, valid, pad_id, left=recurrent)
    pos_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    keep = seq.shape[1] if recurrent else width + k + 1
    # kept index of the logit predicting thought token j: base + j; x_{t+i}'s logit is at base + length + i
    base = mask_p.sum(1) - 1 if recurrent else width + k - m - lengths  # (N,)
    src = base.unsqueeze(1) + col.unsqueeze(0)  # (N, T)
    step = torch.arange(k, device=dev).view(1, k)
    tgt_idx = torch.where(target_valid, (base + lengths).view(n, 1) + step, (base + lengths).view(n, 1))  # (N, K)
    tgt = tgt_idx.view(n, k, 1)
    src = torch.where(thought_valid, src, tgt_idx[:, :1].expand_as(src))  # any in-range index for padding slots
    kept_valid = attn[:, -keep:].bool()  # padding positions are cut out of the graph (no NaN into the gradient)
    kwargs = dict(
        input_ids=ids, attention_mask=attn, position_ids=pos_ids, use_cache=False, **keep_last_logits(model, keep)
    )
    head = linear_head(model) if chunk_tokens and type(unwrap_hf(model)).__name__ not in _WARNED else None
    if head is not None:

        def score(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
            """Runs inside the head's call: (N, >= T + K + 1, D) hidden states -> (M,) thought logp, (N * K,) S_pred
            and (N,) max log-prob at x_t (greedy) or None."""
            h = hidden[:, -keep:]
            h = torch.where(kept_valid.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=dev))
            rows = h.gather(1, src.unsqueeze(-1).expand(-1, -1, h.shape[-1]))[thought_valid]  # (M, D)
            lp = chunked_token_logprobs(
                rows, head, thought[thought_valid], temperature=temperature, chunk=int(chunk_tokens)
            )  # type: ignore[arg-type]
            with torch.no_grad():
                h_t = h.gather(1, tgt.expand(-1, -1, h.shape[-1])).reshape(n * k, -1)  # (N * K, D)
                if greedy:
                    s, s_max = logprob_and_max(h_t, head, target.reshape(-1), chunk=int(chunk_tokens))
                    return lp, s, s_max.view(n, k)[:, 0]
                s = chunked_token_logprobs(h_t, head, target.reshape(-1), chunk=int(chunk_tokens))
            return lp, s, None

        with HeadCapture(head, score) as cap:
            out = call_model(model, **kwargs)
        if cap.result is not None and cap.matches(out.logits):
            lp, s_pred, s_max = cap.result
            # the loss must reach the wrapper's output: FSDP's pre-backward hooks sit on it (0 * logits, tiny)
            lp = lp + out.logits.sum().float() * 0.0
            logp_new = torch.zeros((n, width), dtype=lp.dtype, device=dev).masked_scatter(thought_valid, lp)
            return PolicyScores(
                logp_new.view(p, g, width), s_pred.view(p, g, k), None if s_max is None else s_max.view(p, g)
            )
        _warn_fallback(model)
    out = call_model(model, **kwargs)
    logits = out.logits[:, -keep:]  # (N, keep, V)
    logits = torch.where(kept_valid.unsqueeze(-1), logits, torch.zeros((), dtype=logits.dtype, device=dev))
    pred = logits.gather(1, src.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # (N, T, V)
    logp_new = torch.log_softmax(pred.float() / temperature, -1).gather(-1, thought.unsqueeze(-1)).squeeze(-1)
    logp_new = torch.where(thought_valid, logp_new, torch.zeros_like(logp_new))
    s_max = None
    with torch.no_grad():
        at_t = logits.gather(1, tgt.expand(-1, -1, logits.shape[-1]))  # (N, K, V)
        logp_t = torch.log_softmax(at_t.float(), -1)
        s_pred = logp_t.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (N, K)
        if greedy:
            s_max = logp_t[:, 0].amax(-1).view(p, g)
    return PolicyScores(logp_new.view(p, g, width), s_pred.view(p, g, k), s_max)


def _packable(model: Any) -> bool:
    """A packed training forward is exact for this model: it takes a block mask and has no recurrent layer."""
    recurrent = recurrent_layers(model)
    if recurrent:
        name = type(unwrap_hf(model)).__name__
        if name not in _LOGGED_UNPACKED:
            _LOGGED_UNPACKED.add(name)
            log.info(
                'RLP: %s has recurrent layers %s: the training forward runs one sequence per rollout (a packed row '
                "would carry one thought's recurrent state into the next); rlp.loss.packed_forward_tokens is not used",
                name,
                recurrent,
            )
        return False
    return supports_block_mask(model)


_LOGGED_UNPACKED: set[str] = set()


def _warn_fallback(model: Any) -> None:
    name = type(unwrap_hf(model)).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f'RLP: {name} logits are not a plain Linear head of the final hidden states; scoring falls '
            f'back to full logits (more memory); set rlp.loss.logprob_chunk_tokens: null to silence this',
            stacklevel=2,
        )


_WARNED: set[str] = set()


@torch.no_grad()
def nothink_logprob(model: Any, prompts: Prompts, module: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """(P,) log p(x_t | [instruction] prefix) under ``model`` (eval mode, no grad).

    The prompts end with the opening tag (``prompts.open_len`` tokens); the logit just before it is the no-think
    prediction.
    """
    if len(prompts) == 0:
        return torch.zeros(0, device=prompts.ids.device)
    keep = prompts.open_len + 1
    with eval_mode(module if module is not None else model):
        pos_ids = (prompts.mask.cumsum(-1) - 1).clamp(min=0)
        _, logits = last_logits(
            model,
            keep,
            input_ids=prompts.ids,
            attention_mask=prompts.mask,
            position_ids=pos_ids,
            use_cache=False,
            **keep_last_logits(model, keep),
        )
    return torch.log_softmax(logits[:, 0], -1).gather(-1, prompts.target.view(-1, 1)).squeeze(-1)


@torch.no_grad()
def nothink_horizon(model: Any, prompts: Prompts, module: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """(P, K) log p(x_{t+j} | [instruction] prefix, x_t .. x_{t+j-1}) under ``model`` (eval mode, no grad).

    The no-think sequence is the prompt without its opening tag followed by the existing targets x_t .. x_{t+m-2}
    (``prompts.targets``, m = ``targets_valid.sum(1)``); slots of missing targets hold any finite value. Without
    ``prompts.targets`` (K = 1) this is :func:`nothink_logprob` as a (P, 1) column.
    """
    if prompts.targets is None or len(prompts) == 0:
        return nothink_logprob(model, prompts, module).view(-1, 1)
    k = prompts.horizon
    valid_t = prompts.targets_valid.bool()  # type: ignore[union-attr]
    cut = prompts.ids.shape[1] - prompts.open_len  # the prompt without its opening tag
    seq = torch.cat([prompts.ids[:, :cut], prompts.targets[:, : k - 1]], dim=1)
    valid = torch.cat([prompts.mask[:, :cut].bool(), valid_t[:, 1:]], dim=1)  # x_{t+j} is fed if x_{t+j+1} exists
    ids, attn = _align(seq, valid, 0, left=False)
    m = valid_t.sum(1, keepdim=True)  # (P, 1)
    step = torch.arange(k, device=ids.device).view(1, k)
    src = torch.where(valid_t, k - m + step, k - m)  # (P, K): the kept logit predicting x_{t+j}
    with eval_mode(module if module is not None else model):
        pos_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        _, logits = last_logits(
            model,
            k,
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos_ids,
            use_cache=False,
            **keep_last_logits(model, k),
        )
    logits = logits.gather(1, src.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # (P, K, V)
    return torch.log_softmax(logits, -1).gather(-1, prompts.targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def nothink_entropy(
    model: Any,
    input_ids: torch.Tensor,
    segment_ids: Optional[torch.Tensor],
    pad_id: int,
    module: Optional[torch.nn.Module] = None,
) -> torch.Tensor:
    """(B, L) entropy (nats) of p(. | x_<t) for each token x_t, each document seen alone; -inf at document starts.

    Every document segment becomes its own right-padded sequence, so context never crosses a document boundary.
    """
    b, length = input_ids.shape
    dev = input_ids.device
    seg = torch.zeros_like(input_ids) if segment_ids is None else segment_ids
    starts = segment_starts(seg.cpu())
    spans = []  # (row, start, end)
    for r in range(b):
        s_list = torch.unique(starts[r]).tolist()
        ends = s_list[1:] + [length]
        spans += [(r, s, e) for s, e in zip(s_list, ends)]
    width = max(e - s for _, s, e in spans)
    ids = torch.full((len(spans), width), pad_id, dtype=torch.long, device=dev)
    attn = torch.zeros((len(spans), width), dtype=torch.long, device=dev)
    for i, (r, s, e) in enumerate(spans):
        ids[i, : e - s] = input_ids[r, s:e]
        attn[i, : e - s] = 1
    with eval_mode(module if module is not None else model):
        logits = call_model(model, input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
    logp = torch.log_softmax(logits, -1)
    ent = -(logp.exp() * logp).sum(-1)  # (S, W): entropy of the prediction of token w + 1
    out = torch.full((b, length), -torch.inf, device=dev)
    for i, (r, s, e) in enumerate(spans):
        out[r, s + 1 : e] = ent[i, : e - s - 1]
    return out
