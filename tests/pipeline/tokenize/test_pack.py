"""Packing arithmetic checked against hand-computed layouts (pure functions of pipeline.tokenize.pack)."""

import numpy as np

from pipeline.tokenize.pack import concat_layout, concat_samples_starting_in, doc_starts_in_window, split_document


def test_concat_layout_counts_the_dropped_tail():
    assert concat_layout(10, 4) == (2, 2)  # samples [0,4) [4,8); tokens 8, 9 dropped
    assert concat_layout(8, 4) == (2, 0)
    assert concat_layout(3, 4) == (0, 3)


def test_samples_are_owned_by_the_group_holding_their_first_token():
    # stream of 10 tokens cut into groups [0,3) [3,9) [9,10); L=4 -> samples start at 0 and 4 (8 is partial)
    n, _ = concat_layout(10, 4)
    assert list(concat_samples_starting_in(0, 3, 4, n)) == [0]
    assert list(concat_samples_starting_in(3, 9, 4, n)) == [1]  # sample 2 would start at 8 but is the dropped tail
    assert list(concat_samples_starting_in(9, 10, 4, n)) == []
    owned = [k for a, b in [(0, 3), (3, 9), (9, 10)] for k in concat_samples_starting_in(a, b, 4, n)]
    assert owned == list(range(n))  # every sample exactly once


def test_doc_starts_always_open_with_segment_zero():
    offsets = np.array([0, 5, 8, 12])
    np.testing.assert_array_equal(doc_starts_in_window(offsets, 0, 4), [0])  # doc 0 starts at 0
    np.testing.assert_array_equal(doc_starts_in_window(offsets, 4, 4), [0, 1])  # continuation, doc 1 at 5
    np.testing.assert_array_equal(doc_starts_in_window(offsets, 8, 4), [0])  # doc 2 starts exactly at 8
    assert doc_starts_in_window(offsets, 8, 4).dtype == np.int32


def test_split_document_at_seq_len():
    assert split_document(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert split_document(4, 4) == [(0, 4)]
