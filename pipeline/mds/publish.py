"""The output side of ``prepare``: what is already at the output, and publishing a finished dataset last.

Rules:
* an output whose ``manifest.json`` has the same fingerprint is complete: nothing to do;
* an output holding anything else (another dataset, foreign files) is refused unless ``--overwrite``, which deletes
  only what ``rlp-data`` writes (``manifest.json``, ``index.json``, ``part_*``, the staging folder) and still
  refuses when foreign files remain;
* an output with our own partial files and a staging folder of the same fingerprint is resumed.

Publishing order: part folders (moved on a local disk, uploaded to an object store), then ``index.json``, then
``manifest.json``. A reader that finds ``manifest.json`` finds everything else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import DataError
from pipeline.storage import remote
from pipeline.storage.staging import read_json, write_json_atomic

__all__ = ['existing_output', 'clear_output', 'publish']

OURS_TOP = ('manifest.json', 'index.json')


def _ours(name: str, staging_name: str) -> bool:
    top = name.split('/', 1)[0]
    return top in OURS_TOP or top.startswith('part_') or top == staging_name or top.endswith('.tmp')


def _listing(out: str) -> dict[str, int]:
    if remote.is_remote(out):
        return remote.list_objects(out)
    root = Path(out)
    if not root.exists():
        return {}
    if not root.is_dir():
        raise DataError(
            f'--out {out!r} is a file; rule: the output is a folder or an object-store prefix; fix: '
            'choose another path'
        )
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.iterdir()}


def _remote_manifest(out: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        local = remote.download(remote.join(out, 'manifest.json'), Path(tmp) / 'manifest.json')
        return json.loads(local.read_text())


def existing_output(out: str, staging: Path, fingerprint: str, overwrite: bool) -> str:
    """Classify the output: ``complete`` (same dataset), ``resume`` or ``fresh``; refuse or clear as the rules say."""
    listing = _listing(out)
    staging_name = staging.name if not remote.is_remote(out) else ''
    if 'manifest.json' in listing:
        old = _remote_manifest(out) if remote.is_remote(out) else read_json(Path(out) / 'manifest.json')
        if (old or {}).get('fingerprint') == fingerprint:
            return 'complete'
        if not overwrite:
            raise DataError(
                f'--out {out!r} already holds a different dataset (its manifest.json has other '
                'arguments, inputs or tokenizer); rule: an output is never silently replaced; fix: pass '
                '--overwrite or choose another --out'
            )
        clear_output(out, staging, listing)
        return 'fresh'
    state = read_json(staging / 'state.json')
    foreign = [n for n in listing if not _ours(n, staging_name)]
    ours = [n for n in listing if _ours(n, staging_name) and n != staging_name]
    if state is not None and state.get('fingerprint') != fingerprint and not overwrite:
        raise DataError(
            f'--out {out!r} holds an unfinished run with different arguments or inputs; rule: a run '
            'resumes only with the same command; fix: repeat the original command, or pass --overwrite'
        )
    if foreign and not overwrite:
        raise DataError(
            f'--out {out!r} is not empty and is not an rlp-data output (found {foreign[:3]}); rule: '
            'prepare writes into an empty folder or prefix; fix: choose another --out or pass --overwrite'
        )
    if foreign:
        raise DataError(
            f'--out {out!r} holds files rlp-data did not write ({foreign[:3]}); --overwrite deletes only '
            'its own files; fix: remove them by hand or choose another --out'
        )
    if state is not None and state.get('fingerprint') == fingerprint:
        return 'resume'
    if ours or state is not None:
        if not overwrite:
            raise DataError(
                f'--out {out!r} holds a partial rlp-data output from another run (no staging state '
                'here); fix: pass --overwrite or choose another --out'
            )
        clear_output(out, staging, listing)
    return 'fresh'


def clear_output(out: str, staging: Path, listing: dict[str, int]) -> None:
    """Delete what rlp-data wrote at ``out`` and the staging folder's work products; used by ``--overwrite``."""
    staging_name = staging.name if not remote.is_remote(out) else ''
    if remote.is_remote(out):
        remote.delete_objects(out, [n for n in listing if _ours(n, staging_name)])
    else:
        for name in listing:
            if _ours(name, staging_name):
                path = Path(out) / name
                if path != staging:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
    # Work products only: downloaded inputs, input hashes and the run lock stay.
    for name in ('tokens', 'parts', 'state.json'):
        path = staging / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def publish(out: str, parts_root: Path, part_names: list[str], index: dict, manifest: dict) -> None:
    """Move/upload the parts, then write ``index.json``, then ``manifest.json`` (the completion mark)."""
    if remote.is_remote(out):
        present = remote.list_objects(out)
        for name in part_names:
            folder = parts_root / name
            if not folder.exists():
                continue
            files = sorted(p.name for p in folder.iterdir() if p.name != 'index.json') + ['index.json']
            todo = [
                f'{name}/{f}' for f in files if present.get(f'{name}/{f}') != (parts_root / name / f).stat().st_size
            ]
            remote.upload_files(parts_root, out, todo)
        tmp = parts_root / '_publish'
        write_json_atomic(tmp / 'index.json', index)
        write_json_atomic(tmp / 'manifest.json', manifest, indent=2)
        remote.upload_files(tmp, out, ['index.json'])
        remote.upload_files(tmp, out, ['manifest.json'])
        return
    root = Path(out)
    for name in part_names:
        src = parts_root / name
        if src.exists():
            dst = root / name
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(src, dst)
    write_json_atomic(root / 'index.json', index)
    write_json_atomic(root / 'manifest.json', manifest, indent=2)
