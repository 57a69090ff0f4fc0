"""Checks the shared test infrastructure against the real thing: the S3 fixture against boto3 round trips and
streaming's uploader, the bundled tokenizer against its documented special-token policy, the tiny models against a
forward pass, and the synthetic corpus against its determinism and content rules."""

from __future__ import annotations

import re

import pytest

from pipeline.synthetic import generate_document, generate_documents
from tests.helpers.tiny_models import TINY_KINDS, build_tiny_model


def test_s3_fixture_round_trip(s3, tmp_path):
    """An object written through the local server reads back byte-identical, from boto3 and from streaming."""
    from streaming.base.storage import CloudDownloader

    s3.client.put_object(Bucket=s3.bucket, Key='a/b.txt', Body=b'hello')
    assert s3.list('a/') == ['a/b.txt']
    CloudDownloader.direct_download(f's3://{s3.bucket}/a/b.txt', str(tmp_path / 'b.txt'), timeout=30)
    assert (tmp_path / 'b.txt').read_bytes() == b'hello'


def test_bundled_tokenizer_policy(tokenizer):
    """No BOS/EOS added; eos = pad = <|endoftext|>; think tags and digits are single tokens; lossless decode."""
    text = 'ann has 42 keys. <think>42-5=37</think>37'
    ids = tokenizer(text)['input_ids']
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == tokenizer.pad_token == '<|endoftext|>'
    assert tokenizer.bos_token is None and tokenizer.eos_token_id not in ids
    for tag in ('<think>', '</think>'):
        assert len(tokenizer(tag)['input_ids']) == 1
    pieces = [tokenizer.decode([i]) for i in ids]
    assert all(not (p.strip().isdigit() and len(p.strip()) > 1) for p in pieces)


def test_synthetic_corpus_is_deterministic_and_prefix_stable():
    """Same seed -> same documents; a shorter corpus is a prefix of a longer one; seeds differ."""
    assert generate_documents(20, seed=3) == generate_documents(20, seed=3)
    assert generate_documents(50, seed=3)[:20] == generate_documents(20, seed=3)
    assert generate_documents(20, seed=3) != generate_documents(20, seed=4)
    assert generate_document(7, seed=3) == generate_documents(8, seed=3)[7]


def test_synthetic_corpus_arithmetic_is_correct():
    """Every worked step a=b inside <think> and every bare equation in the corpus is arithmetically true."""
    checked = 0
    for doc in generate_documents(300, seed=0):
        for lhs, rhs in re.findall(r'(\d+(?:[-+*]\d+)+)=(\d+)', doc):
            assert eval(lhs) == int(rhs), (lhs, rhs, doc)
            checked += 1
    assert checked > 300


@pytest.mark.parametrize('kind', TINY_KINDS)
def test_tiny_models_forward(kind, tokenizer):
    """Each tiny architecture runs a forward pass with labels and returns a finite loss of the right shape."""
    import torch

    model = build_tiny_model(kind, vocab_size=len(tokenizer))
    ids = torch.tensor([tokenizer('bob has 3 pens.')['input_ids']])
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)
