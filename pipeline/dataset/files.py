"""The files of a prepared dataset (``index.json``, ``manifest.json``, shards), local or on an object store.

Used by ``inspect`` and ``verify``. A remote dataset (``s3://``, ``gs://``...) is downloaded into a temporary
folder, file by file as asked for; a local one is read in place. Decoding the shards is
:mod:`pipeline.dataset.shards`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pipeline.errors import DataError
from pipeline.storage import remote

__all__ = ['DatasetFiles']


class DatasetFiles:
    """Access to ``index.json``, ``manifest.json`` and shard files of a local folder or a remote prefix."""

    def __init__(self, path: str):
        self.path = path
        self.is_remote = remote.is_remote(path)
        self._tmp = tempfile.TemporaryDirectory(prefix='rlp-data-') if self.is_remote else None
        self.root = Path(self._tmp.name) if self._tmp else Path(path)
        if not self.is_remote and not self.root.is_dir():
            raise DataError(
                f'{path!r} is not a folder; rule: inspect/verify take a prepared dataset folder or an '
                'object-store URI; fix: pass the --out of rlp-data prepare'
            )

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def exists(self, name: str) -> bool:
        if self.is_remote:
            if not hasattr(self, '_listing'):
                self._listing = remote.list_objects(self.path)
            return name in self._listing
        return (self.root / name).is_file()

    def local(self, name: str) -> Path:
        """Local path of ``name``, downloading it first for a remote dataset."""
        local = self.root / name
        if self.is_remote and not local.exists():
            remote.download(remote.join(self.path, name), local)
        return local

    def json(self, name: str) -> dict:
        if not self.exists(name):
            raise DataError(
                f'{self.path!r} has no {name}; rule: a complete rlp-data output has index.json and '
                'manifest.json; fix: (re)run rlp-data prepare to completion, or check the path'
            )
        try:
            return json.loads(self.local(name).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f'{self.path}/{name} is not valid JSON ({exc}); the dataset is corrupt; fix: prepare it ' 'again'
            ) from None
