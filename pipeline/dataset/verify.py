"""``rlp-data verify PATH``: check a prepared dataset end to end; any problem means a non-zero exit.

Checks, per shard: the file exists, its size and xxh64 match ``index.json`` (compressed and raw bytes), the
columns and encodings match the manifest's schema, and the sample count matches. A decompressed copy
(``shard.*.mds``) found beside a compressed shard, as streaming leaves one when training reads a folder in place,
must match the raw size and xxh64 too: training reads the copy, not the compressed file. Per sample: ``tokens`` has the
manifest dtype, length exactly ``seq_len`` (concat) or 1..seq_len (none), every id < the tokenizer's vocab size;
``doc_starts`` is int32, starts with 0, strictly increasing, inside [0, len(tokens)). Totals: samples and
shards match the manifest's counts.

A dataset that another writer produced (llm-foundry's converters: a ``tokens`` column, no ``doc_starts``, no
``manifest.json``) is checked against ``index.json`` alone: sizes, the hashes it records (llm-foundry records none
by default, which verify says), decompression, sample counts, and ``tokens`` as non-empty, non-negative integer
arrays (or raw bytes). An output of ``rlp-data prepare`` without its manifest is incomplete and fails.
"""

from __future__ import annotations

import numpy as np
import xxhash
from streaming.base.hashing import get_hash

from pipeline.dataset.files import DatasetFiles
from pipeline.dataset.shards import decode_shard, decompress
from pipeline.errors import DataError

__all__ = ['verify_dataset']

OUR_COLUMNS = ('tokens', 'doc_starts')  # every rlp-data output has both


def _check_foreign_sample(s: dict, where: str, problems: list[str]) -> None:
    """A sample of a dataset without our manifest: a ``tokens`` column of integer ids (or raw bytes)."""
    tokens = s.get('tokens')
    if tokens is None:
        problems.append(f'{where}: no tokens column (columns {sorted(s)}); training needs one')
    elif isinstance(tokens, bytes | bytearray):
        if not tokens:
            problems.append(f'{where}: empty tokens bytes')
    elif not isinstance(tokens, np.ndarray) or tokens.dtype.kind not in 'iu' or tokens.ndim != 1:
        problems.append(f'{where}: tokens is {type(tokens).__name__} {getattr(tokens, "dtype", "")}, expected 1-D ids')
    elif not len(tokens) or int(tokens.min()) < 0:
        problems.append(f'{where}: tokens {tokens.tolist()[:8]} must be non-empty, non-negative ids')


def _hash_matches(data: bytes, info: dict) -> bool:
    """Size and every hash ``index.json`` records for these bytes (xxh64 or any algorithm streaming knows)."""
    if len(data) != info['bytes']:
        return False
    for algo, digest in (info.get('hashes') or {}).items():
        actual = xxhash.xxh64(data).hexdigest() if algo == 'xxh64' else get_hash(algo, data)
        if actual != digest:
            return False
    return True


def _check_sample(s: dict, m: dict, where: str, problems: list[str]) -> None:
    tokens, starts = s['tokens'], s['doc_starts']
    L, vocab = m['seq_len'], m['tokenizer']['vocab_size']
    if tokens.dtype != np.dtype(m['dtype']):
        problems.append(f'{where}: tokens dtype {tokens.dtype}, manifest says {m["dtype"]}')
    n = len(tokens)
    if (m['pack'] == 'concat' and n != L) or not 1 <= n <= L:
        problems.append(f'{where}: {n} tokens, expected {"exactly" if m["pack"] == "concat" else "1 to"} {L}')
    if n and int(tokens.max()) >= vocab:
        problems.append(f'{where}: token id {int(tokens.max())} >= vocab size {vocab}')
    if starts.dtype != np.int32:
        problems.append(f'{where}: doc_starts dtype {starts.dtype}, expected int32')
    if not len(starts) or starts[0] != 0 or starts.max() >= n or np.any(np.diff(starts) <= 0):
        problems.append(
            f'{where}: doc_starts {starts.tolist()[:8]} must start at 0 and increase strictly inside ' f'[0, {n})'
        )


def _check_copy(files: DatasetFiles, raw_info: dict, zip_name: str, problems: list[str]) -> None:
    """A decompressed copy beside ``zip_name`` must equal the raw bytes recorded in ``index.json``."""
    name = raw_info['basename']
    data = files.local(name).read_bytes()
    if len(data) != raw_info['bytes'] or xxhash.xxh64(data).hexdigest() != raw_info['hashes'].get('xxh64'):
        problems.append(
            f'{name}: decompressed copy differs from index.json (size/xxh64) and training would read it; fix: '
            f'delete it (training rebuilds it from {zip_name})'
        )


def _checked(info: dict) -> str:
    """What :func:`_hash_matches` compares, for messages: ``size/xxh64``, or ``size`` alone."""
    return '/'.join(['size', *(info.get('hashes') or {})])


def _check_shard(files: DatasetFiles, entry: dict, m: dict | None, problems: list[str]) -> int:
    """Check one shard of ``index.json``; returns its decoded sample count (0 when it could not be decoded)."""
    info = entry.get('zip_data') or entry['raw_data']
    name = info['basename']
    if entry.get('zip_data') and files.exists(entry['raw_data']['basename']):
        _check_copy(files, entry['raw_data'], name, problems)
    if m is not None:
        cols = sorted(zip(entry.get('column_names', []), entry.get('column_encodings', [])))
        expected_cols = sorted(m['columns'].items())
        if cols != expected_cols:
            problems.append(f'{name}: columns {cols} differ from the manifest schema {expected_cols}')
            return 0
        if 'xxh64' not in entry.get('hashes', []):
            problems.append(f'{name}: no xxh64 hash recorded in index.json')
            return 0
    if not files.exists(name):
        problems.append(f'{name}: missing')
        return 0
    data = files.local(name).read_bytes()
    if not _hash_matches(data, info):
        problems.append(f'{name}: {_checked(info)} differ from index.json (corrupt or truncated shard)')
        return 0
    try:
        raw = decompress(entry, data)
    except Exception as exc:
        problems.append(f'{name}: cannot decompress ({exc})')
        return 0
    if not _hash_matches(raw, entry['raw_data']):
        problems.append(f'{name}: decompressed {_checked(entry["raw_data"])} differ from index.json')
        return 0
    n = 0
    for k, sample in enumerate(decode_shard(entry, raw)):
        if m is None:
            _check_foreign_sample(sample, f'{name} sample {k}', problems)
        else:
            _check_sample(sample, m, f'{name} sample {k}', problems)
        n += 1
    if n != entry['samples']:
        problems.append(f'{name}: {n} samples decoded, index.json says {entry["samples"]}')
    return n


def verify_dataset(path: str, log=print) -> int:
    """Verify ``path``; print the problems; return the number of problems (0: the dataset is sound)."""
    problems: list[str] = []
    with DatasetFiles(path) as files:
        index = files.json('index.json')
        shards = index.get('shards', [])
        ours = any(set(OUR_COLUMNS) <= set(e.get('column_names', [])) for e in shards)
        m = files.json('manifest.json') if ours or files.exists('manifest.json') else None
        copies = sum(bool(e.get('zip_data')) and files.exists(e['raw_data']['basename']) for e in shards)
        samples = sum(_check_shard(files, entry, m, problems) for entry in shards)
        if m is not None:
            counts = m['counts']
            if not problems and samples != counts['samples']:
                problems.append(f'total samples {samples} != manifest counts.samples {counts["samples"]}')
            if len(shards) != counts['shards']:
                problems.append(f'{len(shards)} shards in index.json, manifest says {counts["shards"]}')
    for p in problems[:50]:
        log(f'  problem: {p}')
    if problems and all('decompressed copy differs' in p for p in problems):
        raise DataError(
            f'verify found {len(problems)} damaged decompressed shard cop(ies) in {path} (listed above); the '
            'compressed shards are sound; fix: delete the listed shard.*.mds files'
        )
    if problems:
        raise DataError(
            f'verify found {len(problems)} problem(s) in {path} (listed above); the dataset is corrupt or '
            'incomplete; fix: prepare it again (rlp-data prepare ... --overwrite)'
        )
    what = 'hashes, schema and token range OK'
    if m is None:
        hashed = all((e.get('zip_data') or e['raw_data']).get('hashes') for e in shards)
        what = (
            'no manifest.json (not written by rlp-data: llm-foundry or another MDS writer), checked against '
            'index.json: sizes, '
            + ('hashes' if hashed else 'NO hashes recorded, so corruption that still decodes cannot be detected')
            + ', decoding, sample counts and tokens OK'
        )
    log(
        f'rlp-data: {path} verified: {len(shards)} shards'
        + (f' (and {copies} decompressed copies)' if copies else '')
        + f', {samples:,} samples, {what}'
    )
    return 0
