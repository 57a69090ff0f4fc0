"""What one unit of input is: a :class:`Piece` (a readable range of one file or dataset) and a :class:`Group`.

A *group* is the unit of parallel work and of resume of ``rlp-data prepare``; its pieces are read in order. The
expander (:mod:`pipeline.inputs.expand`) builds groups, the readers (:mod:`pipeline.inputs.readers`) read them.
Also here: the table of supported file extensions and the kind of reader each one gets.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ['FILE_KINDS', 'SUPPORTED', 'Group', 'Piece', 'kind_of']

FILE_KINDS = {
    '.jsonl': 'jsonl',
    '.ndjson': 'jsonl',
    '.json': 'json',
    '.txt': 'txt',
    '.parquet': 'parquet',
    '.tar': 'wds',
    '.tgz': 'wds',
    '.tar.gz': 'wds',
}
SUPPORTED = ', '.join(sorted(FILE_KINDS))  # for error messages


def kind_of(path: str) -> str | None:
    """The reader kind of a file name by its extension (``.tar.gz`` before ``.gz``), or None when unsupported."""
    name = path.lower()
    for ext in ('.tar.gz',) + tuple(FILE_KINDS):
        if name.endswith(ext):
            return FILE_KINDS[ext]
    return None


@dataclass(frozen=True)
class Piece:
    """A readable unit: ``kind`` in jsonl|json|txt|parquet|wds|disk|hf, a local path (or HF name), a range.

    ``[start, stop)`` is a byte range (jsonl), row-group range (parquet), row range (disk) or, for hf, shard index
    ``start`` of ``stop`` shards; ``stop = -1`` means to the end.
    """

    kind: str
    path: str
    start: int = 0
    stop: int = -1
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Group:
    """One unit of work and of resume: pieces read in order (several only when small whole files are merged)."""

    index: int
    input_index: int
    pieces: tuple[Piece, ...]
