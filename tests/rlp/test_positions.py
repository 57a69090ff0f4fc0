"""rlp.positions: eligibility (min_context inside the document, no EOS/pad/tag/masked target), one position per
document or k per sample, entropy top-k, context start, caps, counted skips, and keyed determinism (the same
draws on any microbatch split, different draws on other batches, uniform over eligible positions)."""

from __future__ import annotations

import collections

import pytest
import torch

from rlp.config import PositionsConfig
from rlp.positions import Positions, eligible_mask, horizon_targets, segment_starts, select_positions
from rlp.strictcfg import ConfigError

EOS = 0
EXCLUDED = (0, 1, 2)  # eos/pad, <think>, </think>


def _packed_row(doc_lengths, first_token=10):
    """One packed row: documents of the given lengths, each ending with EOS; returns (ids, segment_ids)."""
    ids, seg = [], []
    for d, n in enumerate(doc_lengths):
        ids += list(range(first_token, first_token + n - 1)) + [EOS]
        seg += [d] * n
    return torch.tensor(ids), torch.tensor(seg)


def _batch(rows):
    ids, seg = zip(*[_packed_row(r) for r in rows])
    return torch.stack(ids), torch.stack(seg)


def _select(ids, seg, cfg, keys=None, batch_index=0, **kw):
    keys = keys or [str(i) for i in range(ids.shape[0])]
    return select_positions(ids, seg, keys, cfg, EXCLUDED, seed=1, batch_index=batch_index, **kw)


def test_segment_starts_and_eligibility_by_hand():
    """Row = doc A (6 tokens incl. EOS) + doc B (4 tokens): with min_context 3 only t = 3, 4 (in A) qualify."""
    ids, seg = _packed_row([6, 4])
    ids, seg = ids[None], seg[None]
    assert segment_starts(seg)[0].tolist() == [0, 0, 0, 0, 0, 0, 6, 6, 6, 6]
    ok = eligible_mask(ids, seg, None, EXCLUDED, min_context=3)[0]
    # A: t=3,4 have 3,4 prefix tokens; t=5 is A's EOS (never a target). B: t=9 is EOS, t=6..8 have < 3 prefix tokens
    assert ok.nonzero().flatten().tolist() == [3, 4]
    mask = torch.ones_like(ids)
    mask[0, 4] = 0
    assert eligible_mask(ids, seg, mask, EXCLUDED, 3)[0].nonzero().flatten().tolist() == [3]


def test_one_position_per_document_with_enough_context():
    """unit=document, k=1: exactly one target per document that has an eligible token, none in too-short ones."""
    ids, seg = _batch([[12, 3, 9, 6], [30]])
    cfg = PositionsConfig(min_context=4, max_context=None)
    pos = _select(ids, seg, cfg)
    per_doc = collections.Counter((r, int(seg[r, t])) for r, t in zip(pos.row.tolist(), pos.target.tolist()))
    assert per_doc == {(0, 0): 1, (0, 2): 1, (0, 3): 1, (1, 0): 1}  # doc of length 3 is too short
    elig = eligible_mask(ids, seg, None, EXCLUDED, 4)
    assert all(elig[r, t] for r, t in zip(pos.row.tolist(), pos.target.tolist()))
    # context stays in the target's document
    assert torch.equal(pos.start, segment_starts(seg)[pos.row, pos.target])
    assert pos.rows_without_position == 0


def test_k_per_sample_and_cap_and_max_context():
    """unit=sample, k=3 gives min(3, eligible) per row; max_per_sample caps; max_context moves the start."""
    ids, seg = _batch([[20, 20], [6, 6, 6, 6, 16]])
    pos = _select(ids, seg, PositionsConfig(unit='sample', k=3, min_context=2, max_context=4))
    assert collections.Counter(pos.row.tolist()) == {0: 3, 1: 3}
    assert torch.all(pos.target - pos.start <= 4) and torch.all(pos.target - pos.start >= 2)
    capped = _select(ids, seg, PositionsConfig(unit='document', k=2, min_context=2, max_per_sample=3))
    assert collections.Counter(capped.row.tolist()) == {0: 3, 1: 3}


def test_entropy_strategy_picks_top_k_eligible():
    """strategy=entropy returns the k eligible positions of highest entropy per unit (ineligible ones ignored)."""
    ids, seg = _batch([[10, 10]])
    ent = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))
    ent[0, 9] = 100.0  # the EOS position: highest entropy but not eligible
    cfg = PositionsConfig(strategy='entropy', unit='sample', k=2, min_context=3)
    pos = _select(ids, seg, cfg, entropy=ent)
    elig = eligible_mask(ids, seg, None, EXCLUDED, 3)[0]
    masked = torch.where(elig, ent[0], -torch.inf)
    assert pos.target.tolist() == sorted(torch.topk(masked, 2).indices.tolist())
    doc = _select(ids, seg, PositionsConfig(strategy='entropy', k=1, min_context=3), entropy=ent)
    for t in doc.target.tolist():
        same_doc = elig & (seg[0] == seg[0, t])
        assert ent[0, t] == ent[0][same_doc].max()


def test_no_eligible_position_is_a_counted_skip():
    """Rows whose documents are all too short (or all EOS) yield no positions and are counted."""
    ids, seg = _batch([[3, 3, 3], [9]])
    pos = _select(ids, seg, PositionsConfig(min_context=5))
    assert pos.row.tolist() == [1] and pos.rows_without_position == 1
    none = _select(torch.zeros(2, 8, dtype=torch.long), None, PositionsConfig(min_context=1))
    assert len(none) == 0 and none.rows_without_position == 2 and none.start.numel() == 0


def test_keyed_determinism_and_microbatch_invariance():
    """Same key -> same positions; each row alone selects what it selects inside the full batch; batch index and
    sample id change the draws."""
    ids, seg = _batch([[15, 15]] * 4)
    cfg = PositionsConfig(unit='sample', k=2, min_context=2)
    keys = ['100', '101', '102', '103']
    full = _select(ids, seg, cfg, keys, batch_index=7)
    again = _select(ids, seg, cfg, keys, batch_index=7)
    assert torch.equal(full.target, again.target) and torch.equal(full.row, again.row)
    for r in range(4):
        alone = _select(ids[r : r + 1], seg[r : r + 1], cfg, [keys[r]], batch_index=7)
        assert alone.target.tolist() == full.target[full.row == r].tolist()
    other_batch = _select(ids, seg, cfg, keys, batch_index=8)
    assert not torch.equal(full.target, other_batch.target)
    # rows with identical tokens but different sample ids draw differently
    assert len({tuple(full.target[full.row == r].tolist()) for r in range(4)}) > 1


def test_uniform_over_eligible_positions():
    """Over many batch indices the chosen target of a document is spread evenly over its eligible positions."""
    ids, seg = _batch([[14]])
    cfg = PositionsConfig(min_context=4)
    counts = collections.Counter(_select(ids, seg, cfg, batch_index=i).target.item() for i in range(900))
    assert sorted(counts) == list(range(4, 13))  # 9 eligible positions (13 is EOS)
    assert min(counts.values()) > 60 and max(counts.values()) < 140  # expectation 100 each


def test_positions_config_errors():
    """Bad position settings are refused with one-line messages."""
    with pytest.raises(ConfigError, match='k must be > 0'):
        PositionsConfig(k=0)
    with pytest.raises(ConfigError, match='min_context'):
        PositionsConfig(min_context=0)
    with pytest.raises(ConfigError, match='max_context'):
        PositionsConfig(min_context=10, max_context=5)


def test_after_strategy_picks_only_targets_that_follow_a_context():
    """strategy after: every chosen target directly follows one of the contexts, inside its own document, and
    every such position is reachable; checked against a loop over the row."""
    from rlp.config import PositionsConfig
    from rlp.positions import follows_mask, select_positions

    ids = torch.tensor([[5, 7, 9, 5, 7, 3, 4, 5, 7, 8, 5, 7, 6]])
    seg = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2]])  # a context split by a document start is no match
    contexts = [(5, 7), (4,)]
    mask = follows_mask(ids, seg, contexts)
    want = torch.zeros_like(mask)
    for t in range(ids.shape[1]):
        for c in contexts:
            n = len(c)
            if t >= n and ids[0, t - n : t].tolist() == list(c) and len(set(seg[0, t - n : t + 1].tolist())) == 1:
                want[0, t] = True
    assert torch.equal(mask, want) and torch.nonzero(want[0]).flatten().tolist() == [2, 5, 7, 9]
    cfg = PositionsConfig(strategy='after', after=['x'], unit='sample', k=10, min_context=1, max_context=None)
    pos = select_positions(ids, seg, ['0'], cfg, (), seed=0, batch_index=0, after_ids=contexts)
    assert sorted(pos.target.tolist()) == torch.nonzero(want[0]).flatten().tolist()


def test_horizon_targets_against_loop_reference():
    """x_t .. x_{t+k-1} of hand-picked positions, checked against a loop that walks forward from t and stops at
    another document, a padded (attention mask 0) token or the row's end: a document boundary inside the horizon,
    a horizon longer than the rest of the row, a padded tail, and k = 1 (x_t alone)."""
    ids, seg = _batch([[6, 4, 5], [10, 5]])  # row 0: docs of 6, 4, 5 tokens; row 1: 10 then 5
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # row 1's last two tokens are padding
    positions = Positions(
        row=torch.tensor([0, 0, 0, 1, 1]),
        target=torch.tensor([1, 8, 13, 8, 12]),
        start=torch.zeros(5, dtype=torch.long),
        num_rows=2,
        rows_without_position=0,
    )

    def reference(k):
        out_ids, out_valid = [], []
        for r, t in zip(positions.row.tolist(), positions.target.tolist()):
            row_ids, row_valid = [], []
            j, alive = 0, True
            while j < k:
                i = t + j
                alive = alive and i < ids.shape[1] and seg[r, i] == seg[r, t] and bool(mask[r, i])
                row_ids.append(int(ids[r, i]) if alive else 0)
                row_valid.append(alive)
                j += 1
            out_ids.append(row_ids)
            out_valid.append(row_valid)
        return out_ids, out_valid

    for k in (1, 3, 6):
        targets, valid = horizon_targets(ids, seg, mask, positions, k)
        want_ids, want_valid = reference(k)
        assert (targets.tolist(), valid.tolist()) == (want_ids, want_valid), k
    _, valid = horizon_targets(ids, seg, mask, positions, 6)
    assert valid.sum(1).tolist() == [5, 2, 2, 2, 1]  # doc end at 6, doc end at 10, row end, doc end, padding
    assert torch.equal(horizon_targets(ids, seg, mask, positions, 6)[0][:, 0], ids[positions.row, positions.target])
