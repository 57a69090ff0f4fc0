"""Keyed random generators: every random draw of RLP is a pure function of a key, never of the global RNG.

Composer restores the data order on resume but replays the global torch RNG from the seed, so a resumed run would
draw different positions and thoughts. Keys are ``(seed, global batch index, sample id, ...)``; the same key gives
the same draws on any rank, microbatch split, world size or restart.
"""

from __future__ import annotations

import hashlib
from typing import Union

import torch

__all__ = ['derive_seed', 'keyed_generator', 'row_key']

_Part = Union[int, str]


def derive_seed(*parts: _Part) -> int:
    """A 63-bit seed from a tuple of ints/strings (blake2b; stable across Python processes and versions)."""
    text = '/'.join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), 'little') & ((1 << 63) - 1)


def keyed_generator(*parts: _Part) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``derive_seed(*parts)``."""
    return torch.Generator(device='cpu').manual_seed(derive_seed(*parts))


def row_key(sample_ids: torch.Tensor | None, input_ids: torch.Tensor) -> list[str]:
    """One stable key per row: its ``sample_id`` when the batch has one, else a hash of the row's tokens.

    The fallback keeps draws independent of microbatching and resume for batches without ``sample_id``
    (identical rows then share their draws).
    """
    if sample_ids is not None:
        return [str(int(s)) for s in sample_ids.reshape(-1).tolist()]
    rows = input_ids.detach().to('cpu', torch.int64)
    return ['h' + hashlib.blake2b(r.numpy().tobytes(), digest_size=8).hexdigest() for r in rows]
