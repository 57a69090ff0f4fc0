"""What training's shard check costs (``rlp.run.integrity``): seconds per 64 MB shard, beside decompressing it.

Writes one MDS shard of random uint16 tokens (64 MB raw, zstd) with streaming's MDSWriter, then times, best of
``--repeat`` runs with the file in the page cache: xxh64 of the compressed file, xxh64 of the decompressed copy
(what the first open of a shard checks), the whole ``ShardChecker.check_present`` of the shard, and for scale
streaming's zstd decompression of the same shard. ``python bench/shard_hash.py [--mb 64] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from types import SimpleNamespace

import numpy as np


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mb', type=float, default=64.0, help='raw shard size in MB')
    parser.add_argument('--repeat', type=int, default=5)
    a = parser.parse_args()
    from streaming import MDSWriter
    from streaming.base.compression import decompress

    from rlp.run.integrity import ShardChecker, file_hash

    seq = 2048
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        limit = int(a.mb * (1 << 20))
        with MDSWriter(
            out=tmp, columns={'tokens': f'ndarray:uint16:{seq}'}, compression='zstd', hashes=['xxh64'], size_limit=limit
        ) as w:
            for _ in range(limit // (2 * seq) - 8):  # one shard just under the limit
                w.write({'tokens': rng.integers(0, 50_000, seq, dtype=np.uint16)})
        entry = json.load(open(os.path.join(tmp, 'index.json')))['shards'][0]
        zpath = os.path.join(tmp, entry['zip_data']['basename'])
        rpath = os.path.join(tmp, entry['raw_data']['basename'])
        with open(rpath, 'wb') as fh:
            fh.write(decompress('zstd', open(zpath, 'rb').read()))
        info = {k: SimpleNamespace(**entry[k]) for k in ('raw_data', 'zip_data')}
        shard = SimpleNamespace(file_pairs=[(info['raw_data'], info['zip_data'])])

        def unzip():
            with open(zpath, 'rb') as fh:
                decompress('zstd', fh.read())

        def check():
            ShardChecker('bench', None, tmp).check_present(shard)  # a fresh checker: nothing remembered

        raw_mb, zip_mb = os.path.getsize(rpath) / 2**20, os.path.getsize(zpath) / 2**20
        rows = [
            (f'xxh64 of the compressed shard ({zip_mb:.1f} MB)', _best(lambda: file_hash(zpath, 'xxh64'), a.repeat)),
            (f'xxh64 of the decompressed copy ({raw_mb:.1f} MB)', _best(lambda: file_hash(rpath, 'xxh64'), a.repeat)),
            ('ShardChecker.check_present (first open of the shard)', _best(check, a.repeat)),
            ('for scale: zstd decompression of the shard', _best(unzip, a.repeat)),
        ]
    for name, seconds in rows:
        print(f'{name:60s} {seconds * 1000:8.1f} ms')


if __name__ == '__main__':
    main()
