"""Checks the training data loader (`rlp.run.data`) against the MDS samples written in each test: every batch follows
the contract (shapes, dtypes, labels == input_ids with EOS kept, segment ids from `doc_starts` or from EOS,
sample ids = global indices whose tokens are the written ones); llm-foundry formats (int32 ndarray, legacy bytes
with a declared dtype) load; pack-mode-none samples are padded and masked; a three-stream mixture keeps its
proportions within tolerance over many batches; streams read from the local S3 server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlp.run.data import build_dataloader, collate_samples, doc_starts_from_eos, segment_ids_from_starts
from rlp.run.recipe_schema import DataConfig, StreamConfig
from tests.helpers.training import EOS_ID, packed_samples, write_mds

SEQ = 24


def loop_segments(length, starts):
    """Reference: walk the tokens, bump the segment at every recorded start after position 0."""
    seg, out, starts = 0, [], set(int(s) for s in starts)
    for i in range(length):
        if i > 0 and i in starts:
            seg += 1
        out.append(seg)
    return out


def loader(streams, *, batch=4, seq_len=SEQ, shuffle=True, **kw):
    cfg = DataConfig(
        seq_len=seq_len,
        streams={k: StreamConfig(**v) for k, v in streams.items()},
        clean_stale_shared_memory=False,
        **kw,
    )
    return build_dataloader(
        cfg, run_name='t', device_batch_size=batch, seed=3, eos_token_id=EOS_ID, pad_token_id=EOS_ID
    )


@pytest.mark.parametrize('length,starts', [(10, []), (10, [0]), (10, [0, 3, 7]), (10, [4, 4, 9]), (6, [2, 12, -1])])
def test_segment_ids_match_loop(length, starts):
    """segment_ids_from_starts equals the loop reference, including duplicates and out-of-range starts."""
    assert segment_ids_from_starts(length, starts).tolist() == loop_segments(length, starts)


def test_doc_starts_from_eos():
    """A document starts after each EOS; a trailing EOS starts nothing; EOS belongs to its document."""
    tokens = np.array([5, 6, EOS_ID, 7, EOS_ID, 8, 9, EOS_ID])
    assert doc_starts_from_eos(tokens, EOS_ID).tolist() == [3, 5]
    assert segment_ids_from_starts(8, [3, 5]).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize('dtype', ['uint32', 'uint16'])
def test_batches_follow_contract(tmp_path, dtype):
    """Every sample of an epoch appears once; each row equals the written sample of its id; segments follow
    doc_starts; labels equal input_ids (EOS kept as a target); attention all ones."""
    samples = packed_samples(40, SEQ, seed=1)
    write_mds(str(tmp_path / 'ds'), samples, dtype=dtype)
    seen = []
    for batch in loader({'a': {'local': str(tmp_path / 'ds')}}):
        assert set(batch) == {'input_ids', 'labels', 'attention_mask', 'segment_ids', 'sample_id'}
        assert all(t.dtype == torch.int64 for t in batch.values())
        assert batch['input_ids'].shape == (4, SEQ) and batch['sample_id'].shape == (4,)
        assert torch.equal(batch['labels'], batch['input_ids']) and bool((batch['attention_mask'] == 1).all())
        for row, sid in enumerate(batch['sample_id'].tolist()):
            tokens, starts = samples[sid]
            assert batch['input_ids'][row].tolist() == tokens.tolist()
            assert batch['segment_ids'][row].tolist() == loop_segments(SEQ, starts)
        seen += batch['sample_id'].tolist()
    assert sorted(seen) == list(range(40))
    assert any(EOS_ID in b for b in [s[0].tolist() for s in samples])


def test_llm_foundry_formats(tmp_path):
    """int32 ndarray tokens without doc_starts (segments derived from EOS) and legacy bytes with a declared dtype
    load; legacy bytes without a dtype are refused with the fix."""
    samples = packed_samples(16, SEQ, seed=2)
    write_mds(str(tmp_path / 'nd'), samples, dtype='int32', doc_starts=False)
    write_mds(str(tmp_path / 'raw'), samples, dtype='int32', doc_starts=False, legacy_bytes=True)
    for folder, extra in (('nd', {}), ('raw', {'token_dtype': 'int32'})):
        for batch in loader({'x': {'local': str(tmp_path / folder), **extra}}):
            for row, sid in enumerate(batch['sample_id'].tolist()):
                tokens = samples[sid][0]
                assert batch['input_ids'][row].tolist() == tokens.tolist()
                assert batch['segment_ids'][row].tolist() == loop_segments(SEQ, doc_starts_from_eos(tokens, EOS_ID))
    with pytest.raises(ValueError, match='token_dtype'):
        next(iter(loader({'x': {'local': str(tmp_path / 'raw')}})))


def test_short_samples_are_padded_and_masked():
    """Pack mode none: shorter samples are right-padded; padding has attention 0, label -100, last segment."""
    samples = [
        {'tokens': np.array([5, 6, EOS_ID]), 'doc_starts': np.array([0]), 'sample_id': 3},
        {'tokens': np.arange(3, 9), 'doc_starts': np.array([0, 2]), 'sample_id': 9},
    ]
    batch = collate_samples(samples, seq_len=6, pad_token_id=EOS_ID)
    assert batch['attention_mask'].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch['labels'][0].tolist() == [5, 6, EOS_ID, -100, -100, -100]
    assert batch['segment_ids'].tolist() == [[0] * 6, [0, 0, 1, 1, 1, 1]]
    assert batch['sample_id'].tolist() == [3, 9]


def test_mixture_proportions(tmp_path):
    """Three streams with proportions 0.5/0.3/0.2: the share of each stream over 600 drawn samples is within
    0.05 of its proportion (the sample id maps to its stream through streaming's shard table)."""
    streams = {}
    for i, (name, prop) in enumerate((('web', 0.5), ('academic', 0.3), ('reasoning', 0.2))):
        write_mds(str(tmp_path / name), packed_samples(60, 8, seed=10 + i), size_limit=1 << 10)
        streams[name] = {'local': str(tmp_path / name), 'proportion': prop}
    dl = loader(streams, batch=10, seq_len=8, epoch_size=600)
    ds = dl.dataset
    counts = np.zeros(3)
    n = 0
    for batch in dl:
        for sid in batch['sample_id'].tolist():
            counts[ds._stream_of(sid)] += 1
            n += 1
    assert n == 600
    np.testing.assert_allclose(counts / n, [0.5, 0.3, 0.2], atol=0.05)


def test_stream_from_s3(s3, tmp_path):
    """A stream whose shards live on the local S3 server downloads into its own cache and decodes exactly."""
    samples = packed_samples(12, SEQ, seed=4)
    write_mds(f's3://{s3.bucket}/data/train', samples)
    seen = {}
    for batch in loader({'web': {'remote': f's3://{s3.bucket}/data', 'split': 'train'}}, cache_dir=str(tmp_path)):
        for row, sid in enumerate(batch['sample_id'].tolist()):
            seen[sid] = batch['input_ids'][row].tolist()
    assert seen == {i: samples[i][0].tolist() for i in range(12)}
    assert (tmp_path / 't' / 'web' / 'train' / 'index.json').exists()
