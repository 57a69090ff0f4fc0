"""Input expansion checked against hand-built folders: order, chunking, merging of small files into groups."""

from __future__ import annotations

from pipeline.inputs.expand import expand_inputs


def _write(path, size):
    path.write_text('{"text": "' + 'x' * (size - 13) + '"}\n')
    return path


def test_small_files_merge_big_files_chunk(tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    _write(folder / 'a.jsonl', 100)
    _write(folder / 'b.jsonl', 100)
    _write(folder / 'c.jsonl', 100)
    _write(folder / 'd.jsonl', 1000)  # >= chunk: byte-range chunks of its own
    _write(folder / 'e.txt', 50)
    (spec,) = expand_inputs([str(folder)], tmp_path / 'stg', chunk_bytes=250, chunk_rows=10)
    layout = [[(p.kind, p.path.rsplit('/', 1)[1], p.start, p.stop) for p in g.pieces] for g in spec.groups]
    assert layout == [
        [('jsonl', 'a.jsonl', 0, -1), ('jsonl', 'b.jsonl', 0, -1), ('jsonl', 'c.jsonl', 0, -1)],  # 300 >= 250
        [('jsonl', 'd.jsonl', 0, 250)],
        [('jsonl', 'd.jsonl', 250, 500)],
        [('jsonl', 'd.jsonl', 500, 750)],
        [('jsonl', 'd.jsonl', 750, 1000)],
        [('txt', 'e.txt', 0, -1)],
    ]
    assert [g.index for g in spec.groups] == list(range(6)) and spec.kind == 'jsonl+txt'


def test_hidden_entries_and_output_folder_are_not_inputs(tmp_path):
    folder = tmp_path / 'in'
    (folder / '.cache').mkdir(parents=True)
    (folder / 'out').mkdir()
    _write(folder / 'a.jsonl', 100)
    _write(folder / '.cache' / 'b.jsonl', 100)
    _write(folder / 'out' / 'index.json', 100)
    (spec,) = expand_inputs([str(folder)], tmp_path / 'stg', 1 << 20, 10, exclude=(str(folder / 'out'),))
    assert [p.path.rsplit('/', 1)[1] for g in spec.groups for p in g.pieces] == ['a.jsonl']
