"""The object store goes down while training saves a checkpoint (``python -m rlp.train``, a tiny Llama with RLP).

The store is a moto S3 server process of the test's own behind a TCP proxy (``tests/helpers/s3_outage.py``): the
proxy refusing connections is the outage, and the server keeps its objects for when the proxy listens again. The
run pauses after batch 6 (hook ``RLP_TEST_WAIT_AFTER_BATCH``) until the ba4 checkpoint and its pointer are on the
store; then the proxy goes down and the run goes on, so the ba8 checkpoint's upload meets the outage. Checked
against the uninterrupted run (no checkpoints) and the store's objects before the outage: one line and exit 1, the
ba4 checkpoint intact, no checkpoint copy left in the run's temp folder (a per-test ``TMPDIR``) or the run folder,
and, once the store is back, the same command resumes and every batch's sample ids, losses and RLP scores equal the
uninterrupted run's. A second test pauses the ba8 upload in the middle of its transfer (hook ``RLP_TEST_PAUSE_IN``)
and takes the store down then, so the rest of the transfer meets the outage. Both compare with one uninterrupted
run (the module's ``reference`` fixture).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlp.run.metrics import read_metrics
from tests.helpers.hooks import PAUSE_IN, WAIT_AFTER_BATCH, hook_env
from tests.helpers.s3_outage import MotoServer, StoreProxy, free_port, s3_env, wait_until
from tests.helpers.training import (
    COMPARED,
    REPO,
    TINY_RLP,
    launch,
    packed_samples,
    tiny_recipe,
    write_mds,
    write_recipe,
)

pytestmark = pytest.mark.slow

BUCKET = 'ckpt-outage'


@pytest.fixture
def store(tmp_path):
    server = MotoServer(free_port(), tmp_path / 'moto.log').start()
    proxy = StoreProxy(server.port).up()
    server.make_bucket(BUCKET)
    yield server, proxy
    proxy.down()
    server.stop()


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """The data and the metrics of the uninterrupted run (no checkpoints), shared by the tests of this module."""
    root = tmp_path_factory.mktemp('outage-reference')
    data = root / 'data'
    write_mds(str(data / 'train'), packed_samples(64, 32, seed=5))
    ref_cwd = root / 'reference'
    ref = launch(_recipe(ref_cwd, data, None), nproc=None, cwd=ref_cwd)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    return data, read_metrics(str(ref_cwd / 'runs' / 'resume' / 'metrics.jsonl'))


def _recipe(cwd: Path, data: Path, save_folder: str | None) -> Path:
    cwd.mkdir()
    recipe = tiny_recipe(
        streams={'web': {'local': str(data), 'split': 'train'}},
        run_name='resume',
        max_duration='12ba',
        save_interval='4ba',
        save_folder=save_folder,
        rlp=TINY_RLP,
    )
    return write_recipe(cwd / 'recipe.yaml', recipe)


def _start(recipe: Path, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """``python -m rlp.train RECIPE`` in the background as :func:`launch` runs it, stdout to ``log``, stderr to
    ``log.err`` (files, so a paused run never blocks on a full pipe)."""
    full = {**os.environ, 'TOKENIZERS_PARALLELISM': 'false', 'OMP_NUM_THREADS': '1',
            'RLP_SYMLINK_UPLOAD_POLL_S': '0.5', **env}  # fmt: skip
    full['PYTHONPATH'] = os.pathsep.join(p for p in (env.get('PYTHONPATH'), str(REPO)) if p)
    with open(log, 'w') as out, open(f'{log}.err', 'w') as err:
        return subprocess.Popen([sys.executable, '-m', 'rlp.train', str(recipe)], cwd=cwd, env=full, stdout=out,
                                stderr=err)  # fmt: skip


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` but streaming's empty lock files (``000001_cache_filelock``, ...)."""
    files = [p for p in folder.rglob('*') if p.is_file()]
    return sorted(
        str(p.relative_to(folder)) for p in files if not (p.name.endswith('_filelock') and not p.stat().st_size)
    )


def _stop_line(proc: subprocess.Popen, out: str, err: str, name: str) -> tuple[str, int]:
    """The outage run's single stop line, checked (exit 1, no traceback, names checkpoint ``name``, its URI, the fix
    and a connection error); returns it with the batch the run stopped at."""
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    stopped = [ln for ln in err.splitlines() if ln.startswith('rlp.train: stopped:')]
    assert len(stopped) == 1 and 'Traceback' not in out + err, out[-3000:] + err[-5000:]
    line = stopped[0]
    uri = f's3://{BUCKET}/ckpt/resume/{name}'
    assert f'checkpoint {name} was not saved: uploading {uri} failed' in line, line
    assert 'rerun the same command to resume' in line and 'EndpointConnectionError' in line, line
    return line, int(re.search(r'the run stopped at batch (\d+)', line).group(1))


def _resume_equals_reference(recipe: Path, cwd: Path, env: dict, reference: dict, keys, tmpdir: Path) -> None:
    """Store back: the same command resumes from ba4, every batch's compared fields equal the uninterrupted run's,
    ba8 and ba12 reach the store, and no checkpoint copy is left in TMPDIR or the run folder."""
    rerun = launch(recipe, nproc=None, cwd=cwd, env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f'resuming from s3://{BUCKET}/ckpt/resume/ep0-ba4-rank0.pt' in rerun.stdout + rerun.stderr
    resumed = read_metrics(str(cwd / 'runs' / 'resume' / 'metrics.jsonl'))
    assert sorted(resumed) == sorted(reference) == list(range(12))
    for batch in range(12):
        for key in COMPARED:
            assert resumed[batch][key] == reference[batch][key], (batch, key)
    assert {'ckpt/resume/ep0-ba8-rank0.pt', 'ckpt/resume/ep0-ba12-rank0.pt'} <= set(keys())
    assert _files(tmpdir) == [] and not (cwd / 'runs' / 'resume' / '.checkpoint-uploads').exists(), _files(tmpdir)


def test_store_outage_at_a_checkpoint_stops_with_one_line_and_the_same_command_resumes(store, reference, tmp_path):
    """Outage at the ba8 save: exit 1, one line naming the checkpoint, its URI and the fix, no traceback; ba4 on the
    store unchanged, no ba8; no copy in TMPDIR or the run folder. Store back, same command: resumes from ba4, every
    batch equals the uninterrupted run's, and again no copy is left anywhere."""
    server, proxy = store
    data, reference = reference
    cwd, tmpdir, flag = tmp_path / 'run', tmp_path / 'tmpdir', tmp_path / 'store-down'
    tmpdir.mkdir()
    recipe = _recipe(cwd, data, f's3://{BUCKET}/ckpt/{{run_name}}')
    env = {**s3_env(proxy.endpoint), 'AWS_MAX_ATTEMPTS': '2', 'TMPDIR': str(tmpdir)}
    log = tmp_path / 'outage-run.log'
    proc = _start(recipe, cwd, hook_env(env, **{WAIT_AFTER_BATCH: f'6:{flag}'}), log)
    client = server.client()

    def keys() -> list[str]:
        return sorted(o['Key'] for o in client.list_objects_v2(Bucket=BUCKET).get('Contents', []))

    try:
        wait_until(lambda: Path(f'{flag}.reached').exists(), 240, 'batch 6', proc)
        wait_until(lambda: 'ckpt/resume/latest-rank0.pt.symlink' in keys(), 60, 'the ba4 pointer on the store', proc)
        ba4 = client.get_object(Bucket=BUCKET, Key='ckpt/resume/ep0-ba4-rank0.pt')['Body'].read()
        proxy.down()
        flag.touch()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, batches_done = _stop_line(proc, log.read_text(), Path(f'{log}.err').read_text(), 'ep0-ba8-rank0.pt')

    proxy.up()
    assert client.get_object(Bucket=BUCKET, Key='ckpt/resume/ep0-ba4-rank0.pt')['Body'].read() == ba4
    assert not any('ba8' in k for k in keys()), keys()
    assert _files(tmpdir) == [] and not (cwd / 'runs' / 'resume' / '.checkpoint-uploads').exists(), _files(tmpdir)

    _resume_equals_reference(recipe, cwd, env, reference, keys, tmpdir)
    print(f'outage run stopped after batch {batches_done}; the resume from ba4 redid {batches_done - 4} batches')


def test_store_outage_in_the_middle_of_a_checkpoint_upload_keeps_ba4_and_the_same_command_resumes(
    store, reference, tmp_path
):
    """The store goes away while the uploader is sending the ba8 checkpoint: the uploader process pauses inside
    the transfer (``RLP_TEST_PAUSE_IN=upload:ep0-ba8-rank0.pt:FILE``: the PUT request is open and part of the body
    is through the proxy, checked with its byte count), the proxy goes down (its open connections are cut), then
    the pause ends and the rest of the transfer meets the outage.

    Checked against the store's objects before the outage and the uninterrupted run: the upload is retried (the
    cut request fails with ``ConnectionClosedError``; the error in the stop line is ``EndpointConnectionError``,
    which only a retry's new connection can raise) and fails; exit 1 with exactly one stop line naming the
    checkpoint, its URI and the fix, no traceback; ba4 on the store byte-identical; no ba8 object, partial or
    not; no checkpoint copy left in TMPDIR or the run folder. Store back, same command: the resume logs
    ``resuming from ...ep0-ba4-rank0.pt`` and every batch's compared fields equal the uninterrupted run's.
    ``AWS_MAX_ATTEMPTS=3`` (the cut attempt and two on a refused port) keeps the retry short: with the default 15
    attempts the same failure took 69 s instead of 1 s (measured) and shows nothing more.
    """
    server, proxy = store
    data, reference = reference
    cwd, tmpdir = tmp_path / 'run', tmp_path / 'tmpdir'
    at_batch6, release = tmp_path / 'ba4-on-store', tmp_path / 'release-upload'
    tmpdir.mkdir()
    recipe = _recipe(cwd, data, f's3://{BUCKET}/ckpt/{{run_name}}')
    env = {**s3_env(proxy.endpoint), 'AWS_MAX_ATTEMPTS': '3',
           'TMPDIR': str(tmpdir)}  # fmt: skip
    log = tmp_path / 'mid-upload-run.log'
    name = 'ep0-ba8-rank0.pt'
    hooks = {WAIT_AFTER_BATCH: f'6:{at_batch6}', PAUSE_IN: f'upload:{name}:{release}'}
    proc = _start(recipe, cwd, hook_env(env, **hooks), log)
    err_log = Path(f'{log}.err')
    client = server.client()

    def keys() -> list[str]:
        return sorted(o['Key'] for o in client.list_objects_v2(Bucket=BUCKET).get('Contents', []))

    try:
        wait_until(lambda: Path(f'{at_batch6}.reached').exists(), 240, 'batch 6', proc)
        wait_until(lambda: 'ckpt/resume/latest-rank0.pt.symlink' in keys(), 60, 'the ba4 pointer on the store', proc)
        ba4 = client.get_object(Bucket=BUCKET, Key='ckpt/resume/ep0-ba4-rank0.pt')['Body'].read()
        before = proxy.forwarded
        at_batch6.touch()
        wait_until(lambda: f'paused in the upload of ckpt/resume/{name}' in err_log.read_text(), 240,
                   'the ba8 upload paused in its transfer', proc)  # fmt: skip
        wait_until(lambda: proxy.forwarded - before > 64 * 1024, 30, 'part of the ba8 body through the proxy', proc)
        sent = proxy.forwarded - before
        proxy.down()
        released = time.monotonic()
        release.touch()
        proc.wait(timeout=300)
        stopped_after = time.monotonic() - released
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = log.read_text(), err_log.read_text()
    line, batches_done = _stop_line(proc, out, err, name)
    assert f'{PAUSE_IN}=upload:{name}:{release}: released' in err, err[-3000:]

    proxy.up()
    assert client.get_object(Bucket=BUCKET, Key='ckpt/resume/ep0-ba4-rank0.pt')['Body'].read() == ba4
    assert not any('ba8' in k or 'ba12' in k for k in keys()), keys()
    assert _files(tmpdir) == [] and not (cwd / 'runs' / 'resume' / '.checkpoint-uploads').exists(), _files(tmpdir)

    _resume_equals_reference(recipe, cwd, env, reference, keys, tmpdir)
    print(f'mid-upload outage: {sent} bytes through the proxy when the store went down; the run stopped '
          f'{stopped_after:.1f} s later after batch {batches_done} ({line.split("failed after ")[1].split(" (")[0]}); '
          f'the resume from ba4 redid {batches_done - 4} batches')  # fmt: skip
