"""``s3://`` inputs: list an object or prefix (with optional ``*`` globs) and download each supported object once.

Downloads land in the staging folder under ``inputs/<sha1 of the URI>/<name>``; an object already there with the
listed size is not downloaded again, so a resumed run reads the same local files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path

from pipeline.errors import DataError
from pipeline.inputs.groups import SUPPORTED, kind_of
from pipeline.storage import remote

__all__ = ['fetch_s3_inputs']


def fetch_s3_inputs(src: str, staging: Path) -> list[str]:
    """List an s3:// object or prefix (with optional * globs), download each supported object to staging."""
    scheme, bucket, key = remote.split_uri(src)
    if scheme != 's3':
        raise DataError(
            f'input {src!r}: remote inputs are supported on s3:// only; fix: copy the data locally '
            'or to an S3-compatible store'
        )
    globbed = any(ch in key for ch in '*?[')
    prefix = key.split('*')[0].split('?')[0].split('[')[0] if globbed else key
    parent = prefix.rsplit('/', 1)[0] if '/' in prefix else ''
    listing = remote.list_objects(f's3://{bucket}/{parent}')
    names = sorted(f'{parent}/{n}' if parent else n for n in listing)
    if globbed:
        chosen = [n for n in names if fnmatch.fnmatchcase(n, key)]
    elif key in names:
        chosen = [key]
    else:
        chosen = [n for n in names if n.startswith(key.rstrip('/') + '/')]
    chosen = [n for n in chosen if kind_of(n)]
    if not chosen:
        raise DataError(
            f'input {src!r} does not exist or holds no supported files ({SUPPORTED}); fix: check the ' 'bucket and key'
        )
    out = []
    for name in chosen:
        uri = f's3://{bucket}/{name}'
        digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
        local = staging / 'inputs' / digest / os.path.basename(name)
        size = listing.get(name[len(parent) + 1 :] if parent else name, -1)
        if not (local.exists() and local.stat().st_size == size):
            remote.download(uri, local)
        out.append(str(local))
    return out
