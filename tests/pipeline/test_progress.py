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
