"""Model FLOPs of a training step, counted from what the step actually ran (pure functions, no model calls).

Convention (the usual one for MFU: matmul FLOPs of the model, nothing else):

- a token through the model's linear layers costs ``2 * N_body`` FLOPs forward, N_body = the weights of every
  ``nn.Linear`` except the LM head (embedding look-ups, norms, activations, softmax and the optimizer are not
  counted); a logit row costs ``2 * N_head`` (N_head = d * V, the LM head's weights), counted only where the step
  needs the logits (all positions for next-token training; the thought tokens and x_t for the policy forward; the
  last one or two positions for prefill, decode and the teacher);
- attention: a query attending ``k`` keys costs ``4 * k * W * layers`` forward (``2 k W`` for Q K^T and ``2 k W``
  for A V; ``W = heads * head_dim``); a causal sequence of ``L`` tokens attends ``L (L + 1) / 2`` keys in all (the
  causal count: keys a query cannot see are not counted, whether or not a kernel computes them);
- backward = 2 x forward, so a trained token costs 3 x its forward (the familiar ``6 N`` per token);
- tokens are real tokens: padding is not counted.

One RLP step (P positions with prompts of ``Lp_i`` tokens, G thoughts each of ``n_ig`` tokens, closing tag
included) is counted in four parts, as :func:`rlp.step.rlp_loss` runs them:

- ``rollout_prefill``: each prompt once (causal, logits at its last 2 positions);
- ``rollout_decode``: a thought of ``m`` sampled tokens (``m = n`` when it closed, ``n - 1`` when force-closed)
  takes ``m - 1`` one-token forwards (the first token comes from the prefill's logits, the last one is never fed
  back); the j-th fed token (j = 0..m-2) attends ``Lp + j + 1`` keys;
- ``teacher``: the no-think forward of each prompt by each teacher copy that runs (1 for ``ema`` and ``none``,
  2 for ``frozen``), one logit row each;
- ``policy``: forward + backward over ``prompt thought x_t`` per rollout (unpacked), or, with packed rows, each
  prompt once per packed row followed by its thoughts, each thought attending the prompt and itself
  (:func:`rlp.packing.pack_rows`); ``n + 1`` logit rows per rollout.

With a reward over ``m`` targets x_t .. x_{t+m-1} of a position (``horizon``; m <= k, the targets that exist in the
document) the policy's sequences also carry x_t .. x_{t+m-2} after the thought (unpacked: ``prompt thought
x_t .. x_{t+m-1}``, ``n + m`` logit rows; packed: ``n + m - 1`` tokens per thought, ``n + m`` logit rows) and each
teacher forward runs ``prefix x_t .. x_{t+m-2}`` (the prompt without its opening tag, ``Lp - 1 + m - 1`` tokens)
with ``m`` logit rows; m = 1 is the count above.

Next-token training of a batch is ``ntp``: forward + backward over every real token, causal over the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

__all__ = [
    'FlopModel',
    'causal_keys',
    'forward_flops',
    'ntp_flops',
    'rlp_flops',
]


@dataclass(frozen=True)
class FlopModel:
    """The sizes FLOPs depend on.

    Attributes:
        n_body: weights of the linear layers other than the LM head.
        n_head: weights of the LM head (d * V; counted even when tied to the embeddings: the matmul runs).
        layers: attention layers.
        attn_width: query width of one layer's attention, heads * head_dim.
    """

    n_body: int
    n_head: int
    layers: int
    attn_width: int

    @classmethod
    def of(cls, model: Any) -> 'FlopModel':
        """From an HF causal LM (or a wrapper :func:`rlp.hf.unwrap_hf` opens), before any sharding."""
        import torch

        from rlp.hf import unwrap_hf

        hf = unwrap_hf(model)
        head = hf.get_output_embeddings()
        linears = [m for m in hf.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == 'Conv1D']
        n_head = int(head.weight.numel()) if head is not None else 0
        n_body = sum(int(m.weight.numel()) for m in linears if m is not head)
        cfg = hf.config
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, 'head_dim', None) or cfg.hidden_size // heads)
        return cls(n_body=n_body, n_head=n_head, layers=int(cfg.num_hidden_layers), attn_width=heads * head_dim)


def causal_keys(length: int, past: int = 0) -> int:
    """Keys attended in all by ``length`` causal queries that follow ``past`` cached tokens:
    sum_{i=1..length} (past + i) = length * past + length (length + 1) / 2."""
    return length * past + length * (length + 1) // 2


def forward_flops(fm: FlopModel, tokens: int, keys: int, logits: int) -> float:
    """Forward FLOPs: ``2 N_body tokens + 2 N_head logits + 4 W layers keys``."""
    return 2.0 * fm.n_body * tokens + 2.0 * fm.n_head * logits + 4.0 * fm.attn_width * fm.layers * keys


def ntp_flops(fm: FlopModel, row_lengths: Sequence[int]) -> float:
    """Forward + backward of next-token training over rows of ``row_lengths`` real tokens (logits everywhere)."""
    return sum(3.0 * forward_flops(fm, n, causal_keys(n), n) for n in row_lengths)


def _policy_groups(prompt_lens: Sequence[int], lengths: Sequence[Sequence[int]], packed_tokens: Optional[int]):
    from rlp.packing import row_groups

    return row_groups(list(prompt_lens), [list(x) for x in lengths], packed_tokens or (1 << 62))


def rlp_flops(
    fm: FlopModel,
    prompt_lens: Sequence[int],
    lengths: Sequence[Sequence[int]],
    truncated: Sequence[Sequence[bool]],
    *,
    teacher_forwards: int = 1,
    packed_tokens: Optional[int] = None,
    horizon: Optional[Sequence[int]] = None,
    open_len: int = 1,
    close_len: int = 1,
) -> dict[str, float]:
    """The FLOPs of one RLP call by part (see the module docstring), plus ``total``.

    Args:
        fm: the model's sizes.
        prompt_lens: (P,) real prompt tokens (prefix and opening tag).
        lengths: (P, G) thought tokens, closing tag included (``Rollouts.lengths``).
        truncated: (P, G) force-closed thoughts (``Rollouts.truncated``).
        teacher_forwards: no-think teacher forwards per prompt.
        packed_tokens: the packed policy forward's row budget (``loss.packed_forward_tokens``) when that path ran;
            None = one unpacked sequence per rollout.
        horizon: (P,) targets m scored per position (``horizon`` reward: ``Prompts.targets_valid.sum(1)``); None =
            x_t only (m = 1), counted as the one-target forwards even where m = 1 comes from a horizon.
        open_len / close_len: tokens of the opening and closing tags (1 each for special tokens; more for tags
            written as text): the prefill keeps ``open_len + 1`` logit rows, a force-closed thought has
            ``close_len`` unsampled tokens, and the horizon teacher runs the prompt without its ``open_len``.
    """
    prefill = decode = teacher = policy = 0.0
    ms = [1] * len(prompt_lens) if horizon is None else [int(m) for m in horizon]
    for lp, row_n, row_t, m in zip(prompt_lens, lengths, truncated, ms):
        lp = int(lp)
        prefill += forward_flops(fm, lp, causal_keys(lp), min(open_len + 1, lp))
        if horizon is None:
            teacher += teacher_forwards * forward_flops(fm, lp, causal_keys(lp), 1)
        else:
            seq = lp - open_len + m - 1
            teacher += teacher_forwards * forward_flops(fm, seq, causal_keys(seq), m)
        for n, trunc in zip(row_n, row_t):
            fed = int(n) - (close_len if trunc else 0) - 1
            if fed > 0:
                decode += forward_flops(fm, fed, causal_keys(fed, lp), fed)
            if not packed_tokens:
                policy += 3.0 * forward_flops(fm, lp + n + m, causal_keys(lp + n + m), n + m)
    if packed_tokens:
        spans = [[int(n) + m - 1 for n in row_n] for row_n, m in zip(lengths, ms)]
        for i, gs in _policy_groups(prompt_lens, spans, packed_tokens):
            lp = int(prompt_lens[i])
            policy += 3.0 * forward_flops(fm, lp, causal_keys(lp), 0)
            for j in gs:
                n = spans[i][j]
                policy += 3.0 * forward_flops(fm, n, causal_keys(n, lp), n + 1)
    parts = {'rollout_prefill': prefill, 'rollout_decode': decode, 'teacher': teacher, 'policy': policy}
    return {**parts, 'total': sum(parts.values())}
