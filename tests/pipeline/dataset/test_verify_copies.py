"""``rlp-data verify`` on the decompressed ``shard.*.mds`` copies that reading a folder in place leaves beside the
``.zstd`` shards, checked against the raw size and xxh64 in ``index.json``.

A real streaming read leaves the copies; verify then passes and counts them; one flipped byte in a copy fails with
exit 1, the copy named and the fix (delete it; the compressed shards are sound); after the deletion verify passes.
"""

from __future__ import annotations

from streaming import StreamingDataset

from pipeline.synthetic import write_jsonl
from tests.helpers.damage import flip_byte, shard_files
from tests.helpers.pipeline_data import prepare, run


def test_verify_checks_decompressed_copies(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / 'c.jsonl', 80)
    out = tmp_path / 'out'
    assert prepare(capsys, [str(corpus)], out, 32, '--shard-mb', '0.01')[0] == 0
    n = len(list(StreamingDataset(local=str(out), shuffle=False, batch_size=1)))  # as training reads it
    assert n > 0 and all(raw.exists() for _, raw in shard_files(out))
    rc, stdout, err = run(capsys, 'verify', out)
    assert rc == 0 and f'(and {len(shard_files(out))} decompressed copies)' in stdout, err

    _, raw = shard_files(out)[1]
    flip_byte(raw)
    rc, stdout, err = run(capsys, 'verify', out)
    assert rc == 1 and f'{raw.relative_to(out)}: decompressed copy differs' in stdout
    assert 'the compressed shards are sound; fix: delete the listed shard.*.mds files' in err

    raw.unlink()
    rc, stdout, err = run(capsys, 'verify', out)
    assert rc == 0 and 'verified' in stdout, err
