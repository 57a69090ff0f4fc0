"""Helpers for the rlp-data tests: run the CLI in-process, write corpora, read a prepared dataset back, references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.bundled_tokenizer import EOS_TEXT, bundled_tokenizer_dir
from pipeline.cli import main
from pipeline.dataset.shards import decode_shard, decompress
from pipeline.synthetic import write_jsonl

TOK = str(bundled_tokenizer_dir())
BASE = ['--tokenizer', TOK, '--eos-text', EOS_TEXT, '--no-progress']


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``rlp-data`` in-process; return (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def prepare(capsys, inputs, out, seq_len=64, *extra) -> tuple[int, str, str]:
    """``rlp-data prepare`` with the bundled tokenizer and ``--eos-text <|endoftext|>``."""
    inputs = [inputs] if isinstance(inputs, str | Path) else inputs
    return run(capsys, 'prepare', '--input', *inputs, *BASE, '--seq-len', seq_len, '--out', out, *extra)


def write_corpus(folder: Path, files: int, docs_per_file: int = 40, stem: str = 'part') -> Path:
    """A folder of ``files`` synthetic jsonl files (``{stem}{i}.jsonl``, seed i), as several input groups."""
    folder = Path(folder)
    folder.mkdir()
    for i in range(files):
        write_jsonl(folder / f'{stem}{i}.jsonl', docs_per_file, seed=i)
    return folder


def prepared_synthetic(root: Path, docs: int, seq_len: int, seed: int = 5, think_fraction: float = 0.0) -> Path:
    """``docs`` synthetic documents written to ``root/corpus.jsonl`` and prepared with the bundled tokenizer into
    ``root/data`` (``pipeline.prepare`` in-process, no progress); returns the data folder."""
    from pipeline.prepare import PrepareArgs
    from pipeline.prepare import prepare as prepare_data

    write_jsonl(root / 'corpus.jsonl', docs, seed=seed, think_fraction=think_fraction)
    args = PrepareArgs(
        inputs=[str(root / 'corpus.jsonl')], tokenizer=TOK, seq_len=seq_len, out=str(root / 'data'),
        eos_text=EOS_TEXT, progress=False,
    )  # fmt: skip
    prepare_data(args, log=lambda *a: None)
    return root / 'data'


def read_samples(out: Path) -> list[dict]:
    """Every sample of a local prepared dataset, in index order, decoded from the shards on disk."""
    index = json.loads((Path(out) / 'index.json').read_text())
    samples = []
    for entry in index['shards']:
        raw = decompress(entry, (Path(out) / entry['zip_data']['basename']).read_bytes())
        samples.extend(decode_shard(entry, raw))
    return samples


def reference_docs(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each non-empty document tokenised on its own plus the EOS separator (the bundled tokenizer adds nothing)."""
    eos = tokenizer.convert_tokens_to_ids(EOS_TEXT)
    return [tokenizer(t, add_special_tokens=False)['input_ids'] + [eos] for t in texts if t.strip()]


def check_concat(samples: list[dict], docs: list[list[int]], seq_len: int, manifest: dict) -> None:
    """Concatenated samples == concatenated documents minus exactly the dropped tail; doc_starts match boundaries."""
    stream = np.array([t for d in docs for t in d])
    n = len(stream) // seq_len
    assert len(samples) == n == manifest['counts']['samples']
    assert manifest['counts']['dropped_tail_tokens'] == len(stream) - n * seq_len
    assert manifest['counts']['tokens'] == len(stream)
    assert manifest['counts']['documents'] == len(docs)
    got = np.concatenate([s['tokens'] for s in samples]) if samples else np.zeros(0)
    np.testing.assert_array_equal(got, stream[: n * seq_len])
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    for k, s in enumerate(samples):
        inside = starts[(starts > k * seq_len) & (starts < (k + 1) * seq_len)] - k * seq_len
        np.testing.assert_array_equal(s['doc_starts'], np.concatenate([[0], inside]).astype(np.int32))
        assert len(s['tokens']) == seq_len


def tree_bytes(root: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``root`` (for byte-identity comparisons)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}
