"""MDS writing: the column schema (one constant), one MDS folder per part, and the merged root ``index.json``.

Schema: ``tokens`` as ``ndarray:<uint16|uint32>:<L>`` (static shape) in concat mode, or
``ndarray:<dtype>`` (variable length, at most L) in ``none`` mode; ``doc_starts`` as ``ndarray:int32``. Shards are
zstd-compressed, at most ``--shard-mb`` (64 MiB) raw, with xxh64 hashes of both the raw and the compressed bytes
recorded in the index. The root ``index.json`` lists the parts' shards in part order with their basenames prefixed
by the part folder, exactly as ``streaming.base.util.merge_index`` lays them out, but written here in one
deterministic step so that it can be published last.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

# streaming's MDSWriter loads inside the function that writes (streaming takes seconds to import): importing this
# module for the column schema and the index merge stays cheap.
__all__ = ['COMPRESSION', 'HASHES', 'SIZE_LIMIT', 'columns_for', 'write_mds_folder', 'merged_index']

COMPRESSION = 'zstd'
HASHES = ['xxh64']
SIZE_LIMIT = 1 << 26  # default: 64 MiB raw per shard; streaming stores byte offsets as uint32, so it must be < 2**32.


def columns_for(pack: str, dtype: str, seq_len: int) -> dict[str, str]:
    """The MDS ``columns`` for a pack mode, token dtype and sequence length."""
    shape = f':{seq_len}' if pack == 'concat' else ''
    return {'tokens': f'ndarray:{dtype}{shape}', 'doc_starts': 'ndarray:int32'}


def write_mds_folder(
    out_dir: Path,
    columns: dict[str, str],
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    size_limit: int = SIZE_LIMIT,
) -> dict:
    """Write ``(tokens, doc_starts)`` samples as an MDS folder; return ``{'samples', 'shards': [index entries]}``."""
    from streaming import MDSWriter

    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    count = 0
    with MDSWriter(
        out=str(out_dir), columns=columns, compression=COMPRESSION, hashes=HASHES, size_limit=size_limit
    ) as writer:
        for tokens, doc_starts in samples:
            writer.write({'tokens': tokens, 'doc_starts': doc_starts})
            count += 1
    index = json.loads((out_dir / 'index.json').read_text())
    return {'samples': count, 'shards': index['shards']}


def merged_index(parts: list[tuple[str, list[dict]]]) -> dict:
    """Root index: every part's shard entries, basenames prefixed with ``<part>/``, in part order."""
    shards = []
    for name, entries in parts:
        for entry in entries:
            entry = json.loads(json.dumps(entry))
            for key in ('raw_data', 'zip_data', 'raw_meta', 'zip_meta'):
                if entry.get(key):
                    entry[key]['basename'] = f'{name}/{entry[key]["basename"]}'
            shards.append(entry)
    return {'version': 2, 'shards': shards}
