"""No credential reaches anything a training run writes.

A short ``composer -n 2`` RLP run reads its data from the local S3 server and checkpoints there, with unique random
strings as ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` (the server accepts any credentials) and ``TMPDIR``
inside the run's folder, so Composer's staging copies are searched too. Searched for both strings: every file under
the run's folder (metrics, thoughts, resolved config, rank 1's logs, streaming's cache, temporary files), the captured
stdout/stderr, and every object the run wrote to the bucket, as raw bytes and, for checkpoints, every string inside
the unpickled object (``torch.load``). A stream ``remote`` and a ``save_folder`` carrying a signed-URL query string
(``?X-Amz-Signature=...``) are refused before any work, in one line that does not repeat the signature.
"""

from __future__ import annotations

import io
import os
import uuid

import boto3
import pytest
import torch

from tests.helpers.s3_outage import s3_env
from tests.helpers.training import (
    REPO,
    TINY_RLP,
    environ,
    launch,
    packed_samples,
    rank_logs,
    tiny_recipe,
    write_mds,
    write_recipe,
)

SECRET_KEY = f'secretkey{uuid.uuid4().hex}'
SESSION_TOKEN = f'sessiontoken{uuid.uuid4().hex}'
SIGNATURE = f'signature{uuid.uuid4().hex}'
SECRETS = (SECRET_KEY, SESSION_TOKEN, SIGNATURE)


@pytest.fixture(scope='module')
def world(s3_server, tmp_path_factory):
    """A bucket with 24 packed samples and the subprocess env carrying the secret credentials."""
    env = {**s3_env(s3_server), 'AWS_SECRET_ACCESS_KEY': SECRET_KEY, 'AWS_SESSION_TOKEN': SESSION_TOKEN,
           'PYTHONPATH': str(REPO)}  # fmt: skip
    bucket = f'secrets-{os.getpid()}'
    client = boto3.client(
        's3',
        endpoint_url=s3_server,
        region_name='us-east-1',
        aws_access_key_id='testing',
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=SESSION_TOKEN,
    )
    client.create_bucket(Bucket=bucket)
    with environ(env):
        write_mds(f's3://{bucket}/data/train', packed_samples(24, 32, seed=5))
    return {'env': env, 'bucket': bucket, 'client': client, 'root': tmp_path_factory.mktemp('secrets')}


def _strings(obj, seen=None):
    """Every ``str`` (and decoded ``bytes``) inside a nested object: containers, attributes, keys."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, bytes | bytearray):
        yield bytes(obj).decode('latin-1')
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k, seen)
            yield from _strings(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from _strings(v, seen)
    elif hasattr(obj, '__dict__') and not torch.is_tensor(obj):
        yield from _strings(vars(obj), seen)


def _leaks(data: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode() in data]


def _launch(world, name, nproc=None, **recipe_kw):
    cwd = world['root'] / name
    (cwd / 'tmp').mkdir(parents=True)
    recipe = tiny_recipe(run_name='secret', max_duration='4ba', save_interval='2ba', microbatch=1, **recipe_kw)
    path = write_recipe(cwd / 'recipe.yaml', recipe)
    proc = launch(path, nproc=nproc, cwd=cwd, env={**world['env'], 'TMPDIR': str(cwd / 'tmp')})
    return cwd, proc


@pytest.mark.slow
def test_training_writes_no_credentials(world):
    """Files under the run folder, console output and bucket objects (raw and unpickled) hold neither secret."""
    bucket = world['bucket']
    cwd, proc = _launch(
        world,
        'plain',
        nproc=2,
        streams={'web': {'remote': f's3://{bucket}/data', 'split': 'train'}},
        save_folder=f's3://{bucket}/ckpt/{{run_name}}',
        rlp={**TINY_RLP, 'log': {'every_n_batches': 1}},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + rank_logs(cwd)
    assert _leaks(f'..{SESSION_TOKEN}..'.encode()) == [SESSION_TOKEN]  # the search itself finds a planted one
    planted = type('Planted', (), {})()
    planted.field = SECRET_KEY
    assert list(_strings({'a': [(b'x',)], 'b': planted})) == ['a', 'x', 'b', 'field', SECRET_KEY]
    assert _leaks((proc.stdout + proc.stderr).encode()) == []
    files = [p for p in cwd.rglob('*') if p.is_file()]
    names = {'metrics.jsonl', 'thoughts.jsonl', 'resolved_config.yaml', 'index.json', 'rank1.out', 'rank1.err'}
    assert names <= {p.name for p in files}, sorted(p.name for p in files)
    for path in files:
        assert _leaks(path.read_bytes()) == [], path
    keys = [o['Key'] for o in world['client'].list_objects_v2(Bucket=bucket, Prefix='ckpt/')['Contents']]
    assert 'ckpt/secret/ep0-ba4-rank0.pt' in keys, keys
    for key in keys:
        data = world['client'].get_object(Bucket=bucket, Key=key)['Body'].read()
        assert _leaks(data) == [], key
        if key.endswith('.pt'):
            state = torch.load(io.BytesIO(data), map_location='cpu', weights_only=False)
            found = [s for text in _strings(state) for s in SECRETS if s in text]
            assert found == [], (key, found)


@pytest.mark.parametrize('where', ['remote', 'save_folder'])
def test_signed_url_query_is_refused_without_echo(world, where):
    """A query string on an s3:// stream remote or save folder: exit 2 before any work, one line, no signature."""
    bucket, query = world['bucket'], f'?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=testing'
    remote = f's3://{bucket}/data' + (query if where == 'remote' else '')
    save = f's3://{bucket}/ckpt-{where}/{{run_name}}' + (query if where == 'save_folder' else '')
    cwd, proc = _launch(
        world, f'query-{where}', streams={'web': {'remote': remote, 'split': 'train'}}, save_folder=save
    )
    output = proc.stdout + proc.stderr + rank_logs(cwd)
    assert proc.returncode == 2, output[-4000:]
    assert 'query string' in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (cwd / 'runs').exists()
    for path in [p for p in cwd.rglob('*') if p.is_file() and p.name != 'recipe.yaml']:
        assert _leaks(path.read_bytes()) == [], path
    assert _leaks(output.encode()) == []
