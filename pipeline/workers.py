"""The units of work of ``prepare`` and the process pool that runs them.

Two kinds of unit, each a pure function of the staging folder and the arguments (which is what makes the output
independent of ``--workers``), each ending with its done marker:

* :func:`tokenize_unit`: phase 1 for one group (:func:`pipeline.tokenize.group.tokenize_group`);
* :func:`write_unit`: phase 2 for one part: pack its fixed range of global sample indices
  (:mod:`pipeline.tokenize.samples`) and write them as one MDS folder (:func:`pipeline.mds.writer.write_mds_folder`),
  then its marker.

Workers are forked (or spawned where fork is missing) and die with their parent (``PR_SET_PDEATHSIG``) so that a
killed run never leaves a writer racing the next one. A worker gets its :class:`Ctx` by inheritance (fork) or from
the pool initializer (spawn).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.inputs.groups import Group
from pipeline.mds.writer import columns_for, write_mds_folder
from pipeline.prepare_args import PrepareArgs
from pipeline.storage.staging import Staging, TokenStream, write_json_atomic
from pipeline.tokenize.group import tokenize_group
from pipeline.tokenize.pack import part_ranges
from pipeline.tokenize.samples import concat_samples, none_samples
from pipeline.tokenize.tokenizer import load_tokenizer

# ctypes and signal are imported inside ``_die_with_parent``, under its try: the prctl call exists on Linux only.
__all__ = ['Ctx', 'tokenize_unit', 'write_unit', 'run_pool', 'progress_bar']


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


def tokenize_unit(group: Group) -> dict:
    """Phase 1 for one group: read, tokenise, append to the group's stream, write its marker; return the marker."""
    ctx = _CTX
    return tokenize_group(
        group,
        tok=ctx.tok,
        policy=ctx.policy,
        dtype=ctx.dtype,
        staging=Staging(ctx.staging),
        fingerprint=ctx.fingerprint,
        text_field=ctx.args.text_field,
        on_bad_record=ctx.args.on_bad_record,
        counters=ctx.counters,
    )


def write_unit(j: int) -> dict:
    """Phase 2 for part j: pack its range of global samples and write them as an MDS folder, then its marker."""
    ctx = _CTX
    a, layout = ctx.args, ctx.layout
    staging = Staging(ctx.staging)
    stream = TokenStream(staging, layout['token_counts'], ctx.dtype)
    ks = part_ranges(layout['n_samples'], layout['samples_per_part'])[j]
    if a.pack == 'concat':
        samples = concat_samples(stream, ks, a.seq_len)
    else:
        samples = none_samples(stream, np.asarray(layout['group_sample_offsets']), ks, a.seq_len)
    result = write_mds_folder(
        staging.part_dir(j), columns_for(a.pack, ctx.dtype, a.seq_len), samples, layout['shard_bytes']
    )
    marker = {'fingerprint': ctx.fingerprint, 'part': staging.part_name(j), **result}
    write_json_atomic(staging.part_marker(j), marker)
    return marker


def run_pool(fn, jobs: list, ctx: Ctx, workers: int, bar, label: str) -> None:
    """Run ``fn`` over ``jobs`` in-process (1 worker) or in a process pool, feeding the progress bar.

    Results are not returned: every job leaves a done marker that the caller reads back, so a resumed run and a
    fresh one take the same path. A worker's :class:`~pipeline.errors.DataError` is re-raised here.
    """
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
    """A tqdm bar on stderr counting tokens (its postfix shows documents, tokens and tokens/s), or None."""
    if not enabled:
        return None
    bar = tqdm(total=total_hint, unit='tok', unit_scale=True, dynamic_ncols=True, desc='rlp-data', leave=False)
    bar.t0 = time.monotonic()
    return bar
