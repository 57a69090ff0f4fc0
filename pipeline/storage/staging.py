"""The staging folder: per-group token streams, done markers and packed parts, all resumable.

Layout under the staging root (``OUT/.rlp-data`` for a local output, ``--staging`` for a remote one)::

    state.json                   fingerprint of the run (arguments + input identities); a resume must match it
    lock                         held (``flock``) by the one run using this folder
    hashes.json                  input file hashes, cached by (path, size, mtime)
    inputs/<hash>/<name>         s3:// inputs downloaded once
    tokens/g000007.tok           phase 1: the group's documents as one token stream (output dtype, raw)
    tokens/g000007.len           phase 1: per-document token counts (int64, raw)
    tokens/g000007.done.json     phase 1 marker: counts and content hash; written last, atomically
    parts/part_000007/           phase 2: MDS shards of global samples [7*S, 8*S), S samples per part
    parts/part_000007.done.json  phase 2 marker (its shard entries); written last, atomically

A file is trusted only when its marker exists; anything else is deleted and redone on resume. Markers are renamed
into place (``os.replace``), so a SIGKILL leaves either no marker or a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

# fcntl is imported inside ``lock_staging``: it exists on POSIX systems only.
__all__ = ['Staging', 'GroupTokenWriter', 'TokenStream', 'lock_staging', 'write_json_atomic', 'read_json']


def write_json_atomic(path: Path, obj, indent: int | None = None) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename (deterministic key order as given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w') as fh:
        json.dump(obj, fh, indent=indent)
        fh.write('\n')
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path):
    """Load a JSON file, or None when it does not exist."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def lock_staging(root: Path):
    """Hold an exclusive lock on the staging folder for this run (released by the kernel when the process dies)."""
    import fcntl

    fh = open(root / 'lock', 'w')
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise DataError(
            f'another rlp-data run is using the staging folder {str(root)!r}; rule: one run per output '
            'at a time; fix: wait for it to finish or stop it'
        ) from None
    return fh


class Staging:
    """Paths and markers of one staging folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tokens = self.root / 'tokens'
        self.parts = self.root / 'parts'

    def group_files(self, index: int) -> tuple[Path, Path, Path]:
        stem = self.tokens / f'g{index:06d}'
        return stem.with_suffix('.tok'), stem.with_suffix('.len'), stem.with_suffix('.done.json')

    def part_name(self, index: int) -> str:
        return f'part_{index:06d}'

    def part_dir(self, index: int) -> Path:
        return self.parts / self.part_name(index)

    def part_marker(self, index: int) -> Path:
        return self.parts / f'{self.part_name(index)}.done.json'

    def group_marker(self, index: int):
        return read_json(self.group_files(index)[2])

    def clear_part(self, index: int) -> None:
        shutil.rmtree(self.part_dir(index), ignore_errors=True)


class GroupTokenWriter:
    """Append token arrays and document lengths of one group to its raw files (phase 1)."""

    def __init__(self, staging: Staging, index: int, dtype: str):
        self.tok_path, self.len_path, self.marker = staging.group_files(index)
        self.tok_path.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self._tok = open(self.tok_path, 'wb')
        self._len = open(self.len_path, 'wb')

    def append(self, tokens: np.ndarray, lengths: list[int]) -> None:
        self._tok.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._len.write(np.asarray(lengths, dtype=np.int64).tobytes())

    def finish(self, marker: dict) -> None:
        for fh in (self._tok, self._len):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        write_json_atomic(self.marker, marker)


class TokenStream:
    """The concatenation of all groups' token streams, addressed by global offset (phase 2 reads)."""

    def __init__(self, staging: Staging, token_counts: list[int], dtype: str):
        self.staging = staging
        self.dtype = np.dtype(dtype)
        self.counts = token_counts
        self.offsets = np.concatenate([[0], np.cumsum(token_counts, dtype=np.int64)]).astype(np.int64)
        self.total = int(self.offsets[-1])

    def _overlapping(self, a: int, b: int):
        g = int(np.searchsorted(self.offsets, a, side='right')) - 1
        while g < len(self.counts) and self.offsets[g] < b:
            if self.counts[g]:
                yield g
            g += 1

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens at global offsets [a, b)."""
        pieces = []
        for g in self._overlapping(a, b):
            lo = max(a, int(self.offsets[g])) - int(self.offsets[g])
            hi = min(b, int(self.offsets[g + 1])) - int(self.offsets[g])
            path = self.staging.group_files(g)[0]
            pieces.append(np.fromfile(path, dtype=self.dtype, count=hi - lo, offset=lo * self.dtype.itemsize))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

    def doc_lengths(self, g: int) -> np.ndarray:
        """Per-document token counts of group g."""
        return np.fromfile(self.staging.group_files(g)[1], dtype=np.int64)

    def doc_offsets(self, a: int, b: int) -> np.ndarray:
        """Sorted global offsets of the document starts inside [a, b)."""
        out = []
        for g in self._overlapping(a, b):
            lengths = self.doc_lengths(g)
            starts = int(self.offsets[g]) + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            out.append(starts[(starts >= a) & (starts < b)])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
