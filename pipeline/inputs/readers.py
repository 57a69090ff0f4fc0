"""Document readers, one per input kind: each yields ``(text, None)`` per document or ``(None, reason)`` per bad
record of one :class:`~pipeline.inputs.groups.Group` (its pieces in order). Also the loaders of ``save_to_disk``
folders and streaming HF datasets, which the expander uses to count rows and shards.

Rules shared by all readers: the text must be a string (anything else is a bad record); a text field missing from
a group's first good record is a fatal :class:`DataError` that lists the available fields (it is almost certainly
the wrong ``--text-field``), later misses are bad records. The caller applies ``--on-bad-record``.
"""

from __future__ import annotations

import json
from typing import Iterator

from pipeline.errors import DataError, one_line
from pipeline.inputs.groups import Group, Piece

# Each reader imports its input kind's library (datasets, pyarrow, webdataset) itself: a run, and each worker
# process, loads only the libraries of the kinds it reads, and none of them is needed for plain text or JSON.
__all__ = ['iter_records', 'load_disk', 'load_hf']


def load_disk(path: str, split: str | None, source: str):
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:
        raise DataError(
            f'input {source!r}: cannot load the saved dataset ({one_line(exc)}); fix: check the folder'
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        split = split or 'train'
        if split not in ds:
            raise DataError(
                f'input {source!r}: split {split!r} not found; available: {sorted(ds)}; fix: add ' f'?split=NAME'
            )
        ds = ds[split]
    return ds


def _field_error(field: str, where: str, available) -> DataError:
    return DataError(
        f'text field {field!r} not found in {where}; available fields: {sorted(available)}; fix: pass '
        '--text-field with one of them'
    )


def _check_text(value, field: str) -> tuple[str | None, str | None]:
    if isinstance(value, str):
        return value, None
    return None, f'field {field!r} is {type(value).__name__}, not a string'


def iter_records(group: Group, text_field: str) -> Iterator[tuple[str | None, str | None]]:
    """Yield ``(text, None)`` per document or ``(None, reason)`` per bad record of one group, in order."""
    for piece in group.pieces:
        reader = {
            'jsonl': _iter_jsonl,
            'json': _iter_json_array,
            'txt': _iter_txt,
            'parquet': _iter_parquet,
            'wds': _iter_wds,
            'disk': _iter_disk,
            'hf': _iter_hf,
        }[piece.kind]
        yield from reader(piece, text_field)


def _iter_jsonl(piece: Piece, field: str):
    seen_good = False
    with open(piece.path, 'rb') as fh:
        pos = piece.start
        if pos > 0:  # start at the first line that begins at or after `start`
            fh.seek(pos - 1)
            pos += len(fh.readline()) - 1
        stop = piece.stop if piece.stop >= 0 else float('inf')
        while pos < stop:
            line = fh.readline()
            if not line:
                break
            where = f'{piece.path} at byte {pos}'
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


def _iter_json_array(piece: Piece, field: str):
    try:
        with open(piece.path, 'rb') as fh:
            data = json.loads(fh.read().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f'input {piece.path!r} is not a valid UTF-8 JSON array ({one_line(exc)}); rule: .json files '
            'hold one array of objects or JSON lines; fix: repair the file'
        ) from None
    for k, rec in enumerate(data):
        where = f'{piece.path} item {k}'
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


def _iter_txt(piece: Piece, field: str):
    with open(piece.path, 'rb') as fh:
        data = fh.read()
    try:
        yield data.decode('utf-8'), None
    except UnicodeDecodeError as exc:
        yield None, f'{piece.path}: not valid UTF-8 (byte {exc.start})'


def _iter_parquet(piece: Piece, field: str):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(piece.path)
    if field not in pf.schema_arrow.names:
        raise _field_error(field, piece.path, pf.schema_arrow.names)
    row_groups = range(pf.metadata.num_row_groups) if piece.stop < 0 else range(piece.start, piece.stop)
    for rg in row_groups:
        for k, value in enumerate(pf.read_row_group(rg, columns=[field]).column(0).to_pylist()):
            text, err = _check_text(value, field)
            yield (text, None) if err is None else (None, f'{piece.path} row group {rg} row {k}: {err}')


def _iter_disk(piece: Piece, field: str):
    ds = load_disk(piece.path, dict(piece.options).get('split'), piece.path)
    if field not in ds.column_names:
        raise _field_error(field, piece.path, ds.column_names)
    stop = len(ds) if piece.stop < 0 else piece.stop
    for a in range(piece.start, stop, 1000):
        for k, value in enumerate(ds[a : min(a + 1000, stop)][field]):
            text, err = _check_text(value, field)
            yield (text, None) if err is None else (None, f'{piece.path} row {a + k}: {err}')


def load_hf(name: str, opts: dict):
    import datasets

    try:
        return datasets.load_dataset(
            name,
            opts.get('name'),
            split=opts.get('split', 'train'),
            streaming=True,
            revision=opts.get('revision'),
            data_files=opts.get('data_files'),
        )
    except Exception as exc:
        raise DataError(
            f'cannot load HF dataset {name!r} ({one_line(exc)}); rule: hf:NAME must be loadable '
            'with datasets.load_dataset(NAME, streaming=True); fix: check the name/split and network '
            'access, or pass a save_to_disk folder'
        ) from None


def _iter_hf(piece: Piece, field: str):
    ds = load_hf(piece.path, dict(piece.options))
    if piece.stop > 1:  # shard `start` of `stop` (contiguous: one data file per shard)
        ds = ds.shard(num_shards=piece.stop, index=piece.start)
    try:
        it = iter(ds)
        first = next(it, None)
    except Exception as exc:
        raise DataError(
            f'cannot read HF dataset {piece.path!r} ({one_line(exc)}); fix: check the dataset files and '
            'network access'
        ) from None
    if first is None:
        return
    if field not in first:
        raise _field_error(field, f'hf:{piece.path}', first)
    for k, rec in enumerate(_chain_first(first, it)):
        text, err = _check_text(rec.get(field), field)
        yield (text, None) if err is None else (None, f'hf:{piece.path} record {k}: {err}')


def _chain_first(first, rest):
    yield first
    yield from rest


def _iter_wds(piece: Piece, field: str):
    import webdataset as wds

    exts = [field, 'txt'] if field == 'text' else [field]
    try:
        samples = wds.WebDataset(piece.path, shardshuffle=False, nodesplitter=None, empty_check=False)
        for k, sample in enumerate(samples):
            where = f'{piece.path} sample {sample.get("__key__", k)!r}'
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
    except Exception as exc:
        raise DataError(
            f'cannot read webdataset shard {piece.path!r} ({one_line(exc)}); fix: check the tar file'
        ) from None
