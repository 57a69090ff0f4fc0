"""The work units of ``prepare`` and the process pool that runs them.

Phase 1 (:func:`tokenize_group`): read one group, tokenise in batches of 512 documents, append to the group's raw
token stream, write its marker. Phase 2 (:func:`write_part`): pack one fixed range of global sample indices (see
:mod:`pipeline.prepare`) and write it as one MDS folder, then its marker. Both are pure functions of the
staging folder and the arguments, which is what makes the output independent of ``--workers``.

Workers are forked (or spawned where fork is missing) and die with their parent (``PR_SET_PDEATHSIG``) so that a
killed run never leaves a writer racing the next one. The test hook ``RLP_DATA_TEST_SLEEP_AFTER_UNIT`` (seconds)
sleeps after each marker so tests can kill a run between markers.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from pipeline.errors import DataError
from pipeline.pack import doc_starts_in_window, part_ranges, split_document
from pipeline.sources import Group, iter_records
from pipeline.store import GroupTokenWriter, Staging, TokenStream, write_json_atomic
from pipeline.tokenize import encode_batch, load_tokenizer, to_array
from pipeline.writer import columns_for
from pipeline.writer import write_part as write_mds_part

if TYPE_CHECKING:
    from pipeline.prepare import PrepareArgs

__all__ = ['Ctx', 'TEST_SLEEP_ENV', 'lock_staging', 'tokenize_group', 'write_part', 'run_pool', 'progress_bar']

TEST_SLEEP_ENV = 'RLP_DATA_TEST_SLEEP_AFTER_UNIT'  # test hook: seconds to sleep after each done marker
_BATCH_DOCS = 512


@dataclass
class Ctx:
    """Everything a worker needs; inherited by fork or rebuilt by the pool initializer."""

    args: PrepareArgs
    staging: Path
    dtype: str
    fingerprint: str
    tok: object = None
    policy: object = None
    counters: tuple = field(default=())
    layout: dict | None = None  # phase 2: token counts per group, sample counts, samples per part, shard bytes


_CTX: Ctx | None = None  # the worker's context: set in the parent before forking, or by the pool initializer


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the parent dies, so a killed run leaves no orphan writer."""
    try:
        import ctypes
        import signal

        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def lock_staging(root: Path):
    """Hold an exclusive lock on the staging folder for this run (released by the kernel when the process dies)."""
    import fcntl

    fh = open(root / 'lock', 'w')
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise DataError(
            f'another rlp-data run is using the staging folder {str(root)!r}; rule: one run per output '
            'at a time; fix: wait for it to finish or stop it'
        ) from None
    return fh


def _init_worker(ctx: Ctx | None, counters, in_pool: bool = False) -> None:
    global _CTX
    if in_pool:
        _die_with_parent()
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    if ctx is not None:
        _CTX = ctx
    if _CTX.tok is None:
        _CTX.tok = load_tokenizer(_CTX.args.tokenizer)
    _CTX.counters = counters


def _sleep_hook() -> None:
    delay = os.environ.get(TEST_SLEEP_ENV)
    if delay:
        time.sleep(float(delay))


def tokenize_group(group: Group) -> dict:
    """Phase 1 for one group: read, tokenise, append to the group's stream, write its marker."""
    ctx = _CTX
    a = ctx.args
    writer = GroupTokenWriter(Staging(ctx.staging), group.index, ctx.dtype)
    docs = tokens = empty = bad = 0
    bad_examples: list[str] = []
    text_hash = xxhash.xxh64() if any(p.kind == 'hf' for p in group.pieces) else None
    batch: list[str] = []
    docs_counter, tokens_counter = ctx.counters if ctx.counters else (None, None)

    def flush() -> None:
        nonlocal tokens
        flat, lengths = encode_batch(ctx.tok, batch, ctx.policy)
        writer.append(to_array(flat, ctx.dtype), lengths)
        tokens += len(flat)
        if docs_counter is not None:
            with docs_counter.get_lock():
                docs_counter.value += len(batch)
            with tokens_counter.get_lock():
                tokens_counter.value += len(flat)
        batch.clear()

    for text, reason in iter_records(group, a.text_field):
        if reason is not None:
            if a.on_bad_record == 'fail':
                raise DataError(
                    f'bad record: {reason}; rule: --on-bad-record fail stops at the first bad record; '
                    'fix: repair the input or pass --on-bad-record skip (skipped records are counted)'
                )
            bad += 1
            if len(bad_examples) < 3:
                bad_examples.append(reason)
            continue
        if text_hash is not None:
            text_hash.update(text.encode('utf-8', 'surrogatepass') + b'\0')
        if not text.strip():
            empty += 1
            continue
        batch.append(text)
        docs += 1
        if len(batch) >= _BATCH_DOCS:
            flush()
    if batch:
        flush()
    marker = {
        'fingerprint': ctx.fingerprint,
        'group': asdict(group),
        'documents': docs,
        'tokens': tokens,
        'empty': empty,
        'bad': bad,
        'bad_examples': bad_examples,
        'text_hash': 'xxh64:' + text_hash.hexdigest() if text_hash is not None else None,
    }
    writer.finish(marker)
    _sleep_hook()
    return marker


def _concat_samples(stream: TokenStream, ks: range, seq_len: int):
    a, b = ks.start * seq_len, ks.stop * seq_len
    tokens = stream.read(a, b)
    offsets = stream.doc_offsets(a, b)
    for i, k in enumerate(ks):
        yield tokens[i * seq_len : (i + 1) * seq_len], doc_starts_in_window(offsets, k * seq_len, seq_len)


def _none_samples(stream: TokenStream, group_sample_offsets: np.ndarray, ks: range, seq_len: int):
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


def write_part(j: int) -> dict:
    """Phase 2 for part j: pack its range of global samples and write them as an MDS folder, then its marker."""
    ctx = _CTX
    a, layout = ctx.args, ctx.layout
    staging = Staging(ctx.staging)
    stream = TokenStream(staging, layout['token_counts'], ctx.dtype)
    ks = part_ranges(layout['n_samples'], layout['samples_per_part'])[j]
    if a.pack == 'concat':
        samples = _concat_samples(stream, ks, a.seq_len)
    else:
        samples = _none_samples(stream, np.asarray(layout['group_sample_offsets']), ks, a.seq_len)
    result = write_mds_part(
        staging.part_dir(j), columns_for(a.pack, ctx.dtype, a.seq_len), samples, layout['shard_bytes']
    )
    marker = {'fingerprint': ctx.fingerprint, 'part': staging.part_name(j), **result}
    write_json_atomic(staging.part_marker(j), marker)
    _sleep_hook()
    return marker


def run_pool(fn, jobs: list, ctx: Ctx, workers: int, bar, label: str) -> None:
    """Run ``fn`` over ``jobs`` in-process (1 worker) or in a process pool, feeding the progress bar.

    Results are not returned: every job leaves a done marker that the caller reads back, so a resumed run and a
    fresh one take the same path. A worker's :class:`DataError` is re-raised here.
    """
    import multiprocessing as mp

    counters = ctx.counters
    if workers == 1 or len(jobs) <= 1:
        _init_worker(ctx, counters)
        for job in jobs:
            fn(job)
            _tick(bar, counters, label)
        return
    method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
    shipped = (
        None
        if method == 'fork'
        else Ctx(ctx.args, ctx.staging, ctx.dtype, ctx.fingerprint, None, ctx.policy, (), ctx.layout)
    )
    global _CTX
    _CTX = ctx  # inherited by forked workers
    with mp.get_context(method).Pool(
        min(workers, len(jobs)), initializer=_init_worker, initargs=(shipped, counters, True)
    ) as pool:
        failures: list[BaseException] = []
        pending = deque(pool.apply_async(fn, (job,), error_callback=failures.append) for job in jobs)
        while pending:
            time.sleep(0.1)
            _tick(bar, counters, label)
            if failures:
                raise failures[0]  # the pool is terminated on leaving the with-block
            while pending and pending[0].ready():
                pending.popleft().get()
        # Normal end: let the workers leave on their own. Leaving the with-block alone would terminate() them,
        # which can hang joining a worker blocked on the task queue's lock (seen once under a loaded machine).
        pool.close()
        pool.join()
    _tick(bar, counters, label)


def _tick(bar, counters, label: str) -> None:
    if bar is None or not counters:
        return
    docs, toks = counters[0].value, counters[1].value
    elapsed = max(time.monotonic() - bar.t0, 1e-9)
    bar.n = toks
    bar.set_postfix_str(f'{label} docs={docs:,} tokens={toks:,} tok/s={toks / elapsed:,.0f}', refresh=False)
    bar.refresh()


def progress_bar(enabled: bool, total_hint: int | None = None):
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(total=total_hint, unit='tok', unit_scale=True, dynamic_ncols=True, desc='rlp-data', leave=False)
    bar.t0 = time.monotonic()
    return bar
