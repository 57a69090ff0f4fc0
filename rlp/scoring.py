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
- :func:`nothink_logprob` gives S_EMA = log p_teacher(x_t | [instruction] prefix) from the same left-padded
  prompts (the logit before the opening tag), no grad, eval mode.
- :func:`nothink_entropy` gives H(p_teacher(. | x_<t)) at every token of a batch, with each document's context
  only (segments are run as separate sequences), for the ``entropy`` position strategy.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional

import torch

from rlp.hf import call_model, eval_mode, keep_last_logits, recurrent_layers, unwrap_hf
from rlp.logprobs import HeadCapture, chunked_token_logprobs, last_logits, linear_head
from rlp.packing import packed_policy_forward, supports_block_mask
from rlp.positions import segment_starts
from rlp.rollouts import Prompts, Rollouts

__all__ = ['nothink_entropy', 'nothink_logprob', 'policy_forward']

log = logging.getLogger(__name__)


def _align(seq: torch.Tensor, valid: torch.Tensor, pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid tokens to one end, keeping their order: (N, L) -> ids, mask. ``left=False``: valid
    tokens at the right end (left padding); ``left=True``: at the left end (right padding)."""
    flag = (~valid if left else valid).to(torch.int8)
    order = torch.argsort(flag, dim=1, stable=True)
    ids = torch.where(valid, seq, torch.full_like(seq, pad_id)).gather(1, order)
    return ids, valid.gather(1, order).long()


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
    """Training forward over ``prompt thought x_t`` for all P*G rollouts.

    Args:
        model: the model to call (HF module or Composer's HuggingFaceModel), in its current (train) mode.
        prompts: the P prompts the rollouts were sampled from.
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
    if packed_tokens and _packable(model):
        packed = packed_policy_forward(
            model,
            prompts,
            rollouts,
            temperature=temperature,
            pad_id=pad_id,
            chunk_tokens=chunk_tokens,
            max_tokens=packed_tokens,
        )
        if packed is not None:
            return packed
    p, g, width = rollouts.tokens.shape
    n = p * g
    dev = prompts.ids.device
    ids_p = prompts.ids.repeat_interleave(g, dim=0)  # (N, Lp)
    mask_p = prompts.mask.repeat_interleave(g, dim=0).bool()
    thought = rollouts.tokens.reshape(n, width)  # (N, T)
    lengths = rollouts.lengths.reshape(n)
    col = torch.arange(width, device=dev)
    thought_valid = col.unsqueeze(0) < lengths.unsqueeze(1)
    target = prompts.target.repeat_interleave(g, dim=0).view(n, 1)
    seq = torch.cat([ids_p, thought, target], dim=1)
    valid = torch.cat([mask_p, thought_valid, torch.ones_like(target, dtype=torch.bool)], dim=1)
    # A recurrent model gets right padding: its state must see no padding before the sequence (mamba-ssm's fused
    # training kernel masks padding only at the block input; with trailing padding nothing reads the padded steps).
    # Every position is then kept; otherwise the logits predicting thought token 0 .. x_t sit in the last width + 2.
    recurrent = bool(recurrent_layers(model))
    ids, attn = _align(seq, valid, pad_id, left=recurrent)
    pos_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    keep = seq.shape[1] if recurrent else width + 2
    # kept index of the logit predicting thought token j: base + j; x_t's logit is at base + length
    base = mask_p.sum(1) - 1 if recurrent else width - lengths  # (N,)
    src = base.unsqueeze(1) + col.unsqueeze(0)  # (N, T)
    tgt = (base + lengths).view(n, 1, 1)  # (N, 1, 1)
    src = torch.where(thought_valid, src, tgt.view(n, 1).expand_as(src))  # any in-range index for padding slots
    kept_valid = attn[:, -keep:].bool()  # padding positions are cut out of the graph (no NaN into the gradient)
    kwargs = dict(
        input_ids=ids, attention_mask=attn, position_ids=pos_ids, use_cache=False, **keep_last_logits(model, keep)
    )
    head = linear_head(model) if chunk_tokens and type(unwrap_hf(model)).__name__ not in _WARNED else None
    if head is not None:

        def score(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Runs inside the head's call: (N, >= T + 2, D) hidden states -> (M,) thought logp, (N,) S_pred."""
            h = hidden[:, -keep:]
            h = torch.where(kept_valid.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=dev))
            rows = h.gather(1, src.unsqueeze(-1).expand(-1, -1, h.shape[-1]))[thought_valid]  # (M, D)
            lp = chunked_token_logprobs(
                rows, head, thought[thought_valid], temperature=temperature, chunk=int(chunk_tokens)
            )  # type: ignore[arg-type]
            with torch.no_grad():
                h_t = h.gather(1, tgt.expand(-1, 1, h.shape[-1])).squeeze(1)  # (N, D)
                s = chunked_token_logprobs(h_t, head, target.view(-1), chunk=int(chunk_tokens))
            return lp, s

        with HeadCapture(head, score) as cap:
            out = call_model(model, **kwargs)
        if cap.result is not None and cap.matches(out.logits):
            lp, s_pred = cap.result
            # the loss must reach the wrapper's output: FSDP's pre-backward hooks sit on it (0 * logits, tiny)
            lp = lp + out.logits.sum().float() * 0.0
            logp_new = torch.zeros((n, width), dtype=lp.dtype, device=dev).masked_scatter(thought_valid, lp)
            return logp_new.view(p, g, width), s_pred.view(p, g)
        _warn_fallback(model)
    out = call_model(model, **kwargs)
    logits = out.logits[:, -keep:]  # (N, keep, V)
    logits = torch.where(kept_valid.unsqueeze(-1), logits, torch.zeros((), dtype=logits.dtype, device=dev))
    pred = logits.gather(1, src.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # (N, T, V)
    logp_new = torch.log_softmax(pred.float() / temperature, -1).gather(-1, thought.unsqueeze(-1)).squeeze(-1)
    logp_new = torch.where(thought_valid, logp_new, torch.zeros_like(logp_new))
    with torch.no_grad():
        at_t = logits.gather(1, tgt.expand(-1, 1, logits.shape[-1])).squeeze(1)  # (N, V)
        s_pred = torch.log_softmax(at_t.float(), -1).gather(-1, target).squeeze(-1)
    return logp_new.view(p, g, width), s_pred.view(p, g)


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

    The prompts end with the opening tag; the logit just before it is the no-think prediction.
    """
    if len(prompts) == 0:
        return torch.zeros(0, device=prompts.ids.device)
    with eval_mode(module if module is not None else model):
        pos_ids = (prompts.mask.cumsum(-1) - 1).clamp(min=0)
        _, logits = last_logits(
            model,
            2,
            input_ids=prompts.ids,
            attention_mask=prompts.mask,
            position_ids=pos_ids,
            use_cache=False,
            **keep_last_logits(model, 2),
        )
    return torch.log_softmax(logits[:, 0], -1).gather(-1, prompts.target.view(-1, 1)).squeeze(-1)


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
