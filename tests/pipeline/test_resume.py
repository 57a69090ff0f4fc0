"""Kill-and-resume: ``rlp-data prepare`` is SIGKILLed mid-run (in the tokenise phase, and in the write phase),
re-run with the same command, and the result is compared byte for byte with an uninterrupted run.

The test hook ``RLP_DATA_TEST_SLEEP_AFTER_UNIT`` (``tests/helpers/hooks/sitecustomize.py``, loaded by the child
through ``PYTHONPATH``) makes every group/part sleep after its done marker, so the kill lands between markers
deterministically enough; the child's stderr must show that the hook ran, and the re-run must report the completed
groups as already done. Only the parent process is killed: its pool workers must die with it (PR_SET_PDEATHSIG),
never racing the re-run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.hooks import SLEEP_AFTER_UNIT, hook_env
from tests.helpers.pipeline_data import BASE, prepare, tree_bytes, write_corpus

REPO = Path(__file__).resolve().parents[2]


def _wait_for(pattern_dir: Path, glob: str, count: int, proc, timeout=90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pattern_dir.exists() and len(list(pattern_dir.glob(glob))) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f'prepare finished before the kill point: {proc.stderr.read().decode()[-2000:]}')
        time.sleep(0.05)
    proc.kill()
    raise AssertionError('kill point not reached in time')


@pytest.mark.slow
@pytest.mark.parametrize(
    'phase,sub,glob', [('tokenise', 'tokens', 'g*.done.json'), ('write', 'parts', 'part_*.done.json')]
)
def test_sigkill_then_rerun_equals_uninterrupted(phase, sub, glob, tmp_path, capsys):
    corpus = write_corpus(tmp_path / 'corpus', 6)
    ref = tmp_path / 'ref'
    assert prepare(capsys, [str(corpus)], ref, 40, '--shard-mb', '0.005', '--chunk-mb', '0.006')[0] == 0

    out = tmp_path / 'out'
    argv = [
        sys.executable,
        '-m',
        'pipeline.cli',
        'prepare',
        '--input',
        str(corpus),
        *BASE,
        '--seq-len',
        '40',
        '--out',
        str(out),
        '--workers',
        '2',
        '--shard-mb',
        '0.005',
        '--chunk-mb',
        '0.006',
    ]
    env = hook_env({**os.environ, 'TOKENIZERS_PARALLELISM': 'false'}, **{SLEEP_AFTER_UNIT: '0.7'})
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(out / '.rlp-data' / sub, glob, 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    _, child_err = proc.communicate(timeout=30)  # EOF only once the workers, which share the pipe, are gone too
    assert f'{SLEEP_AFTER_UNIT}=0.7: sleeping after' in child_err.decode(), child_err.decode()[-2000:]
    time.sleep(0.3)  # let the kernel deliver PDEATHSIG to the orphaned workers
    assert not (out / 'manifest.json').exists() and not (out / 'index.json').exists()
    done_before = sorted(p.name for p in (out / '.rlp-data' / sub).glob(glob))

    rc, stdout, err = prepare(
        capsys, [str(corpus)], out, 40, '--workers', '2', '--shard-mb', '0.005', '--chunk-mb', '0.006'
    )
    assert rc == 0, err
    groups, tokenised, written = map(
        int, re.search(r'groups (\d+) \((\d+) already tokenised, (\d+) parts already ' r'written', stdout).groups()
    )
    if phase == 'tokenise':
        assert tokenised == len(done_before) and written == 0
    else:
        assert tokenised == groups and written == len(done_before)
    assert tree_bytes(out) == tree_bytes(ref)


def test_crash_while_publishing_then_rerun(tmp_path, capsys, monkeypatch):
    """A crash after the parts were moved into place but before index.json/manifest.json: nothing looks complete,
    and the re-run finishes to the same bytes as an uninterrupted run."""
    import pipeline.mds.publish as publish

    corpus = write_corpus(tmp_path / 'corpus', 3)
    ref = tmp_path / 'ref'
    assert prepare(capsys, [str(corpus)], ref, 40, '--shard-mb', '0.005', '--chunk-mb', '0.001')[0] == 0

    def crash(*args, **kwargs):
        raise RuntimeError('simulated crash before index.json')

    out = tmp_path / 'out'
    monkeypatch.setattr(publish, 'write_json_atomic', crash)
    with pytest.raises(RuntimeError, match='simulated crash'):
        prepare(capsys, [str(corpus)], out, 40, '--shard-mb', '0.005', '--chunk-mb', '0.001')
    assert (out / 'part_000000').is_dir() and not (out / 'index.json').exists()
    assert not (out / 'manifest.json').exists()
    monkeypatch.undo()
    n_parts = len(list(out.glob('part_*')))
    assert n_parts >= 2
    rc, stdout, err = prepare(capsys, [str(corpus)], out, 40, '--shard-mb', '0.005', '--chunk-mb', '0.001')
    assert rc == 0 and re.search(rf'groups (\d+) \(\1 already tokenised, {n_parts} parts already written', stdout), err
    assert tree_bytes(out) == tree_bytes(ref)
