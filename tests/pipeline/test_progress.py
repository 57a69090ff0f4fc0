"""The progress bar of ``rlp-data prepare --progress`` (:mod:`pipeline.workers`), checked against a real run: its
stderr shows the documents read, the tokens written and the rate."""

from __future__ import annotations

from pipeline.bundled_tokenizer import EOS_TEXT
from pipeline.synthetic import write_jsonl
from tests.helpers.pipeline_data import TOK, run


def test_progress_bar_shows_documents_tokens_and_rate(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / 'c.jsonl', 40)
    rc = run(
        capsys,
        'prepare',
        '-i',
        corpus,
        '--tokenizer',
        TOK,
        '--eos-text',
        EOS_TEXT,
        '--seq-len',
        48,
        '--out',
        tmp_path / 'out',
        '--progress',
    )
    assert rc[0] == 0
    assert 'docs=40' in rc[2] and 'tokens=' in rc[2] and 'tok/s=' in rc[2]


def test_error_line_starts_its_own_line_after_the_bar(tmp_path):
    """With --progress and stderr a file (a pipe here), a bad record after the bar was drawn: the error line is a line
    of its own (it was glued to the bar's carriage-return text), exit code 1."""
    from tests.helpers.commands import run_command

    corpus = write_jsonl(tmp_path / 'c.jsonl', 40)
    lines = corpus.read_bytes().splitlines(keepends=True)
    corpus.write_bytes(b''.join([*lines[:30], b'{"text": "unterminated\n', *lines[30:]]))
    argv = ['-m', 'pipeline.cli', 'prepare', '-i', corpus, '--tokenizer', TOK, '--eos-text', EOS_TEXT]
    proc = run_command([*argv, '--seq-len', 48, '--out', tmp_path / 'out', '--progress'], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'rlp-data' in proc.stderr.split('rlp-data: error:')[0], 'no bar was drawn before the error'
    errors = [line for line in proc.stderr.split('\n') if 'rlp-data: error:' in line]
    assert len(errors) == 1 and errors[0].startswith('rlp-data: error:') and 'malformed JSON' in errors[0], errors
