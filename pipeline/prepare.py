"""``rlp-data prepare``: inputs -> tokenised, packed MDS shards + manifest, parallel, deterministic, resumable.

Phases (every unit writes a done marker last; see :mod:`pipeline.storage.staging`):

1. tokenise: each group (see :mod:`pipeline.inputs.expand`) becomes a raw token stream with document lengths
   (:mod:`pipeline.tokenize.group`). Groups run in a process pool of ``--workers`` (:mod:`pipeline.workers`); the
   result of a group depends only on the group.
2. pack + write: with every group's token count known, the global stream is cut into samples at multiples of
   ``seq_len`` (concat) or into per-document pieces (none) (:mod:`pipeline.tokenize.pack`), and the global sample
   sequence into fixed ranges of ``samples_per_part`` (about one shard each). A part reads the tokens it needs from
   whatever groups hold them, so parts are independent and written in parallel, and the result equals packing the
   whole stream in one pass: only the final partial sample of the whole corpus is dropped, and neither
   ``--workers`` nor the grouping of the inputs (``--chunk-mb``) changes a byte.
3. publish (:mod:`pipeline.mds.publish`): parts are moved (local) or uploaded (object store) beside each other,
   then the root ``index.json``, then ``manifest.json``. ``manifest.json`` is the completion mark: an output
   without it is incomplete. An object-store failure here (after :mod:`pipeline.storage.remote`'s bounded retry)
   keeps the staging folder, so the rerun re-uploads without tokenising or writing again.

Same inputs + arguments => byte-identical shards, index and manifest for any ``--workers``; a killed run resumes
from the markers. Throughput numbers stay in the printed summary, never in a published file.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import xxhash

from pipeline.errors import DataError, UsageError
from pipeline.inputs.expand import expand_inputs
from pipeline.mds import publish as pub
from pipeline.mds.manifest import build_manifest, combine_hashes, hash_file, relative_name, tool_version
from pipeline.mds.writer import SIZE_LIMIT, columns_for, merged_index
from pipeline.prepare_args import PrepareArgs
from pipeline.storage import remote
from pipeline.storage.staging import Staging, TokenStream, lock_staging, read_json, write_json_atomic
from pipeline.tokenize.pack import concat_layout, none_sample_counts, part_ranges, samples_per_part
from pipeline.tokenize.tokenizer import choose_dtype, load_tokenizer, make_policy, tokenizer_hash
from pipeline.workers import Ctx, progress_bar, run_pool, tokenize_unit, write_unit

__all__ = ['PrepareArgs', 'prepare']

STAGING_DIRNAME = '.rlp-data'
_MAX_SEQ_LEN = SIZE_LIMIT // 8  # a full sample of uint32 tokens must fit in a default shard twice over


def _check_args(a: PrepareArgs) -> None:
    if a.seq_len < 2 or a.seq_len > _MAX_SEQ_LEN:
        raise UsageError(
            f'--seq-len {a.seq_len} is out of range; rule: 2 <= seq_len <= {_MAX_SEQ_LEN} (a sample must '
            'hold a token and its successor, and fit in one 64 MB shard); fix: pass e.g. --seq-len 2048'
        )
    if a.workers < 1:
        raise UsageError(f'--workers {a.workers} is invalid; rule: at least 1; fix: pass --workers 1 or more')
    if not 0 < a.shard_mb < 4096 or a.seq_len * 4 + 64 > a.shard_mb * (1 << 20):
        raise UsageError(
            f'--shard-mb {a.shard_mb} is invalid for --seq-len {a.seq_len}; rule: one sample must fit in a '
            'shard and shards stay below 4 GiB (uint32 offsets); fix: omit it (default 64)'
        )
    if not a.chunk_mb > 0:
        raise UsageError(f'--chunk-mb {a.chunk_mb} is invalid; rule: > 0; fix: omit it (default 16)')
    if a.pack not in ('concat', 'none'):
        raise UsageError(f'--pack {a.pack!r} is invalid; rule: concat or none; fix: pass --pack concat')
    if a.on_bad_record not in ('skip', 'fail'):
        raise UsageError(f'--on-bad-record {a.on_bad_record!r} is invalid; rule: skip or fail')


def _staging_root(a: PrepareArgs) -> Path:
    if a.staging:
        return Path(a.staging)
    if not remote.is_remote(a.out):
        return Path(a.out) / STAGING_DIRNAME
    cache = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache')
    return cache / 'rlp-data' / xxhash.xxh64(a.out.encode()).hexdigest()


def _input_hashes(specs, staging: Path) -> list[list[tuple[str, str]]]:
    """Per input, ``(relative file name, xxh64)`` of its files; cached by (path, size, mtime) in the staging."""
    cache_path = staging / 'hashes.json'
    cache = read_json(cache_path) or {}
    out = []
    for spec in specs:
        named = []
        for f in spec.files:
            st = os.stat(f)
            key = f'{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}'
            if key not in cache:
                cache[key] = hash_file(f)
            named.append((relative_name(f, spec.source.split('?')[0]), cache[key]))
        out.append(named)
    write_json_atomic(cache_path, cache)
    return out


def prepare(a: PrepareArgs, log=print) -> dict:
    """Run the whole preparation; return the summary dict (also printed through ``log``)."""
    _check_args(a)
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    t_start = time.monotonic()
    if remote.is_remote(a.out):
        remote.check_output_location(a.out)
    elif Path(a.out).is_file():
        raise DataError(
            f'--out {a.out!r} is a file; rule: the output is a folder or an object-store prefix; fix: '
            'choose another path'
        )
    tok = load_tokenizer(a.tokenizer)
    policy = make_policy(tok, a.bos_text, a.eos_text)
    vocab_size = len(tok)
    dtype = choose_dtype(a.dtype, vocab_size)
    staging_root = _staging_root(a)
    created_out = not remote.is_remote(a.out) and not Path(a.out).exists()
    created_staging = not staging_root.exists()
    try:
        return _prepare(a, log, pub, tok, policy, vocab_size, dtype, staging_root, t_start)
    except remote.StoreError:  # an object-store outage: keep the finished work, as a crash does, for the rerun
        raise
    except DataError:  # a user error: leave nothing behind that this run created (a crash or Ctrl-C keeps it)
        if created_out:
            shutil.rmtree(a.out, ignore_errors=True)
        elif created_staging:
            shutil.rmtree(staging_root, ignore_errors=True)
        raise


def _prepare(a, log, pub, tok, policy, vocab_size, dtype, staging_root: Path, t_start: float) -> dict:
    staging_root.mkdir(parents=True, exist_ok=True)
    with lock_staging(staging_root):  # held (and its file closed) until the run returns or raises
        return _prepare_locked(a, log, pub, tok, policy, vocab_size, dtype, staging_root, t_start)


def _prepare_locked(a, log, pub, tok, policy, vocab_size, dtype, staging_root: Path, t_start: float) -> dict:
    chunk_bytes = max(1, int(a.chunk_mb * (1 << 20)))
    specs = expand_inputs(
        a.inputs,
        staging_root,
        chunk_bytes,
        chunk_rows=max(1, chunk_bytes // 1024),
        exclude=() if remote.is_remote(a.out) else (a.out,),
    )
    hashes = _input_hashes(specs, staging_root)
    tok_info = {'name': a.tokenizer, 'class': type(tok).__name__, 'vocab_size': vocab_size, 'hash': tokenizer_hash(tok)}
    identity = {
        'arguments': a.dataset_arguments(),
        'tool': tool_version(),
        'tokenizer': tok_info['hash'],
        'inputs': hashes,
    }
    fingerprint = 'xxh64:' + xxhash.xxh64(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    run_key = 'xxh64:' + xxhash.xxh64(f'{fingerprint}|{a.chunk_mb}'.encode()).hexdigest()
    state = pub.existing_output(a.out, staging_root, fingerprint, a.overwrite)
    if state == 'complete':
        shutil.rmtree(staging_root, ignore_errors=True)
        log(f'rlp-data: {a.out} already holds this dataset (same manifest fingerprint); nothing to do')
        return {'status': 'complete'}
    staging_root.mkdir(parents=True, exist_ok=True)
    old_state = read_json(staging_root / 'state.json')
    if old_state is not None and old_state.get('run_key') != run_key:
        raise DataError(
            f'the staging folder {str(staging_root)!r} belongs to a run with other settings (e.g. '
            '--chunk-mb); fix: repeat the original command or pass --overwrite'
        )
    write_json_atomic(staging_root / 'state.json', {'fingerprint': fingerprint, 'run_key': run_key})
    staging = Staging(staging_root)
    groups = [g for spec in specs for g in spec.groups]

    counters = (mp.Value('q', 0), mp.Value('q', 0))  # documents, tokens: shared with the workers for the bar
    ctx = Ctx(a, staging_root, dtype, run_key, tok, policy, counters)
    bar = progress_bar(a.progress)

    # Phase 1: tokenise every group without a valid marker.
    done1 = {g.index for g in groups if (staging.group_marker(g.index) or {}).get('fingerprint') == run_key}
    todo1 = [g for g in groups if g.index not in done1]
    t1 = time.monotonic()
    run_pool(tokenize_unit, todo1, ctx, a.workers, bar, 'tokenise')
    t_tok = time.monotonic() - t1
    markers = [staging.group_marker(g.index) for g in groups]
    counts = [m['tokens'] for m in markers]
    total_docs = sum(m['documents'] for m in markers)
    total_tokens = sum(counts)
    empty = sum(m['empty'] for m in markers)
    bad = sum(m['bad'] for m in markers)
    if total_docs == 0:
        raise DataError(
            f'empty corpus: the inputs hold 0 usable documents ({empty} empty, {bad} bad records skipped); '
            'rule: at least one non-empty document is needed; fix: check the inputs and --text-field'
        )
    if a.pack == 'concat':
        n_samples, dropped = concat_layout(total_tokens, a.seq_len)
        group_sample_offsets = None
    else:
        per_group = [
            int(none_sample_counts(TokenStream(staging, counts, dtype).doc_lengths(g.index), a.seq_len).sum())
            if counts[g.index]
            else 0
            for g in groups
        ]
        group_sample_offsets = [0] + list(itertools.accumulate(per_group))
        n_samples, dropped = group_sample_offsets[-1], 0
    if n_samples == 0:
        raise DataError(
            f'the corpus has {total_tokens} tokens, fewer than one sample of --seq-len {a.seq_len}; rule: '
            'concat packing drops the final partial sample; fix: lower --seq-len, add data or use '
            '--pack none'
        )

    # Phase 2: cut the global sample sequence into fixed ranges (parts) and write those without a valid marker.
    shard_bytes = int(a.shard_mb * (1 << 20))
    per_part = samples_per_part(a.seq_len, np.dtype(dtype).itemsize, shard_bytes)
    n_parts = len(part_ranges(n_samples, per_part))
    ctx.layout = {
        'token_counts': counts,
        'n_samples': n_samples,
        'samples_per_part': per_part,
        'shard_bytes': shard_bytes,
        'group_sample_offsets': group_sample_offsets,
    }
    done2 = {j for j in range(n_parts) if (read_json(staging.part_marker(j)) or {}).get('fingerprint') == run_key}
    todo2 = [j for j in range(n_parts) if j not in done2]
    for j in todo2:
        staging.clear_part(j)
    run_pool(write_unit, todo2, ctx, a.workers, bar, 'write')
    if bar is not None:
        bar.close()
    parts = [read_json(staging.part_marker(j)) for j in range(n_parts)]
    with_data = [(m['part'], m['shards']) for m in parts if m['samples']]
    samples = sum(m['samples'] for m in parts)
    assert samples == n_samples, (samples, n_samples)

    inputs = []
    for spec, named in zip(specs, hashes):
        ms = [markers[g.index] for g in spec.groups]
        content = (
            combine_hashes(named)
            if named
            else combine_hashes([(f'shard{k}', m['text_hash']) for k, m in enumerate(ms)])
        )
        inputs.append(
            {
                'source': spec.source,
                'kind': spec.kind,
                'files': len(named),
                'content_hash': content,
                'documents': sum(m['documents'] for m in ms),
                'tokens': sum(m['tokens'] for m in ms),
                'empty_documents_skipped': sum(m['empty'] for m in ms),
                'bad_records_skipped': sum(m['bad'] for m in ms),
            }
        )
    counts_out = {
        'documents': total_docs,
        'tokens': total_tokens,
        'samples': samples,
        'dropped_tail_tokens': dropped,
        'empty_documents_skipped': empty,
        'bad_records_skipped': bad,
        'shards': sum(len(s) for _, s in with_data),
    }
    manifest = build_manifest(
        tokenizer=tok_info,
        policy=policy.to_json(),
        seq_len=a.seq_len,
        dtype=dtype,
        pack=a.pack,
        columns=columns_for(a.pack, dtype, a.seq_len),
        counts=counts_out,
        inputs=inputs,
        arguments=a.dataset_arguments(),
    )
    manifest['fingerprint'] = fingerprint
    try:
        pub.publish(a.out, staging.parts, [n for n, _ in with_data], merged_index(with_data), manifest)
    except DataError as exc:  # every part is written: whatever the store said, keep them for the rerun
        raise remote.StoreError(
            f'{exc}, then rerun the same command: the finished work in {str(staging_root)!r} is kept and reused'
        ) from None
    shutil.rmtree(staging_root, ignore_errors=True)

    elapsed = time.monotonic() - t_start
    summary = {
        'status': 'written',
        **counts_out,
        'groups': len(groups),
        'groups_resumed': len(done1),
        'parts_resumed': len(done2),
        'seconds': elapsed,
        'tokens_per_second': (sum(markers[g.index]['tokens'] for g in todo1) / t_tok) if todo1 and t_tok else 0.0,
        'bad_examples': [e for m in markers for e in m['bad_examples']][:3],
    }
    _print_summary(a, summary, log)
    return summary


def _print_summary(a: PrepareArgs, s: dict, log) -> None:
    log(f'rlp-data: wrote {a.out}')
    log(
        f'  documents {s["documents"]:,} | tokens {s["tokens"]:,} | samples {s["samples"]:,} '
        f'(seq_len {a.seq_len}, pack {a.pack}) | shards {s["shards"]}'
    )
    log(
        f'  dropped tail tokens {s["dropped_tail_tokens"]:,} | empty documents skipped '
        f'{s["empty_documents_skipped"]:,} | bad records skipped {s["bad_records_skipped"]:,}'
    )
    for example in s['bad_examples']:
        log(f'    e.g. {example}')
    log(
        f'  groups {s["groups"]} ({s["groups_resumed"]} already tokenised, {s["parts_resumed"]} parts already '
        f'written) | throughput {s["tokens_per_second"]:,.0f} tokens/s tokenising with {a.workers} worker(s) | '
        f'{s["seconds"]:.1f} s total'
    )
