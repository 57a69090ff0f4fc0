"""``rlp-data verify PATH``: check a prepared dataset end to end; any problem means a non-zero exit.

Checks, per shard: the file exists, its size and xxh64 match ``index.json`` (compressed and raw bytes), the
columns and encodings match the manifest's schema, and the sample count matches. A decompressed copy
(``shard.*.mds``) found beside a compressed shard, as streaming leaves one when training reads a folder in place,
must match the raw size and xxh64 too: training reads the copy, not the compressed file. Per sample: ``tokens`` has the
manifest dtype, length exactly ``seq_len`` (concat) or 1..seq_len (none), every id < the tokenizer's vocab size;
``doc_starts`` is int32, starts with 0, strictly increasing, inside [0, len(tokens)). Totals: samples and
shards match the manifest's counts.
"""

from __future__ import annotations

import numpy as np
import xxhash

from pipeline.dataset.files import DatasetFiles
from pipeline.dataset.shards import decode_shard, decompress
from pipeline.errors import DataError

__all__ = ['verify_dataset']


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


def verify_dataset(path: str, log=print) -> int:
    """Verify ``path``; print the problems; return the number of problems (0: the dataset is sound)."""
    problems: list[str] = []
    with DatasetFiles(path) as files:
        m = files.json('manifest.json')
        index = files.json('index.json')
        expected_cols = sorted(m['columns'].items())
        samples = copies = 0
        for _i, entry in enumerate(index.get('shards', [])):
            info = entry.get('zip_data') or entry['raw_data']
            name = info['basename']
            if entry.get('zip_data') and files.exists(entry['raw_data']['basename']):
                copies += 1
                _check_copy(files, entry['raw_data'], name, problems)
            cols = sorted(zip(entry.get('column_names', []), entry.get('column_encodings', [])))
            if cols != expected_cols:
                problems.append(f'{name}: columns {cols} differ from the manifest schema {expected_cols}')
                continue
            if 'xxh64' not in entry.get('hashes', []):
                problems.append(f'{name}: no xxh64 hash recorded in index.json')
                continue
            if not files.exists(name):
                problems.append(f'{name}: missing')
                continue
            data = files.local(name).read_bytes()
            if len(data) != info['bytes'] or xxhash.xxh64(data).hexdigest() != info['hashes']['xxh64']:
                problems.append(f'{name}: size/xxh64 differ from index.json (corrupt or truncated shard)')
                continue
            try:
                raw = decompress(entry, data)
            except Exception as exc:
                problems.append(f'{name}: cannot decompress ({exc})')
                continue
            raw_info = entry['raw_data']
            if len(raw) != raw_info['bytes'] or xxhash.xxh64(raw).hexdigest() != raw_info['hashes']['xxh64']:
                problems.append(f'{name}: decompressed size/xxh64 differ from index.json')
                continue
            n = 0
            for k, sample in enumerate(decode_shard(entry, raw)):
                _check_sample(sample, m, f'{name} sample {k}', problems)
                n += 1
            if n != entry['samples']:
                problems.append(f'{name}: {n} samples decoded, index.json says {entry["samples"]}')
            samples += n
        counts = m['counts']
        if not problems and samples != counts['samples']:
            problems.append(f'total samples {samples} != manifest counts.samples {counts["samples"]}')
        if len(index.get('shards', [])) != counts['shards']:
            problems.append(f'{len(index.get("shards", []))} shards in index.json, manifest says {counts["shards"]}')
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
    log(
        f'rlp-data: {path} verified: {len(index["shards"])} shards'
        + (f' (and {copies} decompressed copies)' if copies else '')
        + f', {samples:,} samples, hashes, schema and token range OK'
    )
    return 0
