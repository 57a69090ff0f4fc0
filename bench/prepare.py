"""Benchmark of ``rlp-data prepare`` against the raw tokenizer, on the same documents, in one run.

Measures, on N synthetic documents (the embedded corpus generator) split into F jsonl files:
  1. raw ``tokenizer(batch)`` throughput (batches of 512 texts, Rust parallelism off, one process);
  2. ``rlp-data prepare`` end to end (read jsonl, tokenise, write token streams, pack, write zstd MDS shards with
     xxh64, publish index + manifest) with ``--workers 1`` and ``--workers 2``; tokens/s = tokens / wall time.
     ``--chunk-mb 1`` makes the ~8 MB corpus 8 units of work (the default 16 MB would make it one).
Prints tokens/s for each and the ratios prepare-1w / raw (goal >= 0.8) and prepare-2w / prepare-1w (goal >= 1.6).
The 2-worker ratio is bounded by the free cores: on a shared machine, report the load next to the numbers. CPU
seconds (this process and its pool workers) are printed too: their ratios show the work the pipeline adds and the
overhead of parallelism independently of other load.

Usage: python bench/prepare.py [--docs 30000] [--files 8] [--seq-len 2048] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ['TOKENIZERS_PARALLELISM'] = 'false'
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bundled_tokenizer import EOS_TEXT, bundled_tokenizer_dir, load_bundled_tokenizer
from pipeline.prepare import PrepareArgs, prepare
from pipeline.synthetic import generate_documents

CHUNK_MB = 1.0  # units of work of ~1 MB, so that a few seconds of work spread over both workers (default: 16 MB)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def raw_tokenizer(texts: list[str], batch: int = 512) -> tuple[int, float, float]:
    """Total tokens (+1 EOS per document, as prepare writes), wall and CPU seconds of tokenizer(batch)."""
    tok = load_bundled_tokenizer()
    tok(texts[:batch])  # warm-up, not timed
    t0, c0 = time.perf_counter(), _cpu()
    total = 0
    for i in range(0, len(texts), batch):
        enc = tok(texts[i : i + batch])['input_ids']
        total += sum(len(ids) + 1 for ids in enc)
    return total, time.perf_counter() - t0, _cpu() - c0


def run_prepare(folder: Path, out: Path, workers: int, seq_len: int) -> tuple[int, float, float]:
    """Tokens written, wall and CPU seconds (this process + its pool workers) of one ``prepare`` run."""
    shutil.rmtree(out, ignore_errors=True)
    args = PrepareArgs(
        inputs=[str(folder)],
        tokenizer=str(bundled_tokenizer_dir()),
        seq_len=seq_len,
        out=str(out),
        eos_text=EOS_TEXT,
        workers=workers,
        progress=False,
        chunk_mb=CHUNK_MB,
    )
    t0, c0 = time.perf_counter(), _cpu()
    prepare(args, log=lambda *_: None)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    tokens = json.loads((out / 'manifest.json').read_text())['counts']['tokens']
    return tokens, seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--docs', type=int, default=30000)
    parser.add_argument('--files', type=int, default=8)
    parser.add_argument('--seq-len', type=int, default=2048)
    parser.add_argument('--repeats', type=int, default=2, help='best of N for every measurement')
    a = parser.parse_args()

    texts = generate_documents(a.docs, seed=0)
    with tempfile.TemporaryDirectory(prefix='rlp-bench-') as tmp:
        folder = Path(tmp) / 'corpus'
        folder.mkdir()
        per = -(-len(texts) // a.files)
        for f in range(a.files):
            with open(folder / f'part{f:03d}.jsonl', 'w') as fh:
                for t in texts[f * per : (f + 1) * per]:
                    fh.write(json.dumps({'text': t}) + '\n')
        mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        print(
            f'corpus: {len(texts):,} documents, {mb:.1f} MB jsonl in {a.files} files; cpus: {os.cpu_count()}, '
            f'load average: {os.getloadavg()[0]:.2f}'
        )
        results, cpus = {}, {}
        for name, fn in [
            ('raw', lambda: raw_tokenizer(texts)),
            ('prepare-1w', lambda: run_prepare(folder, Path(tmp) / 'out1', 1, a.seq_len)),
            ('prepare-2w', lambda: run_prepare(folder, Path(tmp) / 'out2', 2, a.seq_len)),
        ]:
            runs = [fn() for _ in range(a.repeats)]
            tokens, seconds, cpu = min(runs, key=lambda r: r[1])
            results[name] = tokens / seconds
            cpus[name] = cpu
            print(
                f'{name:>11}: {tokens:,} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tokens/s '
                f'({cpu:.2f} CPU-s, {tokens / cpu:,.0f} tokens per CPU-s)'
            )
        r1 = results['prepare-1w'] / results['raw']
        r2 = results['prepare-2w'] / results['prepare-1w']
        print(f'ratio prepare-1w / raw        = {r1:.2f}  (goal >= 0.8)')
        print(f'ratio prepare-2w / prepare-1w = {r2:.2f}  (goal >= 1.6)')
        print(
            f'CPU-s prepare-1w / raw = {cpus["prepare-1w"] / cpus["raw"]:.2f}, prepare-2w / prepare-1w = '
            f'{cpus["prepare-2w"] / cpus["prepare-1w"]:.2f} (work added by the pipeline and by parallelism; '
            'independent of other load on the machine)'
        )
        print(f'load average after: {os.getloadavg()[0]:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
