"""``rlp-data verify`` on MDS datasets that ``rlp-data prepare`` did not write (llm-foundry's converters: a
``tokens`` column, no ``doc_starts``, no ``manifest.json``, usually no hashes), and on an ``index.json`` that
disagrees with its shards. Each dataset is written here with streaming's own ``MDSWriter`` and then damaged on
purpose; the verdict (exit code, the shard named, what was and was not checked) is compared with the damage."""

from __future__ import annotations

import json

import numpy as np
from streaming import MDSWriter

from pipeline.synthetic import write_jsonl
from tests.helpers.pipeline_data import prepare, run
from tests.helpers.training import packed_samples, write_mds


def _shard(out, i=0):
    entry = json.loads((out / 'index.json').read_text())['shards'][i]
    return out / entry['zip_data']['basename']


def test_llm_foundry_dataset_without_hashes(tmp_path, capsys):
    """int32 ndarray and legacy-bytes datasets without hashes pass, saying that no hash could be checked; a
    truncated shard fails (its size differs from index.json) and is named."""
    for name, kwargs in (('nd', {}), ('raw', {'legacy_bytes': True})):
        out = tmp_path / name
        write_mds(str(out), packed_samples(40, 24, seed=1), dtype='int32', doc_starts=False, **kwargs)
        rc, stdout, err = run(capsys, 'verify', out)
        assert rc == 0, err
        assert 'no manifest.json' in stdout and 'NO hashes recorded' in stdout and '40 samples' in stdout

    shard = _shard(tmp_path / 'nd', 1)
    shard.write_bytes(shard.read_bytes()[:-7])
    rc, stdout, err = run(capsys, 'verify', tmp_path / 'nd')
    assert rc == 1 and f'{shard.name}: size differ from index.json' in stdout and 'verify found 1 problem' in err


def test_llm_foundry_dataset_with_hashes(tmp_path, capsys):
    """A dataset written with sha1 and xxh64 hashes: one flipped byte (same size) in the second shard is found
    by its hashes and named; negative ids in a sound shard are reported too."""
    out = tmp_path / 'hashed'
    with MDSWriter(out=str(out), columns={'tokens': 'ndarray:int32'}, compression='zstd', hashes=['sha1', 'xxh64'],
                   size_limit=1 << 11) as writer:  # fmt: skip
        for tokens, _ in packed_samples(40, 24, seed=2):
            writer.write({'tokens': tokens.astype(np.int32)})
    rc, stdout, err = run(capsys, 'verify', out)
    assert rc == 0 and 'hashes, decoding' in stdout, err

    shard = _shard(out, 1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    rc, stdout, _ = run(capsys, 'verify', out)
    assert rc == 1 and f'{shard.name}: size/sha1/xxh64 differ from index.json' in stdout

    negative = tmp_path / 'negative'
    with MDSWriter(out=str(negative), columns={'tokens': 'ndarray:int32'}) as writer:
        writer.write({'tokens': np.array([3, -1, 4], dtype=np.int32)})
    rc, stdout, _ = run(capsys, 'verify', negative)
    assert rc == 1 and 'sample 0: tokens [3, -1, 4] must be non-empty, non-negative ids' in stdout


def test_index_that_disagrees_with_its_shards(tmp_path, capsys):
    """An rlp-data output whose index.json claims one sample more for a shard than the shard holds: the shard is
    named with both counts."""
    out = tmp_path / 'out'
    assert prepare(capsys, [str(write_jsonl(tmp_path / 'c.jsonl', 80))], out, 48)[0] == 0
    index = json.loads((out / 'index.json').read_text())
    index['shards'][0]['samples'] += 1
    (out / 'index.json').write_text(json.dumps(index))
    rc, stdout, _ = run(capsys, 'verify', out)
    n = index['shards'][0]['samples']
    assert rc == 1 and f'{n - 1} samples decoded, index.json says {n}' in stdout
