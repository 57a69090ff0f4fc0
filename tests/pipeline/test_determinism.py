"""Determinism and re-runs: outputs are compared byte for byte (shards, part indexes, index.json, manifest.json).

* ``--workers 1`` vs ``--workers 2`` on the same inputs and arguments;
* re-running the same command on a complete output does nothing; other arguments are refused unless
  ``--overwrite``, which then produces the same bytes as a fresh run into an empty folder.
"""

from __future__ import annotations

import json

from pipeline.synthetic import write_jsonl
from tests.helpers.pipeline_data import prepare, tree_bytes


def _corpus(tmp_path, n_files=4):
    folder = tmp_path / 'corpus'
    folder.mkdir()
    for i in range(n_files):
        write_jsonl(folder / f'part{i}.jsonl', 60, seed=i)
    return folder


def test_worker_count_does_not_change_a_byte(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    trees = []
    for workers in (1, 2):
        out = tmp_path / f'out{workers}'
        rc, _, err = prepare(
            capsys, [str(corpus)], out, 48, '--workers', workers, '--shard-mb', '0.01', '--chunk-mb', '0.005'
        )
        assert rc == 0, err
        trees.append(tree_bytes(out))
    assert trees[0] == trees[1]
    assert len([n for n in trees[0] if n.endswith('.mds.zstd')]) >= 4  # several parts were really written


def test_rerun_same_command_is_a_no_op(tmp_path, capsys):
    corpus = _corpus(tmp_path, 2)
    out = tmp_path / 'out'
    assert prepare(capsys, [str(corpus)], out, 48)[0] == 0
    before = tree_bytes(out)
    rc, stdout, _ = prepare(capsys, [str(corpus)], out, 48, '--workers', 2)
    assert rc == 0 and 'nothing to do' in stdout
    assert tree_bytes(out) == before


def test_different_arguments_refused_then_overwrite(tmp_path, capsys):
    corpus = _corpus(tmp_path, 2)
    out = tmp_path / 'out'
    assert prepare(capsys, [str(corpus)], out, 48)[0] == 0
    before = tree_bytes(out)
    rc, _, err = prepare(capsys, [str(corpus)], out, 32)
    assert rc == 1 and 'already holds a different dataset' in err and '--overwrite' in err
    assert tree_bytes(out) == before  # untouched
    rc, _, err = prepare(capsys, [str(corpus)], out, 32, '--overwrite')
    assert rc == 0, err
    fresh = tmp_path / 'fresh'
    assert prepare(capsys, [str(corpus)], fresh, 32)[0] == 0
    assert tree_bytes(out) == tree_bytes(fresh)
    assert json.loads((out / 'manifest.json').read_text())['seq_len'] == 32
