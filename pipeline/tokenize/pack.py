"""Packing: pure functions from a token stream with document boundaries to fixed-size samples.

Two modes:

* ``concat``: all documents, in order, form one stream of T tokens (each document already carries its BOS/EOS).
  Sample k is ``stream[k*L:(k+1)*L]`` for k < n = floor(T / L); the last ``T - n*L`` tokens (the final partial
  sample) are dropped and counted. Because sample boundaries are global multiples of L, any contiguous piece of
  the stream can be packed independently once its global offset is known: that is what makes parallel writing
  deterministic (the output does not depend on how the stream was cut into groups).
* ``none``: one document per sample; a document longer than L is split into ceil(len / L) samples, the last one
  shorter. Nothing is dropped.

``doc_starts`` of a sample lists the starts of its document segments in increasing order: always 0 first (the
sample's first token opens segment 0, whether it starts a document or continues one from the previous sample),
then every position p in (0, L) where a new document begins. So ``segment_ids[t] = #{s in doc_starts: s <= t} - 1``
and the array is never empty (MDS cannot store empty ndarrays).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    'concat_layout',
    'concat_samples_starting_in',
    'doc_starts_in_window',
    'split_document',
    'samples_per_part',
    'part_ranges',
    'none_sample_counts',
]


def concat_layout(total_tokens: int, seq_len: int) -> tuple[int, int]:
    """Number of full samples n = floor(T / L) and dropped tail tokens T - n*L of a concat-packed stream."""
    n = total_tokens // seq_len
    return n, total_tokens - n * seq_len


def concat_samples_starting_in(begin: int, end: int, seq_len: int, n_samples: int) -> range:
    """Indices k < n_samples of the concat samples whose first token offset k*L lies in [begin, end)."""
    first = -(-begin // seq_len)
    last = min(-(-end // seq_len), n_samples)
    return range(first, max(first, last))


def doc_starts_in_window(doc_offsets: np.ndarray, start: int, seq_len: int) -> np.ndarray:
    """Segment starts (int32) of the window [start, start + L): 0, then each document start inside (start, start + L).

    Args:
        doc_offsets: (D,) sorted global offsets where documents begin.
        start: global offset of the window's first token.
        seq_len: window length L.
    """
    lo = np.searchsorted(doc_offsets, start, side='right')
    hi = np.searchsorted(doc_offsets, start + seq_len, side='left')
    return np.concatenate([[0], doc_offsets[lo:hi] - start]).astype(np.int32)


def split_document(length: int, seq_len: int) -> list[tuple[int, int]]:
    """``none`` mode: [a, b) pieces of a document of ``length`` tokens, each at most L long."""
    return [(a, min(a + seq_len, length)) for a in range(0, length, seq_len)]


def none_sample_counts(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """``none`` mode: samples per document, ceil(len / L), shape (D,)."""
    return -(-np.asarray(lengths, dtype=np.int64) // seq_len)


def samples_per_part(seq_len: int, itemsize: int, shard_bytes: int) -> int:
    """How many samples one part (one MDS folder, normally one shard) holds: ~90% of a shard of full samples.

    A full sample takes L * itemsize bytes of tokens plus a small ``doc_starts`` array and the MDS offsets;
    64 bytes is reserved for those, so a part usually fits in one shard (MDSWriter opens a second one otherwise).
    """
    return max(1, int(0.9 * shard_bytes) // (seq_len * itemsize + 64))


def part_ranges(n_samples: int, per_part: int) -> list[range]:
    """Global sample index ranges of the parts: [j*S, min((j+1)*S, n)) for j = 0 .. ceil(n/S)-1."""
    return [range(a, min(a + per_part, n_samples)) for a in range(0, n_samples, per_part)]
