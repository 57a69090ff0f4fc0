"""``rlp-data prepare`` to and from the local S3 server writes no credential anywhere.

Unique random strings as ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` (the server accepts any credentials),
an ``s3://`` input and an ``s3://`` ``--out``, the staging folder under a private ``XDG_CACHE_HOME``: neither string
is in any object written under ``--out`` (``manifest.json``, ``index.json``, shards), any local file left behind,
or the console output. An ``--out`` carrying a signed-URL query string (``?X-Amz-Signature=...``) is refused in one
line that does not repeat the signature, before anything is written.
"""

from __future__ import annotations

import uuid

from pipeline.synthetic import write_jsonl
from tests.helpers.pipeline_data import prepare

SECRET_KEY = f'secretkey{uuid.uuid4().hex}'
SESSION_TOKEN = f'sessiontoken{uuid.uuid4().hex}'
SIGNATURE = f'signature{uuid.uuid4().hex}'


def _leaks(data: bytes) -> list[str]:
    return [s for s in (SECRET_KEY, SESSION_TOKEN, SIGNATURE) if s.encode() in data]


def _secret_env(s3, tmp_path, monkeypatch):
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', SECRET_KEY)
    monkeypatch.setenv('AWS_SESSION_TOKEN', SESSION_TOKEN)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    write_jsonl(tmp_path / 'a.jsonl', 30)
    s3.client.upload_file(str(tmp_path / 'a.jsonl'), s3.bucket, 'raw/part-0.jsonl')


def test_prepare_to_s3_writes_no_credentials(s3, tmp_path, capsys, monkeypatch):
    """Every object under --out, every local file and the console output: no secret."""
    _secret_env(s3, tmp_path, monkeypatch)
    rc, out, err = prepare(capsys, [f's3://{s3.bucket}/raw/', tmp_path / 'a.jsonl'], f's3://{s3.bucket}/ds', 32)
    assert rc == 0, err
    assert _leaks(f'..{SECRET_KEY}..'.encode()) == [SECRET_KEY]  # the search itself finds a planted one
    keys = s3.list('ds/')
    assert {'ds/manifest.json', 'ds/index.json'} <= set(keys) and any('shard' in k for k in keys), keys
    for key in keys:
        assert _leaks(s3.client.get_object(Bucket=s3.bucket, Key=key)['Body'].read()) == [], key
    for path in [p for p in tmp_path.rglob('*') if p.is_file()]:
        assert _leaks(path.read_bytes()) == [], path
    assert _leaks((out + err).encode()) == []


def test_signed_url_query_on_out_is_refused_without_echo(s3, tmp_path, capsys, monkeypatch):
    """``--out s3://bucket/ds?X-Amz-Signature=...``: one error line without the signature, nothing written."""
    _secret_env(s3, tmp_path, monkeypatch)
    out_uri = f's3://{s3.bucket}/ds?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=testing'
    rc, out, err = prepare(capsys, [tmp_path / 'a.jsonl'], out_uri, 32)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('rlp-data: error: --out') and 'query string' in lines[0], err
    assert _leaks((out + err).encode()) == []
    assert s3.list('ds') == [] and not (tmp_path / 'cache').exists()
