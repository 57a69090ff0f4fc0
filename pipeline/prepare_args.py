"""The arguments of ``rlp-data prepare`` as one dataclass, shared by :mod:`pipeline.prepare` and its workers.

Kept apart from :mod:`pipeline.prepare` so that :mod:`pipeline.workers` can name the type without importing the
orchestration. Constructing one checks the URI schemes of ``--out`` and of the inputs (nothing is read or written
yet, so a typo such as ``ftp://`` fails before any tokenising); the other checks of the values are in
:func:`pipeline.prepare.prepare`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pipeline.errors import UsageError

__all__ = [
    'INPUT_SCHEMES',
    'OUTPUT_SCHEMES',
    'PrepareArgs',
    'check_dataset_scheme',
    'check_local_folder',
    'check_schemes',
]

# --out: s3:// through boto3, the others through streaming 0.13's CloudUploader (its UPLOADERS registry; dbfs
# covers dbfs:/Volumes too). Remote inputs: s3:// only (hf:NAME has no "//" and is not a URI here).
OUTPUT_SCHEMES = ('s3', 'gs', 'oci', 'azure', 'azure-dl', 'dbfs', 'hf', 'alipan')
INPUT_SCHEMES = ('s3',)
_URI = re.compile(r'([A-Za-z][A-Za-z0-9+.-]*)://')
_HINTS = {  # common spellings of a supported scheme
    'az': 'azure://',
    'abfs': 'azure-dl://',
    'abfss': 'azure-dl://',
    'gcs': 'gs://',
    's3a': 's3://',
    's3n': 's3://',
    'file': 'a plain local path',
}


def _scheme_error(flag: str, value: str, scheme: str, rule: str, fix: str) -> UsageError:
    hint = f'write {_HINTS[scheme]} instead, or ' if scheme in _HINTS else ''
    return UsageError(f'{flag} {value!r}: the scheme {scheme}:// is not supported; rule: {rule}; fix: {hint}{fix}')


def check_dataset_scheme(path: str, flag: str, fix: str) -> None:
    """Refuse a dataset location (``--out``, or the PATH of inspect/verify) whose scheme is not an object store
    ``rlp-data`` can use.

    Raises:
        UsageError: naming the value, the supported schemes and ``fix`` (exit code 2).
    """
    m = _URI.match(str(path))
    if m and m.group(1).lower() not in OUTPUT_SCHEMES:
        names = ', '.join(f'{s}://' for s in OUTPUT_SCHEMES)
        rule = f'{flag} is a local folder or an object-store URI ({names})'
        raise _scheme_error(flag, str(path), m.group(1).lower(), rule, fix)
    if m and ('?' in str(path) or '#' in str(path)):  # shown without it: a signed URL's query holds its signature
        shown = re.split(r'[?#]', str(path), maxsplit=1)[0] + '?<redacted>'
        raise UsageError(
            f'{flag} {shown!r} carries a query string (a signed URL?); rule: {flag} is a folder URI that file names '
            'are appended to, and credentials come from the environment (AWS_*, S3_ENDPOINT_URL, ...); fix: remove '
            'everything from the ?'
        )


def check_schemes(out: str, inputs: list[str]) -> None:
    """Refuse an ``--out`` or ``--input`` URI whose scheme ``rlp-data`` cannot read or write.

    Raises:
        UsageError: naming the value, the supported schemes and the fix (exit code 2).
    """
    check_dataset_scheme(out, '--out', 'write to a local folder or one of those stores')
    for src in inputs:
        m = _URI.match(str(src))
        if m and m.group(1).lower() not in INPUT_SCHEMES:
            rule = 'an input is a local path, glob or folder, an s3:// URI, or hf:NAME'
            fix = 'copy the data to a local folder or to s3://, or name a Hugging Face dataset as hf:NAME'
            raise _scheme_error('--input', str(src), m.group(1).lower(), rule, fix)


def check_local_folder(path: str, flag: str) -> None:
    """Refuse a local folder that cannot be created or written, before anything is read or written: its nearest
    existing ancestor must be a writable folder (a parent that is a file fails even for root). A path that is itself
    a file is left to the caller's own message; URIs are skipped.

    Raises:
        UsageError: naming the value, the blocking ancestor and the fix (exit code 2).
    """
    if _URI.match(str(path)):
        return
    ancestor = os.path.abspath(path)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if ancestor == os.path.abspath(path) and not os.path.isdir(ancestor):
        return
    if not os.path.isdir(ancestor):
        problem = f'{ancestor!r} is a file, not a folder'
    elif not os.access(ancestor, os.W_OK | os.X_OK):
        problem = f'the folder {ancestor!r} is not writable'
    else:
        return
    raise UsageError(
        f'{flag} {path!r} cannot be written: {problem}; rule: {flag} is a folder that can be created; fix: '
        'choose a path under a writable folder'
    )


@dataclass
class PrepareArgs:
    """Arguments of ``rlp-data prepare`` (see ``rlp-data prepare --help``)."""

    inputs: list[str]
    tokenizer: str
    seq_len: int
    out: str
    pack: str = 'concat'
    dtype: str = 'auto'
    text_field: str = 'text'
    bos_text: str | None = None
    eos_text: str | None = None
    on_bad_record: str = 'fail'
    workers: int = 1
    overwrite: bool = False
    staging: str | None = None
    chunk_mb: float = 16.0
    shard_mb: float = 64.0
    progress: bool = True

    def __post_init__(self):
        check_schemes(self.out, self.inputs)
        check_local_folder(self.out, '--out')
        if self.staging:
            check_local_folder(self.staging, '--staging')

    def dataset_arguments(self) -> dict:
        """The arguments that define the dataset (recorded in the manifest; output/parallelism excluded)."""
        keys = (
            'inputs',
            'tokenizer',
            'seq_len',
            'pack',
            'dtype',
            'text_field',
            'bos_text',
            'eos_text',
            'on_bad_record',
            'shard_mb',
        )
        return {k: getattr(self, k) for k in keys}
