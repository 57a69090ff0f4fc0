"""Bad input: each case gets one ``rlp-data: error:`` line naming the value, the rule and the fix, a non-zero exit
code, no traceback, and nothing published at the output (no ``index.json`` / ``manifest.json``)."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.synthetic import write_jsonl
from tests.helpers.pipeline_data import BASE, TOK, prepare, run


def _assert_refused(rc, err, code, *fragments, out=None):
    assert rc == code, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith('rlp-data: error: '), err
    assert 'Traceback' not in err
    for fragment in fragments:
        assert fragment in err, f'{fragment!r} not in {err!r}'
    if out is not None:
        assert not (out / 'index.json').exists() and not (out / 'manifest.json').exists()


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / 'c.jsonl', 30)


def test_missing_input(tmp_path, capsys):
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(tmp_path / 'nope.jsonl')], out)
    _assert_refused(rc, err, 1, 'nope.jsonl', 'does not exist', 'fix:', out=out)
    assert not out.exists()  # a refused run leaves no output folder behind


def test_unreadable_input(tmp_path, capsys):
    (tmp_path / 'bad.parquet').write_bytes(b'not a parquet file')
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(tmp_path / 'bad.parquet')], out)
    _assert_refused(rc, err, 1, 'bad.parquet', 'not a readable parquet file', out=out)


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads files whatever their permissions')
def test_permission_denied_input(tmp_path, capsys, corpus):
    corpus.chmod(0)
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(corpus)], out)
    _assert_refused(rc, err, 1, 'not readable', out=out)


def test_unsupported_extension(tmp_path, capsys):
    (tmp_path / 'data.csv').write_text('text\nhello\n')
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(tmp_path / 'data.csv')], out)
    _assert_refused(rc, err, 1, 'data.csv', 'unsupported extension', '.jsonl', out=out)


def test_unknown_text_field(tmp_path, capsys, corpus):
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(corpus)], out, 64, '--text-field', 'body')
    _assert_refused(rc, err, 1, "'body'", "available fields: ['id', 'text']", '--text-field', out=out)


@pytest.mark.parametrize(
    'line,why', [(b'{"text": "unterminated\n', 'malformed JSON'), (b'{"text": "\xff\xfe"}\n', 'not valid UTF-8')]
)
def test_bad_record_fails_by_default(tmp_path, capsys, corpus, line, why):
    data = corpus.read_bytes().splitlines(keepends=True)
    data.insert(4, line)
    corpus.write_bytes(b''.join(data))
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(corpus)], out)
    _assert_refused(rc, err, 1, why, 'c.jsonl at byte', '--on-bad-record skip', out=out)


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / 'e.jsonl').write_text(json.dumps({'text': ''}) + '\n' + json.dumps({'text': ' \n'}) + '\n')
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(tmp_path / 'e.jsonl')], out)
    _assert_refused(rc, err, 1, 'empty corpus', '2 empty', out=out)


def test_corpus_shorter_than_one_sample(tmp_path, capsys):
    (tmp_path / 's.jsonl').write_text(json.dumps({'text': 'tiny'}) + '\n')
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(tmp_path / 's.jsonl')], out, 4096)
    _assert_refused(rc, err, 1, 'fewer than one sample', '--seq-len 4096', out=out)


def test_unknown_tokenizer_folder(tmp_path, capsys, corpus):
    out = tmp_path / 'out'
    rc, _, err = run(
        capsys,
        'prepare',
        '-i',
        corpus,
        '--tokenizer',
        str(tmp_path / 'no-tok'),
        '--eos-text',
        'x',
        '--seq-len',
        64,
        '--out',
        out,
    )
    _assert_refused(rc, err, 1, 'no-tok', 'not found', out=out)


def test_unknown_tokenizer_name(tmp_path, capsys, corpus, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    # the hub reads the variable once, at import: when an earlier test imported it, only this makes the run offline
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    out = tmp_path / 'out'
    rc, _, err = run(
        capsys,
        'prepare',
        '-i',
        corpus,
        '--tokenizer',
        'no-such-org/no-such-tokenizer',
        '--eos-text',
        'x',
        '--seq-len',
        64,
        '--out',
        out,
    )
    _assert_refused(rc, err, 1, 'no-such-org/no-such-tokenizer', 'cannot load tokenizer', out=out)


def test_tokenizer_without_bos_eos_needs_eos_text(tmp_path, capsys, corpus):
    out = tmp_path / 'out'
    rc, _, err = run(capsys, 'prepare', '-i', corpus, '--tokenizer', TOK, '--seq-len', 64, '--out', out)
    _assert_refused(rc, err, 2, 'adds neither a BOS nor an EOS', "--eos-text '<|endoftext|>'", out=out)


@pytest.mark.parametrize('seq_len', [1, 0, 1 << 30])
def test_seq_len_out_of_range(tmp_path, capsys, corpus, seq_len):
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, [str(corpus)], out, seq_len)
    _assert_refused(rc, err, 2, f'--seq-len {seq_len}', '2 <= seq_len', out=out)


def test_uint16_too_small_for_vocab():
    from pipeline.errors import UsageError
    from pipeline.tokenize.tokenizer import choose_dtype

    assert choose_dtype('auto', 501) == 'uint16' and choose_dtype('auto', 128_256) == 'uint32'
    with pytest.raises(UsageError, match='uint16 cannot hold this vocabulary of 128256'):
        choose_dtype('uint16', 128_256)


def test_missing_bucket(s3, tmp_path, capsys, corpus):
    rc, _, err = prepare(capsys, [str(corpus)], 's3://no-such-bucket-xyz/ds', 64, '--staging', tmp_path / 'stg')
    _assert_refused(rc, err, 1, "bucket 'no-such-bucket-xyz' does not exist")
    assert s3.list('', bucket=s3.bucket) == []


def test_missing_credentials(s3, tmp_path, capsys, corpus, monkeypatch):
    for key in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', str(tmp_path / 'none'))
    monkeypatch.setenv('AWS_CONFIG_FILE', str(tmp_path / 'none'))
    monkeypatch.setenv('AWS_EC2_METADATA_DISABLED', 'true')
    rc, _, err = prepare(capsys, [str(corpus)], f's3://{s3.bucket}/ds', 64, '--staging', tmp_path / 'stg')
    _assert_refused(rc, err, 1, 'no S3 credentials', 'AWS_ACCESS_KEY_ID')
    assert s3.list('') == []


def test_output_holding_another_dataset(tmp_path, capsys, corpus):
    out = tmp_path / 'out'
    assert prepare(capsys, [str(corpus)], out, 64)[0] == 0
    manifest = (out / 'manifest.json').read_bytes()
    rc, _, err = prepare(capsys, [str(corpus)], out, 64, '--pack', 'none')
    _assert_refused(rc, err, 1, 'already holds a different dataset', '--overwrite')
    assert (out / 'manifest.json').read_bytes() == manifest


def test_output_folder_with_foreign_files(tmp_path, capsys, corpus):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    rc, _, err = prepare(capsys, [str(corpus)], out, 64)
    _assert_refused(rc, err, 1, 'not empty', 'notes.txt', out=out)
    assert (out / 'notes.txt').read_text() == 'mine' and not (out / '.rlp-data').exists()


def test_argparse_errors_are_one_line(capsys):
    rc, _, err = run(capsys, 'prepare', '--input', 'x.jsonl', *BASE)
    _assert_refused(rc, err, 2, 'required', '--help')


def test_unknown_hf_dataset(tmp_path, capsys):
    out = tmp_path / 'out'
    rc, _, err = prepare(capsys, ['hf:no-such-org-xyz/no-such-dataset-xyz'], out)
    _assert_refused(rc, err, 1, "cannot load HF dataset 'no-such-org-xyz/no-such-dataset-xyz'", 'fix:', out=out)


@pytest.mark.parametrize(
    'where,value,line',
    [
        (
            'out',
            'ftp://host/x',
            "rlp-data: error: --out 'ftp://host/x': the scheme ftp:// is not supported; rule: --out is a local "
            'folder or an object-store URI (s3://, gs://, oci://, azure://, azure-dl://, dbfs://, hf://, alipan://); '
            'fix: write to a local folder or one of those stores',
        ),
        (
            'out',
            'az://container/x',
            "rlp-data: error: --out 'az://container/x': the scheme az:// is not supported; rule: --out is a local "
            'folder or an object-store URI (s3://, gs://, oci://, azure://, azure-dl://, dbfs://, hf://, alipan://); '
            'fix: write azure:// instead, or write to a local folder or one of those stores',
        ),
        (
            'input',
            'ftp://host/c.jsonl',
            "rlp-data: error: --input 'ftp://host/c.jsonl': the scheme ftp:// is not supported; rule: an input is "
            'a local path, glob or folder, an s3:// URI, or hf:NAME; fix: copy the data to a local folder or to '
            's3://, or name a Hugging Face dataset as hf:NAME',
        ),
    ],
)
def test_unsupported_scheme_refused_before_any_work(tmp_path, where, value, line):
    """The real ``rlp-data prepare`` in a subprocess, with an ``ftp://`` (or ``az://``) ``--out`` or input: exit
    code 2, stderr is exactly the expected line (value, supported schemes, fix), and the working folder holds
    only the corpus afterwards (before the fix, tokenising ran and left ``./ftp:/host/x/.rlp-data/``)."""
    from tests.helpers.commands import error_line, run_command, tree

    write_jsonl(tmp_path / 'c.jsonl', 30)
    inputs, out = ('c.jsonl', value) if where == 'out' else (value, 'out')
    argv = ['-m', 'pipeline.cli', 'prepare', '-i', inputs, *BASE, '--seq-len', 64, '--out', out]
    proc = run_command(argv, cwd=tmp_path)
    assert error_line(proc, 2) == line
    assert tree(tmp_path) == ['c.jsonl']


def test_output_schemes_are_what_streaming_can_write():
    """The ``--out`` schemes named in the message are streaming 0.13's uploaders (its ``UPLOADERS`` registry,
    where ``dbfs:/Volumes`` is a ``dbfs://`` URI) and nothing else, and remote inputs are those
    ``pipeline.storage.remote`` treats as remote; remote inputs are what ``pipeline.inputs.s3`` reads: ``s3://``."""
    from streaming.base.storage.upload import UPLOADERS

    from pipeline.prepare_args import INPUT_SCHEMES, OUTPUT_SCHEMES
    from pipeline.storage.remote import is_remote

    assert set(OUTPUT_SCHEMES) == {k.split(':')[0] for k in UPLOADERS} - {''}  # '' is the local writer
    assert all(is_remote(f'{s}://bucket/x') for s in OUTPUT_SCHEMES)
    assert INPUT_SCHEMES == ('s3',)


@pytest.mark.parametrize('command', ['inspect', 'verify'])
def test_unsupported_scheme_for_inspect_and_verify(tmp_path, command):
    """``rlp-data inspect|verify ftp://host/x`` in a subprocess: exit code 2 and exactly one line naming the value,
    the supported schemes and the fix; nothing written in the working folder."""
    from tests.helpers.commands import error_line, run_command, tree

    proc = run_command(['-m', 'pipeline.cli', command, 'ftp://host/x'], cwd=tmp_path)
    assert error_line(proc, 2) == (
        "rlp-data: error: the dataset 'ftp://host/x': the scheme ftp:// is not supported; rule: the dataset is a "
        'local folder or an object-store URI (s3://, gs://, oci://, azure://, azure-dl://, dbfs://, hf://, '
        'alipan://); fix: pass the --out of rlp-data prepare'
    )
    assert tree(tmp_path) == []


@pytest.mark.parametrize('code, words', [(28, 'No space left on device'), (13, 'Permission denied')])
def test_os_error_mid_prepare_is_one_line_and_the_rerun_finishes(tmp_path, capsys, corpus, monkeypatch, code, words):
    """A full disk (ENOSPC) or a refused write (EACCES) after the shards were tokenised, while the index is merged:
    one line naming the error and the fix, exit 1, no manifest (the output is not taken for complete); the same
    command afterwards finishes."""
    import pipeline.prepare as prep

    def fail(*args, **kwargs):
        raise OSError(code, words, str(tmp_path / 'out' / 'index.json'))

    out = tmp_path / 'out'
    with monkeypatch.context() as patch:
        patch.setattr(prep, 'merged_index', fail)
        rc, _, err = prepare(capsys, [str(corpus)], out)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith('rlp-data: error: '), err
    assert words in err and 'rerun the same command' in err and 'Traceback' not in err
    assert not (out / 'manifest.json').exists()
    assert prepare(capsys, [str(corpus)], out)[0] == 0
    assert (out / 'manifest.json').exists()
