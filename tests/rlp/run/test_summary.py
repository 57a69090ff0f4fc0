"""Checks the end-of-run summary (`rlp.run.summary`): the reward verdict against hand-made trends, and that the
checkpoint folder it names never shows a signed URL's query string or a password."""

from __future__ import annotations

from pathlib import Path

from rlp.run.recipe_checks import shown_location
from rlp.run.summary import _verdict, summarize


def test_summary_verdict_reads_the_ema_gain_and_warns_on_gaming():
    """The verdict follows rlp/gain_vs_ema; a rising gain against the current model with a falling gain against the
    EMA (a gamed reward) prints a warning, and a healthy run does not."""
    healthy = _verdict((-2.7, -2.2, 100), (-2.7, -2.1, 100))
    assert 'rose' in healthy[0] and '-2.7000 -> -2.2000' in healthy[0] and len(healthy) == 1
    gamed = _verdict((-3.5, -4.6, 50), (-3.4, 0.04, 50))
    assert 'did not rise' in gamed[0] and 'WARNING' in gamed[1] and 'lower the learning rate' in gamed[1]
    assert _verdict(None, None) == []


def test_summary_names_the_checkpoint_folder_without_secrets(tmp_path):
    """summarize(save_folder=...) ends with the checkpoint folder: a local one made absolute, a URI as given with
    its query string and password replaced by <redacted> (signed-URL tokens never reach the console)."""
    text = summarize(str(tmp_path), save_folder='s3://bucket/ckpt/run?X-Amz-Signature=secret&X-Amz-Expires=60')
    assert text.splitlines()[-1] == '  checkpoints: s3://bucket/ckpt/run?<redacted>'
    assert 'secret' not in text
    assert shown_location('sftp://user:hunter2@host/ckpt') == 'sftp://user:<redacted>@host/ckpt'
    assert shown_location('gs://bucket/ckpt') == 'gs://bucket/ckpt'
    assert shown_location('ckpt/run') == str(Path.cwd() / 'ckpt' / 'run')
    assert 'checkpoints:' not in summarize(str(tmp_path))
