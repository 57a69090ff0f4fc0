"""Phase 1 of ``prepare`` for one group: read its documents, tokenise them, stage the token stream, mark it done.

Documents are tokenised in batches of 512 and appended to the group's raw token stream and document lengths in the
staging folder (:class:`~pipeline.storage.staging.GroupTokenWriter`); the done marker (counts, a few bad-record
examples and, for ``hf:`` inputs, a hash of the texts as read) is written last. Empty documents are skipped and
counted; bad records fail the run or are skipped and counted, as ``--on-bad-record`` says. The result depends only
on the group and the arguments.
"""

from __future__ import annotations

from dataclasses import asdict

import xxhash

from pipeline.errors import DataError
from pipeline.inputs.groups import Group
from pipeline.inputs.readers import iter_records
from pipeline.storage.staging import GroupTokenWriter, Staging
from pipeline.tokenize.tokenizer import TokenPolicy, encode_batch, to_array

__all__ = ['tokenize_group']

_BATCH_DOCS = 512


def tokenize_group(
    group: Group,
    *,
    tok,
    policy: TokenPolicy,
    dtype: str,
    staging: Staging,
    fingerprint: str,
    text_field: str,
    on_bad_record: str,
    counters: tuple = (),
) -> dict:
    """Read, tokenise and stage one group; write and return its done marker.

    ``counters``: optional shared ``(documents, tokens)`` values (``multiprocessing.Value``) advanced per batch
    for the progress bar.
    """
    writer = GroupTokenWriter(staging, group.index, dtype)
    docs = tokens = empty = bad = 0
    bad_examples: list[str] = []
    text_hash = xxhash.xxh64() if any(p.kind == 'hf' for p in group.pieces) else None
    batch: list[str] = []
    docs_counter, tokens_counter = counters if counters else (None, None)

    def flush() -> None:
        nonlocal tokens
        flat, lengths = encode_batch(tok, batch, policy)
        writer.append(to_array(flat, dtype), lengths)
        tokens += len(flat)
        if docs_counter is not None:
            with docs_counter.get_lock():
                docs_counter.value += len(batch)
            with tokens_counter.get_lock():
                tokens_counter.value += len(flat)
        batch.clear()

    for text, reason in iter_records(group, text_field):
        if reason is not None:
            if on_bad_record == 'fail':
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
        'fingerprint': fingerprint,
        'group': asdict(group),
        'documents': docs,
        'tokens': tokens,
        'empty': empty,
        'bad': bad,
        'bad_examples': bad_examples,
        'text_hash': 'xxh64:' + text_hash.hexdigest() if text_hash is not None else None,
    }
    writer.finish(marker)
    return marker
