"""Decoding MDS shards in memory, without a StreamingDataset, with streaming's own column decoders.

``decompress`` turns a shard's stored bytes (zstd or uncompressed) into the raw MDS bytes; ``decode_shard`` yields
its samples as dicts. Used by ``inspect``, ``verify`` and the tests that read a dataset back.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

# streaming's decoders load inside the functions that decode a shard (streaming takes seconds to import), so a
# command that fails before reading a shard answers at once.
__all__ = ['decompress', 'decode_shard']


def decompress(entry: dict, data: bytes) -> bytes:
    """Raw MDS bytes of a shard from its stored bytes (zstd or uncompressed)."""
    if entry.get('compression'):
        from streaming.base.compression import decompress as sdecompress

        return sdecompress(entry['compression'], data)
    return data


def decode_shard(entry: dict, raw: bytes) -> Iterator[dict]:
    """Yield every sample dict of a raw MDS shard (format version 2, as written by ``MDSWriter``)."""
    from streaming.base.format.mds.encodings import mds_decode

    n = int(np.frombuffer(raw[:4], np.uint32)[0])
    offsets = np.frombuffer(raw[4 : 4 + 4 * (n + 1)], np.uint32)
    names, encodings, sizes = entry['column_names'], entry['column_encodings'], entry['column_sizes']
    for i in range(n):
        data = raw[int(offsets[i]) : int(offsets[i + 1])]
        idx, col_sizes = 0, []
        for size in sizes:
            if size:
                col_sizes.append(size)
            else:
                col_sizes.append(int(np.frombuffer(data[idx : idx + 4], np.uint32)[0]))
                idx += 4
        sample = {}
        for name, enc, size in zip(names, encodings, col_sizes):
            sample[name] = mds_decode(enc, data[idx : idx + size])
            idx += size
        yield sample
