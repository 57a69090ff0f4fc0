"""Object-store helpers: one place that turns boto3 / streaming storage failures into one-line errors.

``s3://`` goes through boto3 directly (endpoint from ``S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``, as
streaming and Composer read it), so a missing bucket or missing credentials are detected before any work starts.
Other schemes (``gs://``, ``oci://``, ...) go through streaming's ``CloudUploader`` / ``CloudDownloader``.

Outages: an ``s3://`` upload, listing or download that fails with a transient error (endpoint unreachable,
connection dropped, timeout, HTTP 5xx, throttling) is tried again with exponential backoff (1, 2, 4, ... 30 s) for up
to ``RLP_DATA_STORE_RETRY_S`` seconds (default 120), on top of botocore's own few quick retries; then it raises
:class:`StoreError`, one line naming the object, how long it was retried and the fix. ``prepare`` keeps its
finished local work on a :class:`StoreError`, so the same command resumes once the store is back.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import urllib.parse
from pathlib import Path

from pipeline.errors import DataError, one_line

# boto3, botocore and streaming's cloud storage load inside the functions that reach an object store: a run on
# local folders never imports them.
__all__ = [
    'RETRY_ENV',
    'StoreError',
    'is_remote',
    'split_uri',
    's3_client',
    'check_output_location',
    'list_objects',
    'download',
    'upload_files',
    'delete_objects',
    'join',
]

_REMOTE_SCHEMES = ('s3', 'gs', 'oci', 'azure', 'azure-dl', 'dbfs', 'hf', 'alipan')


def is_remote(path: str) -> bool:
    """True for an object-store URI (``s3://b/k``, ``gs://b/k``, ...), False for a local path."""
    scheme = urllib.parse.urlparse(str(path)).scheme
    return scheme in _REMOTE_SCHEMES


def split_uri(uri: str) -> tuple[str, str, str]:
    """``s3://bucket/a/b`` -> ``('s3', 'bucket', 'a/b')``."""
    obj = urllib.parse.urlparse(uri)
    return obj.scheme, obj.netloc, obj.path.lstrip('/')


def join(uri: str, name: str) -> str:
    """Append a relative object name to a prefix URI (no double slashes)."""
    return uri.rstrip('/') + '/' + name.lstrip('/')


def s3_client():
    """A boto3 S3 client for the configured endpoint (``S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``)."""
    import boto3

    endpoint = os.environ.get('S3_ENDPOINT_URL') or os.environ.get('AWS_ENDPOINT_URL') or None
    return boto3.session.Session().client('s3', endpoint_url=endpoint)


RETRY_ENV = 'RLP_DATA_STORE_RETRY_S'
DEFAULT_RETRY_S = 120.0
_TRANSIENT_CODES = ('SlowDown', 'Throttling', 'ThrottlingException', 'RequestTimeout', 'InternalError',
                    'ServiceUnavailable', 'RequestLimitExceeded')  # fmt: skip


class StoreError(DataError):
    """The object store failed (unreachable, or it refused an operation) while finished work waits to be
    published; the caller keeps its local work so that the same command resumes."""


def retry_budget() -> float:
    """Seconds a transient object-store failure is retried (``RLP_DATA_STORE_RETRY_S``, default 120)."""
    raw = os.environ.get(RETRY_ENV)
    try:
        value = float(raw) if raw else DEFAULT_RETRY_S
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise DataError(f'{RETRY_ENV}={raw!r} is invalid; rule: seconds >= 0; fix: unset it (default 120)')
    return value


def _root_cause(exc: BaseException) -> BaseException:
    """boto3 wraps a failed transfer in ``S3UploadFailedError``; the botocore error is its cause/context."""
    from boto3.exceptions import S3UploadFailedError

    while isinstance(exc, S3UploadFailedError) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later attempt may not see: no connection, dropped connection, timeouts, 5xx,
    throttling."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    exc = _root_cause(exc)
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = int(exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode') or 0)
        return status >= 500 or str(exc.response.get('Error', {}).get('Code', '')) in _TRANSIENT_CODES
    return False


def _retrying(call, uri: str, action: str):
    """``call()``, tried again on transient failures with backoff 1, 2, 4, ... (at most 30) s for up to the retry
    budget; any failure ends as a one-line :class:`DataError` (a :class:`StoreError` when transient)."""
    budget, start, attempt = retry_budget(), time.monotonic(), 0
    while True:
        try:
            return call()
        except DataError:
            raise
        except Exception as exc:
            elapsed = time.monotonic() - start
            delay = min(30.0, 2.0**attempt) * (0.75 + 0.5 * random.random())
            if not is_transient(exc) or elapsed + delay > budget:
                retried = f' (retried for {elapsed:.0f} s; {RETRY_ENV}={budget:g})' if attempt else ''
                raise _s3_error(_root_cause(exc), uri, action, retried) from None
            time.sleep(delay)
            attempt += 1


def _s3_error(exc: Exception, uri: str, action: str, retried: str = '') -> DataError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return DataError(
            f'cannot {action} {uri}: no S3 credentials found; rule: S3 access needs credentials from '
            'the standard AWS chain; fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)'
        )
    if isinstance(exc, EndpointConnectionError):
        return StoreError(
            f'cannot {action} {uri}: endpoint unreachable ({one_line(exc)}){retried}; fix: check '
            'S3_ENDPOINT_URL / AWS_ENDPOINT_URL and the network'
        )
    if is_transient(exc):
        return StoreError(
            f"cannot {action} {uri}: the object store failed ({one_line(exc)}){retried}; fix: check the store's "
            'status and the network'
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get('Error', {}).get('Code', ''))
        bucket = split_uri(uri)[1]
        if code in ('NoSuchBucket', '404') and 'Key' not in str(exc.response.get('Error', {})):
            return DataError(
                f'cannot {action} {uri}: bucket {bucket!r} does not exist (or is not visible with '
                'these credentials); fix: create the bucket or correct the URI'
            )
        if code in ('NoSuchKey',):
            return DataError(f'cannot {action} {uri}: no such object; fix: check the path')
        if code in ('403', 'AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch'):
            return DataError(
                f'cannot {action} {uri}: access denied ({code}); fix: check the credentials and the ' 'bucket policy'
            )
    return DataError(f'cannot {action} {uri}: {one_line(exc)}')


def check_output_location(uri: str) -> None:
    """Fail fast when the bucket of an output URI is missing or credentials are absent (before any work)."""
    scheme, bucket, _ = split_uri(uri)
    if scheme == 's3':
        try:
            s3_client().head_bucket(Bucket=bucket)
        except Exception as exc:
            raise _s3_error(exc, uri, 'write to') from None
        return
    from streaming.base.storage.upload import CloudUploader

    try:
        with tempfile.TemporaryDirectory() as tmp:
            CloudUploader.get((tmp, uri), exist_ok=True)
    except Exception as exc:
        raise DataError(f'cannot write to {uri}: {one_line(exc)}; fix: check the URI, bucket and credentials') from None


def list_objects(uri: str) -> dict[str, int]:
    """Objects under a prefix URI as ``{relative name: size in bytes}`` (size -1 where unknown)."""
    scheme, bucket, prefix = split_uri(uri)
    prefix = prefix.rstrip('/') + '/' if prefix else ''
    if scheme == 's3':

        def listing() -> dict[str, int]:
            out: dict[str, int] = {}
            for page in s3_client().get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get('Contents', []):
                    out[obj['Key'][len(prefix) :]] = int(obj['Size'])
            return out

        return _retrying(listing, uri, 'list')
    from streaming.base.storage.upload import CloudUploader

    try:
        with tempfile.TemporaryDirectory() as tmp:
            keys = CloudUploader.get((tmp, uri), exist_ok=True).list_objects() or []
    except Exception as exc:
        raise DataError(f'cannot list {uri}: {one_line(exc)}; fix: check the URI, bucket and credentials') from None
    return {k[len(prefix) :]: -1 for k in keys if k.startswith(prefix)}


def download(uri: str, local: str | Path) -> Path:
    """Download one object to ``local`` (written to a temporary name first, then renamed)."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + '.part')
    scheme, bucket, key = split_uri(uri)
    if scheme == 's3':
        _retrying(lambda: s3_client().download_file(bucket, key, str(tmp)), uri, 'read')
        os.replace(tmp, local)
        return local
    from streaming.base.storage.download import CloudDownloader

    if tmp.exists():
        tmp.unlink()
    try:
        CloudDownloader.direct_download(uri, str(tmp))
    except Exception as exc:
        raise DataError(f'cannot read {uri}: {one_line(exc)}; fix: check the URI and credentials') from None
    os.replace(tmp, local)
    return local


def upload_files(local_root: str | Path, uri: str, names: list[str]) -> None:
    """Upload ``local_root/<name>`` to ``uri/<name>`` for each name, in the given order."""
    scheme = split_uri(uri)[0]
    if scheme == 's3':
        client = s3_client()
        _, bucket, prefix = split_uri(uri)
        extra = {'ACL': os.environ['S3_CANNED_ACL']} if os.environ.get('S3_CANNED_ACL') else None
        for name in names:
            key = (prefix.rstrip('/') + '/' + name) if prefix else name
            path = str(Path(local_root) / name)
            _retrying(lambda: client.upload_file(path, bucket, key, ExtraArgs=extra), join(uri, name), 'upload')  # noqa: B023
        return
    from streaming.base.storage.upload import CloudUploader

    try:
        uploader = CloudUploader.get((str(local_root), uri), keep_local=True, exist_ok=True)
        for name in names:
            uploader.upload_file(name)
    except Exception as exc:
        raise DataError(f'cannot upload to {uri}: {one_line(exc)}; fix: check the URI and credentials') from None


def delete_objects(uri: str, names: list[str]) -> None:
    """Delete ``uri/<name>`` objects (used by ``--overwrite``; s3 only, other schemes are refused)."""
    scheme, bucket, prefix = split_uri(uri)
    if not names:
        return
    if scheme != 's3':
        raise DataError(
            f'--overwrite on {scheme}:// outputs is not supported; fix: delete {uri} by hand or use ' 'a new output URI'
        )
    client = s3_client()
    keys = [(prefix.rstrip('/') + '/' + n) if prefix else n for n in names]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={'Objects': [{'Key': k} for k in keys[i : i + 1000]]})
