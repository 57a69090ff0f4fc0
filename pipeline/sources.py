"""Inputs of ``rlp-data prepare``: expand what the user typed into ordered groups, then read documents.

A *group* is the unit of parallel work and of resume: one per input file, per dataset, per webdataset tar.
Large jsonl files and big parquet / ``save_to_disk`` datasets are cut into fixed-size chunks (``chunk_bytes``,
``chunk_rows``; line- or row-group-aligned), never by worker count, so the list of groups is a pure function of the
inputs and the arguments. Documents are read in file order inside a group, groups in the order given on the
command line (folders and globs sorted by name), so the concatenated document stream is deterministic.

Input syntax (mixable in one call):
  * local ``.jsonl``/``.ndjson``, ``.json`` (a JSON array, or JSON lines), ``.txt`` (one document per file),
    ``.parquet``, webdataset ``.tar``/``.tar.gz``/``.tgz`` files; folders (recursive, sorted, hidden entries
    ignored) and globs; brace lists ``shard-{000..009}.tar``;
  * a folder written by ``datasets.save_to_disk`` (``PATH`` or ``PATH?split=train`` for a DatasetDict);
  * a HF dataset loaded with ``datasets.load_dataset(..., streaming=True)``: ``hf:NAME`` with optional
    ``?name=CONFIG&split=SPLIT&revision=REV&data_files=GLOB`` (``NAME`` may be a hub id or a local folder);
  * the same file formats on ``s3://`` (objects or prefixes; downloaded once into the staging folder).

``iter_records`` yields ``(text, None)`` for a document or ``(None, reason)`` for a bad record; the caller
applies the ``--on-bad-record`` policy. A text field missing from a group's first good record is always fatal
(it is almost certainly the wrong ``--text-field``), later misses count as bad records.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline import remote
from pipeline.errors import DataError, one_line

__all__ = ['Group', 'InputSpec', 'expand_inputs', 'iter_records', 'FILE_KINDS']

FILE_KINDS = {'.jsonl': 'jsonl', '.ndjson': 'jsonl', '.json': 'json', '.txt': 'txt', '.parquet': 'parquet',
              '.tar': 'wds', '.tgz': 'wds', '.tar.gz': 'wds'}
_SUPPORTED = ', '.join(sorted(FILE_KINDS))


@dataclass(frozen=True)
class Group:
    """One unit of work: ``kind`` in jsonl|json|txt|parquet|wds|disk|hf, a local path (or HF name), a range."""

    index: int
    input_index: int
    kind: str
    path: str
    start: int = 0
    stop: int = -1
    options: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        rng = '' if self.stop < 0 and self.start == 0 else f' [{self.start}:{self.stop}]'
        return f'{self.path}{rng}'


@dataclass
class InputSpec:
    """One ``--input`` value after expansion: the files it named (for hashing) and its groups."""

    source: str
    kind: str
    files: list[str]
    groups: list[Group]


def _kind_of(path: str) -> str | None:
    name = path.lower()
    for ext in ('.tar.gz',) + tuple(FILE_KINDS):
        if name.endswith(ext):
            return FILE_KINDS[ext]
    return None


def _parse_query(src: str) -> tuple[str, dict[str, str]]:
    base, _, query = src.partition('?')
    opts = dict(urllib.parse.parse_qsl(query, keep_blank_values=True)) if query else {}
    return base, opts


def _brace_expand(src: str) -> list[str]:
    if '{' not in src:
        return [src]
    import braceexpand
    return list(braceexpand.braceexpand(src))


_EXCLUDE: set[str] = set()  # absolute folders never read as inputs (the output folder), set by expand_inputs


def _local_files(pattern: str, source: str) -> list[str]:
    """Expand a local path, folder or glob into sorted supported files."""
    if any(ch in pattern for ch in '*?['):
        matches = sorted(globlib.glob(pattern, recursive=True))
        if not matches:
            raise DataError(f'input {source!r}: the glob {pattern!r} matches nothing; rule: every input must name '
                            'existing data; fix: check the pattern')
        out: list[str] = []
        for m in matches:
            out.extend(_local_files(m, source) if os.path.isdir(m) else [m])
        return [m for m in out if _kind_of(m)] or _no_supported(source)
    path = Path(pattern)
    if not path.exists():
        raise DataError(f'input {source!r} does not exist; rule: every input must be an existing file, folder, glob, '
                        's3:// URI or hf:NAME; fix: check the path (use hf:NAME for a Hugging Face dataset)')
    if path.is_dir():
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith('.')
                             and os.path.abspath(os.path.join(root, d)) not in _EXCLUDE)
            files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith('.') and _kind_of(n))
        return files or _no_supported(source)
    if not os.access(path, os.R_OK):
        raise DataError(f'input {source!r} is not readable (permission denied); fix: check its permissions')
    if _kind_of(str(path)) is None:
        raise DataError(f'input {source!r} has an unsupported extension; rule: files must end in one of {_SUPPORTED}; '
                        'fix: rename it or convert it')
    return [str(path)]


def _no_supported(source: str) -> list[str]:
    raise DataError(f'input {source!r} contains no supported files; rule: folders are searched for {_SUPPORTED}; '
                    'fix: point at the data files')


def _is_saved_dataset(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / 'state.json').exists() or (p / 'dataset_dict.json').exists())


def _remote_files(src: str, staging: Path) -> list[str]:
    """List an s3:// object or prefix (with optional * globs), download each supported object to staging."""
    import fnmatch
    import hashlib

    scheme, bucket, key = remote.split_uri(src)
    if scheme != 's3':
        raise DataError(f'input {src!r}: remote inputs are supported on s3:// only; fix: copy the data locally '
                        'or to an S3-compatible store')
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
    chosen = [n for n in chosen if _kind_of(n)]
    if not chosen:
        raise DataError(f'input {src!r} does not exist or holds no supported files ({_SUPPORTED}); fix: check the '
                        'bucket and key')
    out = []
    for name in chosen:
        uri = f's3://{bucket}/{name}'
        digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
        local = staging / 'inputs' / digest / os.path.basename(name)
        size = listing.get(name[len(parent) + 1:] if parent else name, -1)
        if not (local.exists() and local.stat().st_size == size):
            remote.download(uri, local)
        out.append(str(local))
    return out


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    if total <= size:
        return [(0, -1)]
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def expand_inputs(sources: list[str], staging: Path, chunk_bytes: int, chunk_rows: int,
                  exclude: tuple[str, ...] = ()) -> list[InputSpec]:
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
                raise DataError(f'input {source!r}: unknown option(s) {sorted(unknown)}; rule: hf: inputs accept '
                                'name, split, revision, data_files; fix: remove them')
            kind = 'hf'
            n_shards = max(1, int(getattr(_load_hf(name, opts), 'n_shards', 1) or 1))
            # one group per dataset shard (data file); their concatenation is the dataset's own order
            raw_groups.extend(('hf', name, k, n_shards, tuple(sorted(opts.items()))) for k in range(n_shards))
        elif _is_saved_dataset(base):
            kind = 'disk'
            ds = _load_disk(base, opts.get('split'), source)
            files = sorted(str(p) for p in Path(base).rglob('*') if p.is_file())
            for a, b in _chunks(len(ds), chunk_rows):
                raw_groups.append(('disk', base, a, b, tuple(sorted(opts.items()))))
        else:
            if opts:
                raise DataError(f'input {source!r}: options after "?" are only for hf: and save_to_disk inputs; '
                                'fix: remove them')
            for part in _brace_expand(base):
                if remote.is_remote(part):
                    files.extend(_remote_files(part, staging))
                else:
                    files.extend(_local_files(part, source))
            kind = 'files'
            for f in files:
                fkind = _kind_of(f)
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
        for gkind, path, a, b, options in raw_groups:
            groups.append(Group(counter, i, gkind, path, a, b, options))
            counter += 1
        specs.append(InputSpec(source=source, kind=kind, files=files, groups=groups))
    return specs


def _is_json_array(path: str) -> bool:
    with open(path, 'rb') as fh:
        head = fh.read(4096).lstrip()
    return head.startswith(b'[')


def _parquet_chunks(path: str, chunk_bytes: int) -> list[tuple[int, int]]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # noqa: BLE001
        raise DataError(f'input {path!r} is not a readable parquet file ({one_line(exc)}); fix: check the file') from None
    if os.path.getsize(path) <= chunk_bytes or meta.num_row_groups <= 1:
        return [(0, -1)]
    return [(g, g + 1) for g in range(meta.num_row_groups)]


def _load_disk(path: str, split: str | None, source: str):
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f'input {source!r}: cannot load the saved dataset ({one_line(exc)}); fix: check the folder') from None
    if isinstance(ds, datasets.DatasetDict):
        split = split or 'train'
        if split not in ds:
            raise DataError(f'input {source!r}: split {split!r} not found; available: {sorted(ds)}; fix: add '
                            f'?split=NAME')
        ds = ds[split]
    return ds


def _field_error(field: str, where: str, available) -> DataError:
    return DataError(f'text field {field!r} not found in {where}; available fields: {sorted(available)}; fix: pass '
                     '--text-field with one of them')


def _check_text(value, field: str) -> tuple[str | None, str | None]:
    if isinstance(value, str):
        return value, None
    return None, f'field {field!r} is {type(value).__name__}, not a string'


def iter_records(group: Group, text_field: str) -> Iterator[tuple[str | None, str | None]]:
    """Yield ``(text, None)`` per document or ``(None, reason)`` per bad record of one group, in order."""
    reader = {'jsonl': _iter_jsonl, 'json': _iter_json_array, 'txt': _iter_txt, 'parquet': _iter_parquet,
              'wds': _iter_wds, 'disk': _iter_disk, 'hf': _iter_hf}[group.kind]
    yield from reader(group, text_field)


def _iter_jsonl(group: Group, field: str):
    seen_good = False
    with open(group.path, 'rb') as fh:
        pos = group.start
        if pos > 0:  # start at the first line that begins at or after `start`
            fh.seek(pos - 1)
            pos += len(fh.readline()) - 1
        stop = group.stop if group.stop >= 0 else float('inf')
        while pos < stop:
            line = fh.readline()
            if not line:
                break
            where = f'{group.path} at byte {pos}'
            pos += len(line)
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode('utf-8'))
            except UnicodeDecodeError:
                yield None, f'{where}: not valid UTF-8'
                continue
            except json.JSONDecodeError as exc:
                yield None, f'{where}: malformed JSON ({exc.msg})'
                continue
            if not isinstance(rec, dict):
                yield None, f'{where}: a JSON {type(rec).__name__}, not an object'
                continue
            if field not in rec:
                if not seen_good:
                    raise _field_error(field, where, rec)
                yield None, f'{where}: no field {field!r}'
                continue
            seen_good = True
            text, err = _check_text(rec[field], field)
            yield (text, None) if err is None else (None, f'{where}: {err}')


def _iter_json_array(group: Group, field: str):
    try:
        with open(group.path, 'rb') as fh:
            data = json.loads(fh.read().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f'input {group.path!r} is not a valid UTF-8 JSON array ({one_line(exc)}); rule: .json files '
                        'hold one array of objects or JSON lines; fix: repair the file') from None
    for k, rec in enumerate(data):
        where = f'{group.path} item {k}'
        if not isinstance(rec, dict):
            yield None, f'{where}: not an object'
            continue
        if field not in rec:
            if k == 0:
                raise _field_error(field, where, rec)
            yield None, f'{where}: no field {field!r}'
            continue
        text, err = _check_text(rec[field], field)
        yield (text, None) if err is None else (None, f'{where}: {err}')


def _iter_txt(group: Group, field: str):
    with open(group.path, 'rb') as fh:
        data = fh.read()
    try:
        yield data.decode('utf-8'), None
    except UnicodeDecodeError as exc:
        yield None, f'{group.path}: not valid UTF-8 (byte {exc.start})'


def _iter_parquet(group: Group, field: str):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(group.path)
    if field not in pf.schema_arrow.names:
        raise _field_error(field, group.path, pf.schema_arrow.names)
    row_groups = range(pf.metadata.num_row_groups) if group.stop < 0 else range(group.start, group.stop)
    for rg in row_groups:
        for k, value in enumerate(pf.read_row_group(rg, columns=[field]).column(0).to_pylist()):
            text, err = _check_text(value, field)
            yield (text, None) if err is None else (None, f'{group.path} row group {rg} row {k}: {err}')


def _iter_disk(group: Group, field: str):
    ds = _load_disk(group.path, dict(group.options).get('split'), group.path)
    if field not in ds.column_names:
        raise _field_error(field, group.path, ds.column_names)
    stop = len(ds) if group.stop < 0 else group.stop
    for a in range(group.start, stop, 1000):
        for k, value in enumerate(ds[a:min(a + 1000, stop)][field]):
            text, err = _check_text(value, field)
            yield (text, None) if err is None else (None, f'{group.path} row {a + k}: {err}')


def _load_hf(name: str, opts: dict):
    import datasets

    try:
        return datasets.load_dataset(name, opts.get('name'), split=opts.get('split', 'train'), streaming=True,
                                     revision=opts.get('revision'), data_files=opts.get('data_files'))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f'cannot load HF dataset {name!r} ({one_line(exc)}); rule: hf:NAME must be loadable '
                        'with datasets.load_dataset(NAME, streaming=True); fix: check the name/split and network '
                        'access, or pass a save_to_disk folder') from None


def _iter_hf(group: Group, field: str):
    ds = _load_hf(group.path, dict(group.options))
    if group.stop > 1:  # shard `start` of `stop` (contiguous: one data file per shard)
        ds = ds.shard(num_shards=group.stop, index=group.start)
    try:
        it = iter(ds)
        first = next(it, None)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f'cannot read HF dataset {group.path!r} ({one_line(exc)}); fix: check the dataset files and '
                        'network access') from None
    if first is None:
        return
    if field not in first:
        raise _field_error(field, f'hf:{group.path}', first)
    for k, rec in enumerate(_chain_first(first, it)):
        text, err = _check_text(rec.get(field), field)
        yield (text, None) if err is None else (None, f'hf:{group.path} record {k}: {err}')


def _chain_first(first, rest):
    yield first
    yield from rest


def _iter_wds(group: Group, field: str):
    import webdataset as wds

    exts = [field, 'txt'] if field == 'text' else [field]
    try:
        samples = wds.WebDataset(group.path, shardshuffle=False, nodesplitter=None, empty_check=False)
        for k, sample in enumerate(samples):
            where = f'{group.path} sample {sample.get("__key__", k)!r}'
            raw = next((sample[e] for e in exts if e in sample), None)
            if raw is None and 'json' in sample:
                try:
                    rec = json.loads(sample['json'].decode('utf-8'))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    yield None, f'{where}: malformed JSON ({one_line(exc)})'
                    continue
                raw = rec.get(field) if isinstance(rec, dict) else None
                if isinstance(raw, str):
                    yield raw, None
                    continue
            if raw is None:
                if k == 0:
                    members = [e for e in sample if not e.startswith('__')]
                    raise _field_error(field, where, members)
                yield None, f'{where}: no member {"/".join(exts)} or json field {field!r}'
                continue
            try:
                yield raw.decode('utf-8'), None
            except UnicodeDecodeError:
                yield None, f'{where}: not valid UTF-8'
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f'cannot read webdataset shard {group.path!r} ({one_line(exc)}); fix: check the tar file') from None
