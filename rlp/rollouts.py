"""Thought rollouts: G thoughts per position, sampled with a shared prefix KV cache.

Batching: the prompts of ALL positions of a microbatch (``[instruction] prefix <think>``) are left-padded into one
(P, Lp) tensor with an attention mask and position ids ``cumsum(mask) - 1``; one prefill computes their KV cache,
which the G thoughts of a position share: held once per prompt in a :class:`rlp.cascade.SharedPrefixCache` (Llama,
Qwen2, Qwen3: each decode step reads a prompt's keys/values once for its G rollouts), or, for other models, expanded
G times (``batch_repeat_interleave``). A hybrid model's recurrent layers (Mamba2: Nemotron-H) hold a state per
sequence, not keys/values: the prompt's state is computed once in the prefill and repeated for its G rollouts, which
then advance their own states (with the shared-prefix attention layers, or with the expanded cache). Decoding is our
own loop over the HF model with ``past_key_values`` (not ``generate``), so that:

- every rollout draws from its own keyed stream: the uniforms ``u`` of rollout (position, g) come from a generator
  keyed on (seed, batch index, sample id, target index, g), and a token is drawn by inverse-CDF sampling
  ``token = min{j : CDF_j > u * CDF_V}`` over softmax(logits / temperature) (top-p: over the renormalised nucleus).
  This is exact categorical sampling, fully batched, independent of the global RNG and of the microbatch split;
- a rollout stops at the closing tag (tags written as text: when its last sampled tokens are the closing string's
  tokens), and its row leaves the decoded batch and the KV cache (finished thoughts cost
  no compute); the loop stops when all rollouts have stopped. Under torch.distributed
  (``synced=True``) the stop decision is all-reduced, so every rank runs the same number of decode steps
  (HF's ``synced_gpus`` semantics; needed by FSDP, whose forwards are collective);
- a thought that reaches ``max_thought_tokens`` sampled tokens without closing is force-closed: the closing tag
  is appended (one token, or the closing string's tokens) as part of the sequence (x_t is scored after it) but is
  NOT trained (the policy did not choose it) and the rollout is flagged truncated. A sampled closing tag is a
  trained thought token (each of its tokens, for tags written as text).

Sampling runs under ``torch.no_grad()`` in eval mode (the previous mode is restored). The recorded log-probs are
those of the tempered policy softmax(logits / temperature) (top-p is treated as a sampler detail, as TRL/vLLM do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from transformers.cache_utils import Cache

from rlp.cascade import SharedPrefixCache, decoding_with, repeat_rows, select_rows, supports_shared_prefix
from rlp.hf import eval_mode, keep_last_logits, new_cache
from rlp.keys import keyed_generator
from rlp.logprobs import last_logits
from rlp.positions import Positions
from rlp.template import ThoughtTemplate

__all__ = [
    'Prompts',
    'Rollouts',
    'build_prompts',
    'sample_from_logits',
    'sample_thoughts',
    'rollout_uniforms',
]


@dataclass
class Prompts:
    """Left-padded thought prompts, one per position.

    Attributes:
        ids: (P, Lp) ``[instruction] prefix <think>``, left-padded with ``pad_id``.
        mask: (P, Lp) 1 on real tokens.
        target: (P,) the token x_t to predict after the thought.
        targets / targets_valid: (P, K) x_t .. x_{t+K-1} and which of them exist inside the document
            (:func:`rlp.positions.horizon_targets`), for a reward over K > 1 tokens; None = x_t only.
        open_len: tokens of the opening tag at the end of every prompt (1 for a special token; the string's tokens
            for tags written as text). The logit before them is the no-think prediction of x_t.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    targets: Optional[torch.Tensor] = None
    targets_valid: Optional[torch.Tensor] = None
    open_len: int = 1

    @property
    def horizon(self) -> int:
        """K, the targets scored per position (1 without ``targets``)."""
        return 1 if self.targets is None else int(self.targets.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class Rollouts:
    """G thoughts per position; P positions, T = longest thought in this call (closing tag included).

    Attributes:
        tokens: (P, G, T) thought tokens, closing tag included (sampled or forced), then ``pad_id``.
        logp: (P, G, T) log-prob of each sampled token under softmax(logits / temperature); 0 where not trained.
        mask: (P, G, T) bool, the trained tokens (sampled ones, a sampled closing tag included).
        lengths: (P, G) tokens in the thought including its closing tag (sampled or forced), >= 1.
        truncated: (P, G) bool, the thought hit ``max_thought_tokens`` and was force-closed.
        nothink_logp: (P,) log p_theta(x_t | [instruction] prefix) of the current model (eval mode), read from
            the prefill for free.
        decode_steps: decoder forwards run after the prefill (equal on all ranks when synced).
    """

    tokens: torch.Tensor
    logp: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    nothink_logp: torch.Tensor
    decode_steps: int


def build_prompts(input_ids: torch.Tensor, positions: Positions, template: ThoughtTemplate, pad_id: int) -> Prompts:
    """Left-padded ``[instruction] prefix <think>`` for every position (prefix = input_ids[row, start:target])."""
    ids_cpu = input_ids.detach().cpu()
    instr = list(template.instruction_ids)
    seqs = [
        instr + ids_cpu[r, s:t].tolist() + list(template.open_ids)
        for r, s, t in zip(positions.row.tolist(), positions.start.tolist(), positions.target.tolist())
    ]
    width = max((len(s) for s in seqs), default=1)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    target = ids_cpu[positions.row, positions.target] if len(positions) else torch.zeros(0, dtype=torch.long)
    dev = input_ids.device
    return Prompts(ids=ids.to(dev), mask=mask.to(dev), target=target.to(dev), open_len=len(template.open_ids))


def rollout_uniforms(keys: Sequence[tuple], group_size: int, steps: int) -> torch.Tensor:
    """(P, G, steps) uniforms in [0, 1): rollout g of position p draws from ``keyed_generator(*keys[p], g)``."""
    out = torch.empty(len(keys), group_size, steps)
    for p, key in enumerate(keys):
        for g in range(group_size):
            out[p, g] = torch.rand(steps, generator=keyed_generator(*key, 'thought', g))
    return out


def sample_from_logits(
    logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling: (N, V) logits, (N,) uniforms -> (N,) tokens and their log-probs under
    softmax(l / temperature).

    With z = l / temperature, m = max z and the unnormalised weights e = exp(z - m), S = sum e:

        token = min{j : cumsum(e)_j > u * S}           (top-p: over e sorted descending, cut to the nucleus)
        logp  = z_token - m - log S                     (the tempered distribution before top-p truncation)

    One (N, V) fp32 buffer holds z, then e, then its cumulative sum (in place); no normalised probabilities or
    full log-softmax are materialised (the same draws as normalising first, up to rounding at a CDF boundary).
    """
    w = logits.float() / temperature  # (N, V), the one full-vocabulary buffer (a new tensor: logits untouched)
    m = w.amax(-1, keepdim=True)  # (N, 1)
    w.sub_(m).exp_()  # e
    order = None
    if top_p < 1.0:
        w, order = w.sort(dim=-1, descending=True)
        total = w.sum(-1, keepdim=True)
        w.mul_((w.cumsum(-1) - w) < top_p * total)  # the nucleus; the top token always kept
    else:
        total = None
    cdf = w.cumsum_(-1)  # (N, V)
    norm = cdf[:, -1:] if total is None else total  # S
    j = torch.searchsorted(cdf, u.to(cdf).unsqueeze(-1) * cdf[:, -1:], right=True).clamp(max=cdf.shape[-1] - 1)
    tokens = j.squeeze(-1) if order is None else order.gather(-1, j).squeeze(-1)
    z_tok = logits.gather(-1, tokens.unsqueeze(-1)).float() / temperature  # (N, 1)
    return tokens, (z_tok - m - norm.log()).squeeze(-1)


def _expand_cache(past: Any, repeats: int, batch: int) -> Any:
    if isinstance(past, Cache):
        for layer in past.layers:
            repeat_rows(layer, repeats, batch)
        return past
    return tuple(tuple(t.repeat_interleave(repeats, dim=0) for t in layer) for layer in past)  # legacy tuples


def _select_cache(past: Any, idx: torch.Tensor) -> Any:
    if isinstance(past, Cache):
        for layer in past.layers:
            select_rows(layer, idx)
        return past
    return tuple(tuple(t[idx] for t in layer) for layer in past)  # legacy tuples


def _all_done(done: torch.Tensor, synced: bool) -> bool:
    flag = (~done).any().to(torch.int32).view(1)
    if synced:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item()) == 0


@torch.no_grad()
def sample_thoughts(
    model: Any,
    prompts: Prompts,
    uniforms: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    close_ids: Sequence[int],
    pad_id: int,
    synced: bool = False,
    shared_prefix: bool | None = None,
) -> Rollouts:
    """Sample G thoughts per prompt with a shared prefix KV cache (see the module docstring).

    Args:
        model: what to call (an HF causal LM, or Composer's HuggingFaceModel around it); switched to eval mode for
            the sampling and back.
        prompts: P left-padded prompts ending with the opening tag.
        uniforms: (P, G, max_thought_tokens) keyed uniforms (:func:`rollout_uniforms`).
        temperature / top_p: sampling settings (temperature > 0, top_p in (0, 1]).
        close_ids / pad_id: the closing tag's token ids (one for a special token, several for text) and the padding
            token id.
        synced: all-reduce the stop decision so all ranks run the same number of decode steps.
        shared_prefix: decode with :class:`rlp.cascade.SharedPrefixCache` (each prompt's KV held once, read once per
            step for its G rollouts) instead of an ordinary cache expanded G times. None: wherever
            :func:`rlp.cascade.supports_shared_prefix` says the model can; True for a model it cannot raises.

    Returns:
        :class:`Rollouts` on the prompts' device.
    """
    p, g, max_tokens = uniforms.shape
    dev = prompts.ids.device
    close = torch.tensor(list(close_ids), dtype=torch.long, device=dev)  # (K,)
    k = close.numel()
    if k == 0:
        raise ValueError('close_ids is empty; the closing tag needs at least one token')
    supported = supports_shared_prefix(model)
    if shared_prefix and not supported:
        raise ValueError(
            'shared_prefix=True needs a Llama, Qwen2, Qwen3 or Nemotron-H model with eager or sdpa attention and no '
            'sliding window; pass shared_prefix=None to use it where it applies'
        )
    n = p * g
    with eval_mode(model):
        pos_ids = (prompts.mask.cumsum(-1) - 1).clamp(min=0)
        keep = prompts.open_len + 1  # the logit before the opening tag (no-think x_t) .. the last one (1st token)
        out, tail = last_logits(  # (P, open_len + 1, V) fp32
            model,
            keep,
            input_ids=prompts.ids,
            attention_mask=prompts.mask,
            position_ids=pos_ids,
            past_key_values=new_cache(model),
            use_cache=True,
            **keep_last_logits(model, keep),
        )
        nothink = torch.log_softmax(tail[:, 0], -1).gather(-1, prompts.target.view(-1, 1)).squeeze(-1)  # (P,)
        shared = supported if shared_prefix is None else shared_prefix
        if shared:
            past = SharedPrefixCache(out.past_key_values, prompts.mask, g, max_tokens)
        else:
            past = _expand_cache(out.past_key_values, g, p)
        logits = tail[:, -1].repeat_interleave(g, dim=0)  # (N, V): predicts the first thought token
        attn = None if shared else prompts.mask.repeat_interleave(g, dim=0)  # the shared cache holds the padding
        next_pos = pos_ids[:, -1].repeat_interleave(g, dim=0) + 1  # (N,)
        u = uniforms.reshape(n, max_tokens).to(dev)
        tokens = torch.full((n, max_tokens + k), pad_id, dtype=torch.long, device=dev)
        logp = torch.zeros((n, max_tokens + k), device=dev)
        trained = torch.zeros((n, max_tokens + k), dtype=torch.bool, device=dev)
        lengths = torch.zeros(n, dtype=torch.long, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        steps = 0
        rows = torch.arange(n, device=dev)  # the rollout each row of the decoded batch belongs to
        for s in range(max_tokens):
            tok, lp = sample_from_logits(logits, u[rows, s], temperature, top_p)
            live = ~done[rows]  # False only for a ghost row (below)
            tokens[rows[live], s] = tok[live]
            logp[rows[live], s] = lp[live]
            trained[rows[live], s] = True
            if s + 1 >= k:  # the last K sampled tokens of each row are the closing tag's K tokens
                ends = (tokens[rows, s + 1 - k : s + 1] == close).all(-1)
            else:
                ends = torch.zeros_like(live)
            closed = rows[live & ends]
            lengths[closed] = s + 1
            done[closed] = True
            if s == max_tokens - 1 or _all_done(done, synced):
                break
            keep = ~done[rows]
            if not keep.any():  # finished here but not on another rank: one ghost row keeps the forwards in step
                keep[0] = True
            if not keep.all():  # closed thoughts stop costing compute: drop their rows from the batch and cache
                idx = keep.nonzero().squeeze(1)
                rows = rows[idx]
                if shared:
                    past.select(idx)
                else:
                    attn, past = attn[idx], _select_cache(past, idx)
            step_in = dict(
                input_ids=tokens[rows, s : s + 1],
                position_ids=(next_pos[rows] + s).view(-1, 1),
                past_key_values=past,
                use_cache=True,
            )
            if shared:  # the cache knows the padding; no (N, Lp + s) mask to build
                with decoding_with(model, past):
                    out, logits = last_logits(model, 1, **step_in)
            else:
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
                out, logits = last_logits(model, 1, attention_mask=attn, **step_in)
                past = out.past_key_values
            logits = logits[:, 0]
            steps += 1
        truncated = ~done
        tokens[truncated, max_tokens : max_tokens + k] = close  # forced close: in the sequence, not trained
        lengths[truncated] = max_tokens + k
    width = int(lengths.max().item()) if n else 1
    return Rollouts(
        tokens=tokens[:, :width].view(p, g, width),
        logp=logp[:, :width].view(p, g, width),
        mask=trained[:, :width].view(p, g, width),
        lengths=lengths.view(p, g),
        truncated=truncated.view(p, g),
        nothink_logp=nothink,
        decode_steps=steps,
    )
