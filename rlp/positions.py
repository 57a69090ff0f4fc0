"""Which target tokens x_t of a packed batch get thoughts.

A position t of row b is *eligible* when
  - its own document (``segment_ids``) offers at least ``min_context`` tokens before t (the thought's context never
    crosses a document boundary, as in the paper), and
  - x_t is a real token: attention_mask 1, not EOS, not padding, not a thought tag.

Among eligible positions, per unit (each document segment, or each packed row) the ``k`` with the highest score are
used. The score is a keyed uniform draw (``uniform``, the paper's choice) or the teacher's no-think entropy
(``entropy``, RPT-style filtering); ``after`` draws uniformly among eligible positions that directly follow given
texts (answer spans, e.g. after ``=``: a fixed choice of positions for data where answers are known to follow a
marker). ``max_per_sample`` then caps a row's positions (again by score). All draws come
from generators keyed on (seed, batch index, sample id), so selection is a pure function of the row: the same on
any microbatch split and after resume. Runs on CPU (the tensors involved are ids, not activations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from rlp.config import PositionsConfig
from rlp.keys import keyed_generator

__all__ = ['Positions', 'eligible_mask', 'follows_mask', 'horizon_targets', 'segment_starts', 'select_positions']


@dataclass
class Positions:
    """Selected positions of one (micro)batch, P of them, sorted by (row, target).

    Attributes:
        row: (P,) row index in the batch.
        target: (P,) index t of the target token x_t in its row.
        start: (P,) first index of the thought's context (prefix = input_ids[row, start:target]).
        num_rows: rows in the batch.
        rows_without_position: rows that had no eligible position (counted skips).
    """

    row: torch.Tensor
    target: torch.Tensor
    start: torch.Tensor
    num_rows: int
    rows_without_position: int

    def __len__(self) -> int:
        return int(self.row.numel())


def segment_starts(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) -> (B, L): index of the first token of the segment each token belongs to."""
    b, length = segment_ids.shape
    idx = torch.arange(length).expand(b, length)
    is_start = torch.ones_like(segment_ids, dtype=torch.bool)
    is_start[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return torch.cummax(torch.where(is_start, idx, torch.zeros_like(idx)), dim=1).values


def eligible_mask(
    input_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    excluded_targets: Sequence[int],
    min_context: int,
) -> torch.Tensor:
    """(B, L) bool: x_t may be a target (see the module docstring)."""
    length = input_ids.shape[1]
    idx = torch.arange(length).expand_as(input_ids)
    ok = (idx - segment_starts(segment_ids)) >= min_context
    for tok in excluded_targets:
        ok &= input_ids != tok
    if attention_mask is not None:
        ok &= attention_mask.bool()
    return ok


def follows_mask(input_ids: torch.Tensor, segment_ids: torch.Tensor, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, L) bool: True at t when ``input_ids[t - n : t]`` equals one of the ``contexts`` (n = its length) and all
    those tokens lie in x_t's own document."""
    b, length = input_ids.shape
    out = torch.zeros((b, length), dtype=torch.bool)
    starts = segment_starts(segment_ids)
    idx = torch.arange(length).expand(b, length)
    for ctx in contexts:
        n = len(ctx)
        if n == 0 or n >= length:
            continue
        hit = torch.ones((b, length - n), dtype=torch.bool)  # hit[:, j]: the context occupies j .. j+n-1
        for i, tok in enumerate(ctx):
            hit &= input_ids[:, i : length - n + i] == int(tok)
        follows = torch.zeros((b, length), dtype=torch.bool)
        follows[:, n:] = hit
        out |= follows & (idx - n >= starts)
    return out


def _top_k_per_segment(scores: torch.Tensor, segments: torch.Tensor, k: int) -> torch.Tensor:
    """(L,) scores with -inf for ineligible, (L,) segment ids -> sorted indices of the k best per segment."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(segments[order], stable=True)]  # grouped by segment, best score first
    seg_sorted = segments[order]
    first = torch.ones_like(seg_sorted, dtype=torch.bool)
    first[1:] = seg_sorted[1:] != seg_sorted[:-1]
    group_start = torch.cummax(torch.where(first, torch.arange(len(order)), 0), dim=0).values
    rank = torch.arange(len(order)) - group_start
    keep = (rank < k) & torch.isfinite(scores[order])
    return order[keep]


def select_positions(
    input_ids: torch.Tensor,
    segment_ids: Optional[torch.Tensor],
    row_keys: Sequence[str],
    cfg: PositionsConfig,
    excluded_targets: Sequence[int],
    *,
    seed: int,
    batch_index: int,
    attention_mask: Optional[torch.Tensor] = None,
    entropy: Optional[torch.Tensor] = None,
    after_ids: Sequence[Sequence[int]] = (),
) -> Positions:
    """Choose the target positions of a (micro)batch.

    Args:
        input_ids: (B, L) token ids.
        segment_ids: (B, L) document index of each token inside its row; None = each row is one document.
        row_keys: B stable row keys (``rlp.keys.row_key``: the sample ids).
        cfg: strategy, unit, k, min_context, max_context, max_per_sample.
        excluded_targets: token ids never used as x_t (EOS, pad, tags).
        seed / batch_index: the other parts of the generator key.
        attention_mask: (B, L) optional; zeros are never targets.
        entropy: (B, L) no-think entropy of x_t's prediction; required for ``strategy='entropy'``. Pass None with
            the entropy strategy only to *count* positions (the count does not depend on the scores).
        after_ids: for ``strategy='after'``: token-id sequences a target must directly follow (:func:`follows_mask`).

    Returns:
        :class:`Positions` on CPU.
    """
    input_ids = input_ids.detach().cpu()
    b, length = input_ids.shape
    if len(row_keys) != b:
        raise ValueError(f'select_positions got {len(row_keys)} row keys for {b} rows')
    segment_ids = torch.zeros_like(input_ids) if segment_ids is None else segment_ids.detach().cpu()
    if attention_mask is not None:
        attention_mask = attention_mask.detach().cpu()
    eligible = eligible_mask(input_ids, segment_ids, attention_mask, excluded_targets, cfg.min_context)
    if cfg.strategy == 'after':
        eligible &= follows_mask(input_ids, segment_ids, after_ids)
    starts = segment_starts(segment_ids)
    rows, targets, skipped = [], [], 0
    for i in range(b):
        if cfg.strategy == 'entropy' and entropy is not None:
            score = entropy[i].detach().float().cpu().clone()
        else:
            score = torch.rand(length, generator=keyed_generator(seed, batch_index, row_keys[i], 'positions'))
        score[~eligible[i]] = -torch.inf
        units = segment_ids[i] if cfg.unit == 'document' else torch.zeros(length, dtype=torch.long)
        chosen = _top_k_per_segment(score, units, cfg.k)
        if cfg.max_per_sample is not None and len(chosen) > cfg.max_per_sample:
            chosen = chosen[torch.argsort(score[chosen], descending=True, stable=True)[: cfg.max_per_sample]]
        chosen = torch.sort(chosen).values
        if len(chosen) == 0:
            skipped += 1
        rows.append(torch.full_like(chosen, i))
        targets.append(chosen)
    row = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    target = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
    start = starts[row, target] if len(row) else torch.zeros(0, dtype=torch.long)
    if cfg.max_context is not None:
        start = torch.maximum(start, target - cfg.max_context)
    return Positions(row=row, target=target, start=start, num_rows=b, rows_without_position=skipped)


def horizon_targets(
    input_ids: torch.Tensor,
    segment_ids: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor],
    positions: Positions,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets x_t .. x_{t+k-1} of each position and which of them exist: (P, k) ids, (P, k) bool.

    Target j of position (b, t) exists when t + j is inside the row, in x_t's document (same segment id) and a real
    token (attention mask 1): the horizon stops at the end of the document or of the row, so ``valid`` is True on a
    prefix of each row (j = 0, x_t itself, always). Ids of missing targets are 0. On the device of ``input_ids``.
    """
    dev = input_ids.device
    ids = input_ids.detach().cpu()
    length = ids.shape[1]
    seg = torch.zeros_like(ids) if segment_ids is None else segment_ids.detach().cpu()
    real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.detach().cpu().bool()
    row, t = positions.row.view(-1, 1), positions.target.view(-1, 1)
    idx = t + torch.arange(k).view(1, -1)  # (P, k)
    inside = idx < length
    col = idx.clamp(max=length - 1)
    valid = inside & (seg[row, col] == seg[row, t]) & real[row, col]
    valid = torch.cummin(valid.to(torch.int8), dim=1).values.bool()  # stop at the first token outside
    targets = torch.where(valid, ids[row, col], torch.zeros_like(col))
    return targets.to(dev), valid.to(dev)
