"""``rlp-data verify`` checked against datasets damaged on purpose.

``verify`` passes on a fresh dataset and fails (exit 1, the shard named) after one byte of a shard is flipped,
after a shard is deleted, and on an output without ``manifest.json``; ids beyond the manifest's vocabulary are
reported as out of range.
"""

from __future__ import annotations

import json

from pipeline.synthetic import write_jsonl
from tests.helpers.pipeline_data import prepare, run


def test_verify_detects_corruption(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / 'c.jsonl', 80)
    out = tmp_path / 'out'
    assert prepare(capsys, [str(corpus)], out, 48)[0] == 0
    rc, stdout, err = run(capsys, 'verify', out)
    assert rc == 0 and 'verified' in stdout, err

    index = json.loads((out / 'index.json').read_text())
    shard = out / index['shards'][0]['zip_data']['basename']
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    rc, stdout, err = run(capsys, 'verify', out)
    assert rc == 1 and 'size/xxh64 differ' in stdout and shard.name in stdout and 'verify found 1 problem' in err

    shard.unlink()
    rc, stdout, err = run(capsys, 'verify', out)
    assert rc == 1 and 'missing' in stdout

    (out / 'manifest.json').unlink()
    rc, _, err = run(capsys, 'verify', out)
    assert rc == 1 and 'has no manifest.json' in err


def test_verify_checks_token_range(tmp_path, capsys):
    """A manifest claiming a smaller vocabulary than the ids in the shards is reported as out of range."""
    corpus = write_jsonl(tmp_path / 'c.jsonl', 40)
    out = tmp_path / 'out'
    assert prepare(capsys, [str(corpus)], out, 48)[0] == 0
    manifest = json.loads((out / 'manifest.json').read_text())
    manifest['tokenizer']['vocab_size'] = 10
    (out / 'manifest.json').write_text(json.dumps(manifest))
    rc, stdout, _ = run(capsys, 'verify', out)
    assert rc == 1 and '>= vocab size 10' in stdout
