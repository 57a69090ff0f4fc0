"""Inputs of ``rlp-data prepare``: expand what the user typed into ordered groups of pieces.

A *group* (:class:`~pipeline.inputs.groups.Group`) is the unit of parallel work and of resume: one per input file,
per webdataset tar, per HF dataset shard (data file), per ``save_to_disk`` dataset; consecutive small whole files of
one input are merged into one group of about ``chunk_bytes``. Large jsonl files and big parquet / ``save_to_disk``
datasets are cut into fixed-size chunks (``chunk_bytes``, ``chunk_rows``; line- or row-group-aligned), never by
worker count, so the list of groups is a pure function of the inputs and the arguments. Documents are read in file
order inside a group, groups in the order given on the command line (folders and globs sorted by name), so the
concatenated document stream is deterministic.

Input syntax (mixable in one call):
  * local ``.jsonl``/``.ndjson``, ``.json`` (a JSON array, or JSON lines), ``.txt`` (one document per file),
    ``.parquet``, webdataset ``.tar``/``.tar.gz``/``.tgz`` files; folders (recursive, sorted, hidden entries
    ignored) and globs; brace lists ``shard-{000..009}.tar``;
  * a folder written by ``datasets.save_to_disk`` (``PATH`` or ``PATH?split=train`` for a DatasetDict);
  * a HF dataset loaded with ``datasets.load_dataset(..., streaming=True)``: ``hf:NAME`` with optional
    ``?name=CONFIG&split=SPLIT&revision=REV&data_files=GLOB`` (``NAME`` may be a hub id or a local folder);
  * the same file formats on ``s3://`` (objects or prefixes; downloaded once into the staging folder by
    :mod:`pipeline.inputs.s3`).

Reading a group's documents is :func:`pipeline.inputs.readers.iter_records`.
"""

from __future__ import annotations

import glob as globlib
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from pipeline.errors import DataError, one_line
from pipeline.inputs.groups import SUPPORTED, Group, Piece, kind_of
from pipeline.inputs.readers import load_disk, load_hf
from pipeline.inputs.s3 import fetch_s3_inputs
from pipeline.storage import remote

# pyarrow loads inside the function that splits a parquet file: only runs with parquet inputs pay for it.
__all__ = ['InputSpec', 'expand_inputs']


@dataclass
class InputSpec:
    """One ``--input`` value after expansion: the files it named (for hashing) and its groups."""

    source: str
    kind: str
    files: list[str]
    groups: list[Group]


def _parse_query(src: str) -> tuple[str, dict[str, str]]:
    base, _, query = src.partition('?')
    opts = dict(urllib.parse.parse_qsl(query, keep_blank_values=True)) if query else {}
    return base, opts


def _brace_expand(src: str) -> list[str]:
    if '{' not in src:
        return [src]
    return list(braceexpand.braceexpand(src))


_EXCLUDE: set[str] = set()  # absolute folders never read as inputs (the output folder), set by expand_inputs


def _local_files(pattern: str, source: str) -> list[str]:
    """Expand a local path, folder or glob into sorted supported files."""
    if any(ch in pattern for ch in '*?['):
        matches = sorted(globlib.glob(pattern, recursive=True))
        if not matches:
            raise DataError(
                f'input {source!r}: the glob {pattern!r} matches nothing; rule: every input must name '
                'existing data; fix: check the pattern'
            )
        out: list[str] = []
        for m in matches:
            out.extend(_local_files(m, source) if os.path.isdir(m) else [m])
        return [m for m in out if kind_of(m)] or _no_supported(source)
    path = Path(pattern)
    if not path.exists():
        raise DataError(
            f'input {source!r} does not exist; rule: every input must be an existing file, folder, glob, '
            's3:// URI or hf:NAME; fix: check the path (use hf:NAME for a Hugging Face dataset)'
        )
    if path.is_dir():
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(
                d for d in dirs if not d.startswith('.') and os.path.abspath(os.path.join(root, d)) not in _EXCLUDE
            )
            files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith('.') and kind_of(n))
        return files or _no_supported(source)
    if not os.access(path, os.R_OK):
        raise DataError(f'input {source!r} is not readable (permission denied); fix: check its permissions')
    if kind_of(str(path)) is None:
        raise DataError(
            f'input {source!r} has an unsupported extension; rule: files must end in one of {SUPPORTED}; '
            'fix: rename it or convert it'
        )
    return [str(path)]


def _no_supported(source: str) -> list[str]:
    raise DataError(
        f'input {source!r} contains no supported files; rule: folders are searched for {SUPPORTED}; '
        'fix: point at the data files'
    )


def _is_saved_dataset(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / 'state.json').exists() or (p / 'dataset_dict.json').exists())


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    if total <= size:
        return [(0, -1)]
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def expand_inputs(
    sources: list[str], staging: Path, chunk_bytes: int, chunk_rows: int, exclude: tuple[str, ...] = ()
) -> list[InputSpec]:
    """Expand ``--input`` values into :class:`InputSpec` s whose groups are numbered in global order.

    Folders in ``exclude`` (the output folder) are skipped when walking input folders.
    """
    _EXCLUDE.clear()
    _EXCLUDE.update(os.path.abspath(e) for e in exclude)
    specs: list[InputSpec] = []
    counter = 0
    for i, source in enumerate(sources):
        base, opts = _parse_query(source)
        raw_groups: list[tuple[str, str, int, int, tuple]] = []
        files: list[str] = []
        if base.startswith('hf:'):
            name = base[3:]
            if not name:
                raise DataError(f'input {source!r}: empty dataset name; fix: write hf:NAME, e.g. hf:allenai/c4?name=en')
            unknown = set(opts) - {'name', 'split', 'revision', 'data_files'}
            if unknown:
                raise DataError(
                    f'input {source!r}: unknown option(s) {sorted(unknown)}; rule: hf: inputs accept '
                    'name, split, revision, data_files; fix: remove them'
                )
            kind = 'hf'
            n_shards = max(1, int(getattr(load_hf(name, opts), 'n_shards', 1) or 1))
            # one group per dataset shard (data file); their concatenation is the dataset's own order
            raw_groups.extend(('hf', name, k, n_shards, tuple(sorted(opts.items()))) for k in range(n_shards))
        elif _is_saved_dataset(base):
            kind = 'disk'
            ds = load_disk(base, opts.get('split'), source)
            files = sorted(str(p) for p in Path(base).rglob('*') if p.is_file())
            for a, b in _chunks(len(ds), chunk_rows):
                raw_groups.append(('disk', base, a, b, tuple(sorted(opts.items()))))
        else:
            if opts:
                raise DataError(
                    f'input {source!r}: options after "?" are only for hf: and save_to_disk inputs; ' 'fix: remove them'
                )
            for part in _brace_expand(base):
                if remote.is_remote(part):
                    files.extend(fetch_s3_inputs(part, staging))
                else:
                    files.extend(_local_files(part, source))
            kind = 'files'
            for f in files:
                fkind = kind_of(f)
                if fkind == 'jsonl' or (fkind == 'json' and not _is_json_array(f)):
                    ranges = _chunks(os.path.getsize(f), chunk_bytes)
                    raw_groups.extend(('jsonl', f, a, b, ()) for a, b in ranges)
                elif fkind == 'parquet':
                    raw_groups.extend(('parquet', f, a, b, ()) for a, b in _parquet_chunks(f, chunk_bytes))
                else:
                    raw_groups.append((fkind, f, 0, -1, ()))
        if kind == 'files':
            kind = '+'.join(sorted({g[0] for g in raw_groups}))
        groups = []
        for pieces in _merge_small(raw_groups, chunk_bytes):
            groups.append(Group(counter, i, tuple(Piece(*p) for p in pieces)))
            counter += 1
        specs.append(InputSpec(source=source, kind=kind, files=files, groups=groups))
    return specs


def _merge_small(raw: list[tuple], chunk_bytes: int) -> list[list[tuple]]:
    """Consecutive whole small files are read by one group until it holds ``chunk_bytes`` (fewer, larger units of
    work for folders of many small files); every other piece is its own group. Depends on sizes only."""
    groups: list[list[tuple]] = []
    current: list[tuple] = []
    size = 0
    for piece in raw:
        kind, path, start, stop = piece[:4]
        whole = kind not in ('hf', 'disk') and start == 0 and stop == -1
        psize = os.path.getsize(path) if whole else chunk_bytes
        if not whole or psize >= chunk_bytes:
            if current:
                groups.append(current)
                current, size = [], 0
            groups.append([piece])
            continue
        current.append(piece)
        size += psize
        if size >= chunk_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def _is_json_array(path: str) -> bool:
    with open(path, 'rb') as fh:
        head = fh.read(4096).lstrip()
    return head.startswith(b'[')


def _parquet_chunks(path: str, chunk_bytes: int) -> list[tuple[int, int]]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:
        raise DataError(
            f'input {path!r} is not a readable parquet file ({one_line(exc)}); fix: check the file'
        ) from None
    if os.path.getsize(path) <= chunk_bytes or meta.num_row_groups <= 1:
        return [(0, -1)]
    return [(g, g + 1) for g in range(meta.num_row_groups)]
