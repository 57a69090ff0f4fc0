"""Shared fixtures: a real S3-protocol server on 127.0.0.1, the bundled tokenizer, tiny-model settings.

The S3 server is moto's standalone server started as a separate process (not an in-process mock), so that
spawned processes (Composer's checkpoint uploader, `composer -n 2` ranks, `rlp-data` subprocesses) reach it
exactly as they would reach a cloud bucket: through ``S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.s3_outage import s3_env

os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
# Nothing in the tests comes from a hub: offline from the start (the hub libraries read these once, at import), so a
# test that names a missing hub id fails at once instead of retrying the network for half a minute.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')


def _bind_library_loggers() -> None:
    """huggingface_hub, transformers and datasets give their library loggers a ``StreamHandler`` bound to the
    ``sys.stderr`` of the moment they are first used; when that moment falls inside a test using ``capsys``, the
    handler keeps that test's stream, which is closed afterwards, and every later log line of the library (in any
    test) becomes a "--- Logging error --- ValueError: I/O operation on closed file" traceback on stderr. Setting
    them up here binds them to the session's stream (a library that is not installed, as on a GPU machine that runs
    only the CUDA tests, is skipped)."""
    import importlib

    for name in ('huggingface_hub.utils.logging', 'transformers.utils.logging', 'datasets.utils.logging'):
        try:
            importlib.import_module(name).get_logger()
        except ImportError:
            continue


_bind_library_loggers()

_bucket_counter = itertools.count()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture(scope='session')
def s3_server(tmp_path_factory) -> str:
    """Start ``python -m moto.server`` on a free loopback port for the whole session; yield its endpoint URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp('moto') / 'server.log'
    with open(log, 'wb') as fh:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    endpoint = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + '/moto-api/', timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                tail = log.read_text()[-2000:]
                raise RuntimeError(f'moto S3 server did not start on {endpoint}; log: {tail}') from None
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class S3:
    """Handle on the local S3 server for one test: endpoint, a fresh bucket and a boto3 client."""

    endpoint: str
    bucket: str
    client: object

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (idempotent) and return it."""
        try:
            self.client.create_bucket(Bucket=name)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def list(self, prefix: str = '', bucket: str | None = None) -> list[str]:
        """All object keys under ``prefix`` in ``bucket`` (default: this test's bucket), sorted."""
        keys = []
        paginator = self.client.get_paginator('list_objects_v2')
        for page in paginator.paginate(Bucket=bucket or self.bucket, Prefix=prefix):
            keys.extend(obj['Key'] for obj in page.get('Contents', []))
        return sorted(keys)


@pytest.fixture
def s3(s3_server, monkeypatch) -> S3:
    """Point S3 clients (boto3, streaming, Composer) at the local server with dummy credentials; fresh bucket."""
    import boto3

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    client = boto3.client('s3', endpoint_url=s3_server, region_name='us-east-1')
    handle = S3(endpoint=s3_server, bucket='', client=client)
    handle.bucket = handle.make_bucket(f'test-{os.getpid()}-{next(_bucket_counter)}')
    return handle


@pytest.fixture(scope='session')
def tokenizer_dir() -> Path:
    """Folder of the bundled tokenizer (shipped in the repo)."""
    from pipeline.bundled_tokenizer import bundled_tokenizer_dir

    return bundled_tokenizer_dir()


@pytest.fixture(scope='session')
def tokenizer():
    """The bundled tokenizer: byte-level BPE, no BOS/EOS added, eos = pad = <|endoftext|>, <think> tags."""
    from pipeline.bundled_tokenizer import load_bundled_tokenizer

    return load_bundled_tokenizer()
