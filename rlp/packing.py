"""The shared-prefix training forward: a prompt once, then its G thoughts, in one sequence with a block mask.

The unpacked training forward (:func:`rlp.scoring.policy_forward` without packing) runs every rollout as its own
sequence ``prompt thought x_t``: the prompt of length L is recomputed G times, G (L + T + 1) tokens per position.
Here the prompt is written once and followed by the G thoughts, each attending to the prompt and causally to
itself, never to another thought:

    row:       [ prompt (L) | c_1 (n_1) | c_2 (n_2) | ... | c_k (n_k) | pad ]
    segment:     0 ... 0      1 ... 1     2 ... 2           k ... k    -1
    position:    0 .. L-1     L .. L+n_1-1  L .. L+n_2-1 ...            0
    allowed(q, j) = j <= q  and  seg_j in {0, seg_q}  and  seg_q, seg_j >= 0;  a padding query attends to itself

so every hidden state equals the one of the unpacked sequence (same tokens, same position ids, same visible
keys; masked keys get exactly zero weight), and so do the scores and their gradients (fp32: up to summation order,
tested at atol 1e-5). x_t itself is not written: its own output is never read (S_pred is read at the thought's
last token), so a position costs L + sum_g n_g tokens instead of G (L + T + 1):

    logp_new[g, 0]  from the hidden state at L - 1 (the opening tag, shared by the G thoughts)
    logp_new[g, j]  from offset_g + j - 1,  1 <= j < n_g
    s_pred[g]       from offset_g + n_g - 1 (the thought's closing tag)

With a reward over K targets (``horizon``) each thought is followed, inside its own segment, by x_t .. x_{t+m-2}
(the m <= K targets that exist in the document), and s_pred[g, j] is read at offset_g + n_g - 1 + j.

A row holds at most ``max_tokens`` tokens (prompt + whole thoughts, at least one thought): the mask is dense,
(R, 1, W, W), so its memory and the attention's work grow with W^2 -- at long thoughts a position's thoughts are
spread over several rows (each with its own copy of the prompt).

Which models: the mask goes through ``attention_mask`` as a 4D tensor, which transformers (5.23) uses as is for
``eager`` (additive float: 0 or the dtype's min) and ``sdpa`` (bool) attention in the model types of
:data:`PACKABLE_MODEL_TYPES` (each checked against the unpacked path in ``tests/rlp/test_packing.py``). Anything
else -- flash-attention kernels (which ignore the mask), an active sliding window, another architecture -- is not
packable and the caller keeps the unpacked path (:func:`supports_block_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from rlp.hf import call_model, unwrap_hf
from rlp.logprobs import HeadCapture, chunked_token_logprobs, linear_head, logprob_and_max
from rlp.rollouts import Prompts, Rollouts

__all__ = [
    'PACKABLE_MODEL_TYPES',
    'PackedRows',
    'block_mask',
    'pack_rows',
    'packed_policy_forward',
    'supports_block_mask',
]

# model types whose transformers 5.23 code passes a 4D attention_mask through unchanged (tested here)
PACKABLE_MODEL_TYPES = frozenset({'llama', 'qwen2', 'qwen3', 'mistral', 'gpt2'})
_PACKABLE_ATTENTION = ('eager', 'sdpa')


def supports_block_mask(model: Any) -> bool:
    """True if ``model`` (any wrapper, :func:`rlp.hf.unwrap_hf`) can run a packed row with a custom 4D mask.

    Requires a model type of :data:`PACKABLE_MODEL_TYPES`, ``eager`` or ``sdpa`` attention, and no active sliding
    window (a custom mask replaces the model's own window masking).
    """
    cfg = getattr(unwrap_hf(model), 'config', None)
    if cfg is None or getattr(cfg, 'model_type', None) not in PACKABLE_MODEL_TYPES:
        return False
    if getattr(cfg, '_attn_implementation', None) not in _PACKABLE_ATTENTION:
        return False
    layer_types = getattr(cfg, 'layer_types', None)
    if layer_types is not None:
        return all(t == 'full_attention' for t in layer_types)
    return getattr(cfg, 'sliding_window', None) is None or getattr(cfg, 'use_sliding_window', True) is False


@dataclass
class PackedRows:
    """R packed rows of width W and where every score is read from (flat indices into the (R * W) positions).

    Attributes:
        ids / position_ids / segment: (R, W); segment 0 = prompt, 1..k = the row's k thoughts, -1 = padding.
        thought_src: (P, G, T) the position whose output predicts thought token j of rollout (p, g); for slots
            beyond a thought's length, any valid index.
        s_pred_src: (P, G) the position whose output predicts x_t after rollout (p, g) (its last token); (P, G, K)
            with ``prompts.targets``: the one predicting x_{t+j}.
    """

    ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    thought_src: torch.Tensor
    s_pred_src: torch.Tensor

    @property
    def tokens(self) -> int:
        """Positions the forward runs over, padding included (R * W)."""
        return int(self.ids.numel())


def row_groups(prompt_lens: list[int], lengths: list[list[int]], max_tokens: int) -> list[tuple[int, list[int]]]:
    """Greedy, in rollout order: (position, rollouts) per row; a row takes at least one thought."""
    rows = []
    for p, lp in enumerate(prompt_lens):
        cur: list[int] = []
        used = lp
        for g, n in enumerate(lengths[p]):
            if cur and used + n > max_tokens:
                rows.append((p, cur))
                cur, used = [], lp
            cur.append(g)
            used += n
        rows.append((p, cur))
    return rows


def pack_rows(prompts: Prompts, rollouts: Rollouts, pad_id: int, max_tokens: Optional[int] = None) -> PackedRows:
    """Lay out P prompts and their P x G thoughts in packed rows of at most ``max_tokens`` (None = one per prompt).

    Shapes: prompts.ids (P, Lp) left-padded; rollouts.tokens (P, G, T) with lengths (P, G) >= 1. With
    ``prompts.targets`` (P, K) each thought is followed, in its own segment, by the existing targets
    x_t .. x_{t+m-2} (m = ``targets_valid.sum(1)``) and ``s_pred_src`` is (P, G, K) (missing targets: any valid
    index); without, ``s_pred_src`` is (P, G).
    """
    p, g, width = rollouts.tokens.shape
    k = prompts.horizon
    ids_p, mask_p = prompts.ids.detach().cpu(), prompts.mask.detach().cpu().bool()
    tokens, lengths = rollouts.tokens.detach().cpu(), rollouts.lengths.detach().cpu().tolist()
    if prompts.targets is None:
        extra = [[] for _ in range(p)]
    else:
        valid_t = prompts.targets_valid.detach().cpu().bool()  # type: ignore[union-attr]
        targets = prompts.targets.detach().cpu()
        extra = [targets[i, : int(valid_t[i].sum()) - 1].tolist() for i in range(p)]
    prompt_lens = mask_p.sum(1).tolist()
    spans = [[n + len(extra[i]) for n in lengths[i]] for i in range(p)]  # tokens each rollout writes
    groups = row_groups(prompt_lens, spans, max_tokens if max_tokens is not None else 1 << 62)
    w = max(prompt_lens[i] + sum(spans[i][j] for j in gs) for i, gs in groups)
    ids = torch.full((len(groups), w), pad_id, dtype=torch.long)
    pos = torch.zeros((len(groups), w), dtype=torch.long)
    seg = torch.full((len(groups), w), -1, dtype=torch.long)
    thought_src = torch.zeros((p, g, width), dtype=torch.long)
    s_pred_src = torch.zeros((p, g, k), dtype=torch.long)
    for r, (i, gs) in enumerate(groups):
        lp = prompt_lens[i]
        ids[r, :lp], pos[r, :lp], seg[r, :lp] = ids_p[i][mask_p[i]], torch.arange(lp), 0
        base, off = r * w, lp
        e = len(extra[i])
        for slot, j in enumerate(gs, 1):
            n = lengths[i][j]
            ids[r, off : off + n] = tokens[i, j, :n]
            if e:
                ids[r, off + n : off + n + e] = torch.tensor(extra[i], dtype=torch.long)
            pos[r, off : off + n + e] = torch.arange(lp, lp + n + e)
            seg[r, off : off + n + e] = slot
            thought_src[i, j, 0] = base + lp - 1
            thought_src[i, j, 1:n] = base + off + torch.arange(n - 1)
            s_pred_src[i, j, :] = base + off + n - 1
            s_pred_src[i, j, : e + 1] = base + off + n - 1 + torch.arange(e + 1)
            off += n + e
    dev = prompts.ids.device
    if prompts.targets is None:
        s_pred_src = s_pred_src[..., 0]
    return PackedRows(ids.to(dev), pos.to(dev), seg.to(dev), thought_src.to(dev), s_pred_src.to(dev))


def block_mask(segment: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """(R, W) segments -> (R, 1, W, W) attention mask: bool (True = attend) or, with ``dtype``, additive (0 / min).

    allowed(q, j) = j <= q and seg_j in {0, seg_q} and seg_q, seg_j >= 0, plus j == q (no fully masked row).
    """
    w = segment.shape[1]
    idx = torch.arange(w, device=segment.device)
    sq, sk = segment.unsqueeze(2), segment.unsqueeze(1)  # (R, W, 1), (R, 1, W)
    allowed = (idx.view(1, 1, w) <= idx.view(1, w, 1)) & ((sk == 0) | (sk == sq)) & (sq >= 0) & (sk >= 0)
    allowed = (allowed | torch.eye(w, dtype=torch.bool, device=segment.device)).unsqueeze(1)
    if dtype is None:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segment.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _mask_for(model: Any, segment: torch.Tensor) -> torch.Tensor:
    """The 4D mask in the form the model's attention takes: bool for sdpa, additive in the model's dtype for eager."""
    hf = unwrap_hf(model)
    if hf.config._attn_implementation == 'sdpa':
        return block_mask(segment)
    return block_mask(segment, hf.get_input_embeddings().weight.dtype)


def packed_policy_forward(
    model: Any,
    prompts: Prompts,
    rollouts: Rollouts,
    *,
    temperature: float,
    pad_id: int,
    chunk_tokens: Optional[int],
    max_tokens: Optional[int],
    greedy: bool = False,
) -> Optional[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
    """The training forward over packed rows: ``logp_new`` (P, G, T) with grad, ``s_pred`` (P, G, K) and ``s_max``
    (P, G) or None, detached.

    The same contract as :func:`rlp.scoring.policy_scores` (whose docstring has the scores' definition); the model
    must pass :func:`supports_block_mask`. With ``chunk_tokens`` and a plain Linear head the scores come from the
    final hidden states in checkpointed chunks (:mod:`rlp.logprobs`); without ``chunk_tokens`` the packed rows'
    full logits are materialised. Returns None (the caller falls back to the unpacked path) when the head's check
    fails (logits that are not ``W h + b``).
    """
    p, g, width = rollouts.tokens.shape
    k = prompts.horizon
    rows = pack_rows(prompts, rollouts, pad_id, max_tokens)
    valid = torch.arange(width, device=rollouts.tokens.device) < rollouts.lengths.unsqueeze(-1)  # (P, G, T)
    src, thought = rows.thought_src[valid], rollouts.tokens[valid]  # (M,), (M,)
    if prompts.targets is None:
        target = prompts.target.repeat_interleave(g)  # (P * G,)
    else:
        target = prompts.targets.repeat_interleave(g, dim=0).reshape(-1)  # (P * G * K,)
    s_src = rows.s_pred_src.reshape(-1)
    kwargs = dict(
        input_ids=rows.ids,
        attention_mask=_mask_for(model, rows.segment),
        position_ids=rows.position_ids,
        use_cache=False,
    )
    s_max = None
    head = linear_head(model) if chunk_tokens else None
    if head is not None:

        def score(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
            """Runs inside the head's call: (R, W, D) hidden states -> (M,) thought logp, (P * G * K,) S_pred and
            (P * G * K,) max log-probs (greedy) or None."""
            flat = hidden.reshape(-1, hidden.shape[-1])
            lp = chunked_token_logprobs(flat[src], head, thought, temperature=temperature, chunk=int(chunk_tokens))
            with torch.no_grad():
                if greedy:
                    s, mx = logprob_and_max(flat[s_src], head, target, chunk=int(chunk_tokens))
                    return lp, s, mx
                s = chunked_token_logprobs(flat[s_src], head, target, chunk=int(chunk_tokens))
            return lp, s, None

        with HeadCapture(head, score) as cap:
            out = call_model(model, **kwargs)
        if cap.result is None or not cap.matches(out.logits):
            return None
        lp, s_pred, s_max = cap.result
        lp = lp + out.logits.sum().float() * 0.0  # the loss must reach the wrapper's output (FSDP's hooks sit there)
    else:
        logits = call_model(model, **kwargs).logits
        flat = logits.reshape(-1, logits.shape[-1])
        lp = torch.log_softmax(flat[src].float() / temperature, -1).gather(-1, thought.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            logp_t = torch.log_softmax(flat[s_src].float(), -1)
            s_pred = logp_t.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            if greedy:
                s_max = logp_t.amax(-1)
    logp_new = torch.zeros((p, g, width), dtype=lp.dtype, device=lp.device).masked_scatter(valid, lp)
    if s_max is not None:
        s_max = s_max.view(p, g, k)[..., 0]
    return logp_new, s_pred.view(p, g, k), s_max
