"""An object-store outage while ``rlp-data prepare --out s3://...`` publishes: the finished local work is kept, the
run stops with one line, and the same command resumes once the store is back.

A moto S3 server process of the test's own is SIGKILLed by the child itself right after its first upload call
(hook ``RLP_DATA_TEST_KILL_AFTER_UPLOAD`` in ``tests/helpers/hooks/sitecustomize.py``), so the outage always lands
between two uploads of the publish phase. A fresh, empty server then starts on the same port (the bucket created
again) and the same command runs again; its result is compared byte for byte with an uninterrupted run's objects.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.storage.remote import RETRY_ENV
from tests.helpers.hooks import KILL_AFTER_UPLOAD, hook_env
from tests.helpers.pipeline_data import BASE, write_corpus
from tests.helpers.s3_outage import MotoServer, free_port, s3_env

REPO = Path(__file__).resolve().parents[2]
SMALL = ('--shard-mb', '0.005', '--chunk-mb', '0.006')  # several groups and parts, so the outage lands between two


def _rlp_data(env: dict, *argv) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'pipeline.cli', *(str(a) for a in argv)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _prepare(env: dict, corpus: Path, out: str, staging: Path) -> subprocess.CompletedProcess:
    return _rlp_data(env, 'prepare', '--input', corpus, *BASE, '--seq-len', 40, '--out', out, '--staging', staging,
                     *SMALL)  # fmt: skip


def _objects(server: MotoServer, bucket: str, prefix: str) -> dict[str, bytes]:
    client = server.client()
    keys = [o['Key'] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get('Contents', [])]
    return {k[len(prefix) :]: client.get_object(Bucket=bucket, Key=k)['Body'].read() for k in keys}


@pytest.mark.slow
def test_outage_while_publishing_keeps_the_work_and_the_rerun_resumes(tmp_path):
    """Outage after the first uploaded part: exit 1 with one line naming the object, the retry time and the fix;
    the staging folder keeps every done marker; after a fresh server comes up, the same command reports all groups
    and parts as reused, uploads everything, ``rlp-data verify`` passes and the objects equal an uninterrupted
    run's byte for byte."""
    server = MotoServer(free_port(), tmp_path / 'moto.log').start()
    try:
        bucket = server.make_bucket('outage')
        corpus = write_corpus(tmp_path / 'corpus', 3, stem='p')
        env = {**os.environ, **s3_env(server.endpoint), 'TOKENIZERS_PARALLELISM': 'false', RETRY_ENV: '3'}
        ref = _prepare(env, corpus, f's3://{bucket}/ref', tmp_path / 'stg-ref')
        assert ref.returncode == 0, ref.stderr
        reference = _objects(server, bucket, 'ref/')
        n_parts = len({k.split('/')[0] for k in reference if k.startswith('part_')})
        assert n_parts >= 2, sorted(reference)

        uri, staging = f's3://{bucket}/ds', tmp_path / 'stg'
        t0 = time.monotonic()
        hooked = hook_env(env, **{KILL_AFTER_UPLOAD: f'{server.proc.pid}:{server.port}'})
        cut = _prepare(hooked, corpus, uri, staging)
        seconds = time.monotonic() - t0
        assert f'{KILL_AFTER_UPLOAD}: killed' in cut.stderr, cut.stderr[-3000:]
        lines = [ln for ln in cut.stderr.splitlines() if not ln.startswith(KILL_AFTER_UPLOAD)]
        assert cut.returncode == 1 and len(lines) == 1, cut.stderr[-3000:]
        line = lines[0]
        assert line.startswith(f'rlp-data: error: cannot upload {uri}/'), line
        assert 'unreachable' in line and f'{RETRY_ENV}=3' in line, line
        assert 'rerun the same command' in line and str(staging) in line, line
        assert 'Traceback' not in cut.stderr + cut.stdout
        groups_done = len(list((staging / 'tokens').glob('g*.done.json')))
        parts_done = len(list((staging / 'parts').glob('part_*.done.json')))
        assert groups_done >= 3 and parts_done == n_parts, (groups_done, parts_done)
        print(f'outage run stopped {seconds:.1f} s after start: {line}')

        server.stop()  # already killed by the child; reap it
        server.start()
        server.make_bucket(bucket)
        rerun = _prepare(env, corpus, uri, staging)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        m = re.search(r'groups (\d+) \((\d+) already tokenised, (\d+) parts already written', rerun.stdout)
        assert m and m.group(1) == m.group(2) and int(m.group(3)) == n_parts, rerun.stdout
        verified = _rlp_data(env, 'verify', uri)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert _objects(server, bucket, 'ds/') == reference
        assert not staging.exists()
    finally:
        server.stop()
