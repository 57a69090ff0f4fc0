"""Round trip of every input format: decode every sample and compare with the documents tokenised one by one.

Checked against a reference built here with the tokenizer directly: the concatenated samples equal the
concatenation of ``tokens(doc) + [EOS]`` over the non-empty documents in input order, minus exactly the dropped
tail (``manifest.counts.dropped_tail_tokens``), and every sample's ``doc_starts`` equals the document boundaries
that fall inside it (plus segment 0). Shards are kept small so that samples are written by many parts, each
reading tokens across group boundaries.
"""

from __future__ import annotations

import json

import pytest

from pipeline.synthetic import generate_documents
from tests.helpers.pipeline_data import check_concat, prepare, read_samples, reference_docs, tree_bytes

SEQ = 64


def _texts(n=40, seed=0):
    return generate_documents(n, seed=seed)


def _jsonl(path, texts):
    path.write_text(''.join(json.dumps({'text': t, 'id': i}) + '\n' for i, t in enumerate(texts)))
    return path


def build_jsonl(tmp):
    texts = _texts()
    texts.insert(3, '')  # empty documents are skipped and counted
    texts.insert(7, '   ')
    return [str(_jsonl(tmp / 'a.jsonl', texts))], texts


def build_json_array(tmp):
    texts = _texts()
    (tmp / 'a.json').write_text(json.dumps([{'text': t} for t in texts]))
    return [str(tmp / 'a.json')], texts


def build_txt_folder(tmp):
    texts = _texts(12)
    folder = tmp / 'txt'
    folder.mkdir()
    for i, t in enumerate(texts):
        (folder / f'doc{i:03d}.txt').write_text(t)
    return [str(folder)], texts


def build_parquet_row_groups(tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = _texts(60)
    pq.write_table(pa.table({'text': texts}), tmp / 'a.parquet', row_group_size=16)
    return [str(tmp / 'a.parquet'), '--chunk-mb', '0.001'], texts  # one group per row group


def build_glob(tmp):
    a, b = _texts(20, seed=1), _texts(20, seed=2)
    _jsonl(tmp / 'x1.jsonl', a)
    _jsonl(tmp / 'x2.jsonl', b)
    return [str(tmp / 'x*.jsonl')], a + b


def build_save_to_disk(tmp):
    import datasets

    texts = _texts(30)
    datasets.Dataset.from_dict({'text': texts}).save_to_disk(str(tmp / 'saved'))
    return [str(tmp / 'saved')], texts


def build_hf_streaming(tmp):
    texts = _texts(30)
    (tmp / 'hub').mkdir()
    _jsonl(tmp / 'hub' / 'train-0.jsonl', texts[:12])  # two data files: two shards, two groups
    _jsonl(tmp / 'hub' / 'train-1.jsonl', texts[12:])
    return [f'hf:{tmp / "hub"}'], texts


def build_webdataset_braces(tmp):
    import webdataset as wds

    texts = _texts(24)
    for s in range(2):
        with wds.TarWriter(str(tmp / f'shard-{s:03d}.tar')) as sink:
            for i, t in enumerate(texts[s * 12 : (s + 1) * 12]):
                sink.write({'__key__': f'doc{s}_{i:03d}', 'txt': t})
    return [str(tmp / 'shard-{000..001}.tar')], texts


def build_mixed(tmp):
    a, b = _texts(10, seed=3), _texts(10, seed=4)
    _jsonl(tmp / 'm.jsonl', a)
    (tmp / 'm.txt').write_text(b[0])
    return [str(tmp / 'm.jsonl'), str(tmp / 'm.txt')], a + [b[0]]


BUILDERS = [
    build_jsonl,
    build_json_array,
    build_txt_folder,
    build_parquet_row_groups,
    build_glob,
    build_save_to_disk,
    build_hf_streaming,
    build_webdataset_braces,
    build_mixed,
]


@pytest.mark.parametrize('build', BUILDERS, ids=[b.__name__[6:] for b in BUILDERS])
def test_concat_round_trip_is_exact(build, tmp_path, capsys, tokenizer):
    inputs, texts = build(tmp_path)
    out = tmp_path / 'out'
    # small shards: many parts, each reading its samples across group boundaries
    rc, stdout, err = prepare(capsys, inputs, out, SEQ, '--shard-mb', '0.004')
    assert rc == 0, err
    manifest = json.loads((out / 'manifest.json').read_text())
    check_concat(read_samples(out), reference_docs(tokenizer, texts), SEQ, manifest)
    assert manifest['counts']['empty_documents_skipped'] == sum(1 for t in texts if not t.strip())
    assert not (out / '.rlp-data').exists()  # staging removed after publishing


def test_s3_input_round_trip(s3, tmp_path, capsys, tokenizer):
    texts = _texts(20)
    _jsonl(tmp_path / 'a.jsonl', texts)
    s3.client.upload_file(str(tmp_path / 'a.jsonl'), s3.bucket, 'raw/part-0.jsonl')
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [f's3://{s3.bucket}/raw/'], out, SEQ)
    assert rc == 0, err
    manifest = json.loads((out / 'manifest.json').read_text())
    check_concat(read_samples(out), reference_docs(tokenizer, texts), SEQ, manifest)


def test_pack_none_one_document_per_sample(tmp_path, capsys, tokenizer):
    """Three files (three groups), small shards (many parts): every document piece lands once, in order."""
    texts = []
    for i in range(3):
        part = _texts(15, seed=i)
        _jsonl(tmp_path / f'a{i}.jsonl', part)
        texts += part
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(tmp_path / 'a*.jsonl')], out, 32, '--pack', 'none', '--shard-mb', '0.002')
    assert rc == 0, err
    samples = read_samples(out)
    expected = []
    for doc in reference_docs(tokenizer, texts):
        expected.extend(doc[a : a + 32] for a in range(0, len(doc), 32))
    assert [s['tokens'].tolist() for s in samples] == expected
    assert all(s['doc_starts'].tolist() == [0] for s in samples)
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest['counts']['dropped_tail_tokens'] == 0 and manifest['counts']['samples'] == len(expected)
    assert len(list(out.glob('part_*'))) >= 4


def test_bad_records_skipped_and_counted(tmp_path, capsys, tokenizer):
    texts = _texts(10)
    lines = [json.dumps({'text': t}).encode() + b'\n' for t in texts]
    lines.insert(2, b'{"text": "broken\n')
    lines.insert(5, b'{"text": "\xff\xfe not utf-8"}\n')
    (tmp_path / 'a.jsonl').write_bytes(b''.join(lines))
    out = tmp_path / 'out'
    rc, stdout, err = prepare(capsys, [str(tmp_path / 'a.jsonl')], out, SEQ, '--on-bad-record', 'skip')
    assert rc == 0, err
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest['counts']['bad_records_skipped'] == 2
    assert 'bad records skipped 2' in stdout
    check_concat(read_samples(out), reference_docs(tokenizer, texts), SEQ, manifest)


def test_chunking_does_not_change_the_output(tmp_path, capsys):
    """A big jsonl cut into many byte-range groups gives the same bytes (shards, index, manifest) as one group."""
    _jsonl(tmp_path / 'a.jsonl', _texts(200))
    trees = []
    for chunk in ('64', '0.002'):
        out = tmp_path / f'out{chunk}'
        rc, stdout, err = prepare(
            capsys, [str(tmp_path / 'a.jsonl')], out, SEQ, '--chunk-mb', chunk, '--shard-mb', '0.01'
        )
        assert rc == 0, err
        trees.append(tree_bytes(out))
    assert trees[0] == trees[1]
