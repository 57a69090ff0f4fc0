"""Phase 2 of ``prepare``: the samples of one part, read back from the staged token streams of all groups.

A part is a fixed range ``ks`` of global sample indices (:func:`pipeline.tokenize.pack.part_ranges`). Its samples
are computed from the concatenated stream (:class:`~pipeline.storage.staging.TokenStream`) with the arithmetic of
:mod:`pipeline.tokenize.pack`, reading only the tokens they need from whatever groups hold them, so every part is
independent of the others and of how the stream was cut into groups. Each sample is ``(tokens, doc_starts)``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.storage.staging import TokenStream
from pipeline.tokenize.pack import doc_starts_in_window, split_document

__all__ = ['concat_samples', 'none_samples']


def concat_samples(stream: TokenStream, ks: range, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Samples ks of the ``concat`` layout: sample k is ``stream[k*L:(k+1)*L]`` with its document starts."""
    a, b = ks.start * seq_len, ks.stop * seq_len
    tokens = stream.read(a, b)
    offsets = stream.doc_offsets(a, b)
    for i, k in enumerate(ks):
        yield tokens[i * seq_len : (i + 1) * seq_len], doc_starts_in_window(offsets, k * seq_len, seq_len)


def none_samples(
    stream: TokenStream, group_sample_offsets: np.ndarray, ks: range, seq_len: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Samples ks of the ``none`` layout: document pieces of at most L tokens, numbered globally in order."""
    segment_start = np.zeros(1, dtype=np.int32)  # one document (or a piece of one) per sample
    g = int(np.searchsorted(group_sample_offsets, ks.start, side='right')) - 1
    k = int(group_sample_offsets[g])
    while k < ks.stop and g < len(stream.counts):
        if group_sample_offsets[g + 1] == k:  # group without samples
            g += 1
            continue
        tokens = stream.read(int(stream.offsets[g]), int(stream.offsets[g + 1]))
        pos = 0
        for length in stream.doc_lengths(g).tolist():
            pieces = split_document(length, seq_len)
            if k + len(pieces) > ks.start:
                for j, (s, e) in enumerate(pieces):
                    if ks.start <= k + j < ks.stop:
                        yield tokens[pos + s : pos + e], segment_start
            k += len(pieces)
            pos += length
            if k >= ks.stop:
                break
        g += 1
