"""``manifest.json``: what a prepared dataset is, beside ``index.json``.

It records the tokenizer (name, vocab size, hash), the BOS/EOS policy, seq_len, dtype, pack mode, the MDS
columns, counts (documents, tokens, samples, dropped tail tokens, empty documents and bad records skipped), the
inputs with content hashes, the tool version and the arguments. It holds no wall-clock time, host or absolute
staging path: two runs over the same inputs and arguments write byte-identical manifests.

Content hashes: ``xxh64`` of each input file's bytes, combined per input (xxh64 over ``name\\0hash\\n`` lines)
when an input names several files; for ``hf:`` datasets read by streaming, xxh64 over the UTF-8 texts of the
documents as read (each followed by a NUL byte).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

import xxhash

__all__ = ['FORMAT', 'tool_version', 'hash_file', 'combine_hashes', 'build_manifest', 'IDENTITY_KEYS']

FORMAT = 'rlp-data-manifest/1'
# The parts of a manifest that identify a dataset: a re-run with equal values is "the same dataset".
IDENTITY_KEYS = ('tool', 'tokenizer', 'policy', 'seq_len', 'dtype', 'pack', 'columns', 'arguments', 'inputs')


def tool_version() -> str:
    """The installed version of this project (``rlp-pretrain``), or ``unknown``."""
    try:
        return version('rlp-pretrain')
    except PackageNotFoundError:
        return 'unknown'


def hash_file(path: str, block: int = 1 << 23) -> str:
    """``xxh64:<hex>`` of a file's bytes (same digest as ``xxh64sum``)."""
    h = xxhash.xxh64()
    with open(path, 'rb') as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return 'xxh64:' + h.hexdigest()


def combine_hashes(named: list[tuple[str, str]]) -> str:
    """One hash for several ``(name, hash)`` pairs, order-sensitive."""
    if len(named) == 1:
        return named[0][1]
    h = xxhash.xxh64()
    for name, digest in named:
        h.update(f'{name}\0{digest}\n'.encode())
    return 'xxh64:' + h.hexdigest()


def relative_name(path: str, base: str) -> str:
    """A file's name relative to the input that named it (keeps manifests free of machine-specific prefixes)."""
    try:
        rel = os.path.relpath(path, base if os.path.isdir(base) else os.path.dirname(base) or '.')
    except ValueError:
        rel = os.path.basename(path)
    return rel if not rel.startswith('..') else os.path.basename(path)


def build_manifest(
    *,
    tokenizer: dict,
    policy: dict,
    seq_len: int,
    dtype: str,
    pack: str,
    columns: dict,
    counts: dict,
    inputs: list[dict],
    arguments: dict,
) -> dict:
    """Assemble the manifest dict (key order fixed, so the JSON is byte-stable)."""
    return {
        'format': FORMAT,
        'tool': {'name': 'rlp-data', 'version': tool_version()},
        'tokenizer': tokenizer,
        'policy': policy,
        'seq_len': seq_len,
        'dtype': dtype,
        'pack': pack,
        'columns': columns,
        'doc_starts': 'segment starts: 0, then every position where a new document begins inside the sample; '
        'segment_ids[t] = count(doc_starts <= t) - 1',
        'counts': counts,
        'inputs': inputs,
        'arguments': arguments,
    }


def same_dataset(a: dict, b: dict) -> list[str]:
    """Keys of :data:`IDENTITY_KEYS` whose values differ between two manifests (empty: same dataset)."""
    return [k for k in IDENTITY_KEYS if a.get(k) != b.get(k)]
