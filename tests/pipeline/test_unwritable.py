"""``rlp-data prepare`` with an ``--out`` (or ``--staging``) that cannot be written: one ``rlp-data: error:`` line
and exit code 2 before any work. The blocking case is a path whose parent is an existing FILE (it fails even for
root, unlike permissions). "Before any work" is made visible by a ``--tokenizer`` folder that does not exist: a
check made after loading the tokenizer would report the tokenizer instead."""

from __future__ import annotations

import os

import pytest

from pipeline.synthetic import write_jsonl
from tests.helpers.commands import tree
from tests.helpers.pipeline_data import EOS_TEXT, run


@pytest.fixture
def workdir(tmp_path):
    write_jsonl(tmp_path / 'c.jsonl', 10)
    (tmp_path / 'blocker').write_text('a file where a folder is expected\n')
    return tmp_path


def _prepare(capsys, root, *extra):
    argv = ['prepare', '--input', root / 'c.jsonl', '--tokenizer', root / 'no-tokenizer', '--eos-text', EOS_TEXT]
    return run(capsys, *argv, '--seq-len', 32, '--no-progress', *extra)


@pytest.mark.parametrize('flag', ['--out', '--staging'])
def test_output_under_a_file_is_refused_first(workdir, capsys, flag):
    """``FLAG blocker/sub``: one line naming the flag and the file in the way; nothing written."""
    before = tree(workdir)
    extra = ['--out', workdir / 'blocker' / 'ds'] if flag == '--out' else ['--out', workdir / 'ds', flag]
    extra += [workdir / 'blocker' / 'staging'] if flag == '--staging' else []
    rc, _, err = _prepare(capsys, workdir, *extra)
    target = workdir / 'blocker' / ('ds' if flag == '--out' else 'staging')
    assert rc == 2, err
    assert err.strip().splitlines() == [
        f"rlp-data: error: {flag} '{target}' cannot be written: '{workdir / 'blocker'}' is a file, not a folder; "
        f'rule: {flag} is a folder that can be created; fix: choose a path under a writable folder'
    ]
    assert tree(workdir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_out_is_refused_first(workdir, capsys):
    (workdir / 'ro').mkdir(mode=0o555)
    rc, _, err = _prepare(capsys, workdir, '--out', workdir / 'ro' / 'ds')
    assert rc == 2 and f"the folder '{workdir / 'ro'}' is not writable" in err, err
