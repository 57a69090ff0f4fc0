"""Helpers that damage a prepared dataset on purpose (a flipped byte, a truncated file) and find its shard files."""

from __future__ import annotations

import json
from pathlib import Path


def flip_byte(path: Path, at: float = 0.5) -> None:
    """Flip the lowest bit of the byte at fraction ``at`` of the file (0.5: the middle)."""
    data = bytearray(Path(path).read_bytes())
    data[int(len(data) * at)] ^= 0x01
    Path(path).write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    """Keep only the first fraction ``keep`` of the file."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def shard_files(folder: Path) -> list[tuple[Path, Path]]:
    """``(compressed file, decompressed copy)`` of every shard of the dataset in ``folder``, in index order."""
    index = json.loads((Path(folder) / 'index.json').read_text())
    return [
        (Path(folder) / e['zip_data']['basename'], Path(folder) / e['raw_data']['basename']) for e in index['shards']
    ]
