"""Training data: a StreamingDataset mixture of MDS streams, decoded to token samples and collated to the batch
contract the RLP algorithm reads.

Key decisions:

* Sample identity. ``sample_id`` is the index streaming hands to ``get_item``: the sample's global index in the
  mixture, the same on every world size and after a resume. The algorithm keys its random draws on it.
* Labels are built here: ``labels == input_ids`` (HF models shift inside). EOS is a real target; only padding
  (samples shorter than ``seq_len``, pack mode ``none``) is masked with -100. This avoids the collator bug where
  ``pad == eos`` masks every EOS of packed data (transformers#23530).
* Document starts reach the algorithm as ``segment_ids``: from the MDS ``doc_starts`` column written by
  ``rlp-data prepare``; for streams without it (llm-foundry datasets) a document starts after every EOS.
* Column formats: ``tokens`` as any integer ``ndarray`` (ours: uint16/uint32, llm-foundry: int32) or legacy
  raw ``bytes``, whose dtype must be declared per stream (``token_dtype``), since reading int32 bytes as the
  wrong width silently yields garbage ids (llm-foundry#452).
* Integrity: every shard is checked against ``index.json``'s hashes the first time this process opens it, and
  every sample's ids against the model's vocabulary (:mod:`rlp.run.integrity`); a failure stops the run with
  :class:`~rlp.run.integrity.DataIntegrityError`, one line naming the stream, the shard and the fix.

Batch (dict of CPU tensors), B = device batch, L = ``seq_len``:
``input_ids`` (B, L) int64, ``labels`` (B, L) int64, ``attention_mask`` (B, L) int64, ``segment_ids`` (B, L)
int64 (0 for the first token, +1 at every document start; padding continues the last segment), ``sample_id``
(B,) int64.
"""

from __future__ import annotations

import os
from time import sleep
from typing import Any, Optional, Sequence

import numpy as np
import torch
from streaming import Stream, StreamingDataset
from streaming.base.dataset import TICK, _ShardState
from torch.utils.data import DataLoader

from rlp.run.integrity import DataIntegrityError, ShardChecker
from rlp.run.recipe_schema import ConfigError, DataConfig

__all__ = [
    'TokenSampleDataset',
    'build_dataloader',
    'build_streams',
    'collate_samples',
    'doc_starts_from_eos',
    'segment_ids_from_starts',
]


def segment_ids_from_starts(length: int, doc_starts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Segment index of every token of a sample.

    ``seg[i] = #{s in doc_starts : 0 < s <= i}``: 0 for the first token, +1 at every recorded document start
    (a start at 0 or outside ``[0, length)`` changes nothing).

    Args:
        length: L, tokens in the sample.
        doc_starts: positions where documents start (any order, duplicates allowed).

    Returns:
        (L,) int64.
    """
    marks = np.zeros(length, dtype=np.int64)
    starts = np.asarray(doc_starts, dtype=np.int64).reshape(-1)
    starts = np.unique(starts[(starts > 0) & (starts < length)])
    marks[starts] = 1
    return np.cumsum(marks)


def doc_starts_from_eos(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """Document starts implied by EOS separators: the position after each EOS (the EOS ends its document)."""
    after = np.nonzero(np.asarray(tokens) == eos_id)[0] + 1
    return after[after < len(tokens)].astype(np.int64)


def build_streams(cfg: DataConfig, run_name: str) -> list[Stream]:
    """One ``streaming.Stream`` per named stream, each with its own local cache folder."""
    streams = []
    for name, s in cfg.streams.items():
        local = s.local
        if local is None:
            local = os.path.join(cfg.cache_dir, run_name, name) if s.remote is not None else None
        if s.remote is None:
            folder = os.path.join(local, s.split or '')
            if not os.path.isfile(os.path.join(folder, 'index.json')):
                raise ConfigError(
                    f'data.streams.{name}: no index.json in local folder {folder!r}; prepare it with '
                    f'`rlp-data prepare ... --out {local}` or set remote'
                )
        kwargs = {
            k: getattr(s, k)
            for k in (
                'split',
                'proportion',
                'repeat',
                'choose',
                'download_retry',
                'download_timeout',
                'validate_hash',
                'keep_zip',
            )
            if getattr(s, k) is not None
        }
        streams.append(Stream(remote=s.remote, local=local, **kwargs))
    return streams


def _counted_as_exited(thread: Any, it: Any) -> None:
    """Run streaming's background-thread loop ``thread(it)``; if it raises, note its exit on ``it`` first."""
    try:
        thread(it)
    except BaseException:
        it.on_exit()
        raise


class TokenSampleDataset(StreamingDataset):
    """A StreamingDataset whose items are ``{'tokens', 'doc_starts', 'sample_id'}`` numpy/int values.

    Args:
        streams: the mixture (see :func:`build_streams`).
        token_dtypes: per stream index, the dtype of a legacy ``bytes`` tokens column (None: ndarray column).
        seq_len: samples longer than this are truncated.
        eos_token_id: EOS id, used when a stream has no ``doc_starts`` column.
        stream_names: per stream index, its name in the recipe (for error messages). None = ``stream<i>``.
        vocab_size: the model's vocabulary (embedding rows); a sample with an id >= it stops the run. None = not
            checked.
        **kwargs: passed to ``StreamingDataset`` (``batch_size`` is required for deterministic resumption).
    """

    def __init__(
        self,
        *,
        streams: Sequence[Stream],
        token_dtypes: Sequence[Optional[str]],
        seq_len: int,
        eos_token_id: Optional[int],
        stream_names: Optional[Sequence[str]] = None,
        vocab_size: Optional[int] = None,
        **kwargs: Any,
    ):
        super().__init__(streams=streams, **kwargs)
        self.token_dtypes = list(token_dtypes)
        self.seq_len = seq_len
        self.eos_token_id = eos_token_id
        self.vocab_size = vocab_size
        self.stream_names = list(stream_names or [f'stream{i}' for i in range(len(self.streams))])
        self._checkers = [
            ShardChecker(name, s.remote, os.path.join(s.local, s.split) if s.split else s.local, s.validate_hash)
            for name, s in zip(self.stream_names, self.streams)
        ]
        self._checked: set[int] = set()  # shards checked by this process
        self._failure: Optional[BaseException] = None  # the first failure of any thread, raised by the iterator

    def _stream_of(self, sample_id: int) -> int:
        shard_id, _ = self.spanner[sample_id]
        return int(self.stream_per_shard[shard_id])

    # Integrity checks (rlp.run.integrity). streaming 0.13 runs prepare_shard in two background threads per
    # iterator and re-raises their exceptions inside a future's done-callback (StreamingDataset.on_exception,
    # from mosaicml/streaming#304): concurrent.futures logs that as a traceback, and the epoch then ends early as
    # if it were complete (tests/rlp/run/test_data_integrity.py shows it). So any failure (a failed check, a
    # missing shard, a download out of retries) is kept in ``_failure``, on_exception swallows it (setting the stop
    # event as streaming does), and get_item/__iter__ raise it in the iterating thread. A failed download or
    # decompression also leaves the shard PREPARING, where streaming's blocking wait never ends: _wait_prepared.

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """streaming's prepare_shard, with the shard's files checked the first time this process needs them."""
        if self._failure is not None:
            raise self._failure
        if shard_id in self._checked:
            return super().prepare_shard(shard_id, blocking)
        checker, shard = self._checkers[int(self.stream_per_shard[shard_id])], self.shards[shard_id]
        try:
            done = checker.check_present(shard)  # before streaming reads or decompresses anything
            super().prepare_shard(shard_id, False)
            if blocking:
                self._wait_prepared(shard_id)
            if done or checker.check_present(shard):  # a fresh download/decompression is checked at once
                self._checked.add(shard_id)
        except DataIntegrityError as err:
            self._failure = err
            raise
        except Exception as exc:
            self._failure = checker.explain(shard, exc)
            if self._failure is None:
                raise
            raise self._failure from None

    def _wait_prepared(self, shard_id: int) -> None:
        """Wait while another thread prepares ``shard_id``; raise as soon as any thread has failed.

        streaming 0.13's blocking prepare_shard waits for a shard in state PREPARING with no way out, and a download
        or decompression that fails leaves the shard PREPARING: a training process that reaches a damaged shard
        while its background thread is still decompressing it waits forever (tests/rlp/run/test_data_integrity.py
        shows it). So the wait is done here, and it ends with the kept failure.
        """
        while self._shard_states[shard_id] == _ShardState.PREPARING:
            if self._failure is not None:  # kept by prepare_shard or on_exception, before the stop event is set
                raise self._failure
            sleep(TICK)

    # streaming 0.13 ends an epoch (_Iterator.exit) by waiting until two of its three loops have called on_exit, which
    # its background threads do only when they return normally: once both have raised, the end of the epoch waits
    # forever (tests/rlp/run/test_data_integrity.py shows it). A thread that raises is counted here.

    def _prepare_thread(self, it: Any) -> None:
        _counted_as_exited(super()._prepare_thread, it)

    def _ready_thread(self, it: Any) -> None:
        _counted_as_exited(super()._ready_thread, it)

    def on_exception(self, future: Any) -> None:
        """streaming's background-thread error hook. Any failure (a failed check, a missing shard, a download that
        ran out of retries) is kept and raised by the iterating thread: streaming's own hook only logs it and the
        epoch then ends early as if it were complete, silently training on less data."""
        exc = future.exception()
        if exc is None:
            return
        if self._failure is None:
            self._failure = exc
        self._event.set()

    def __iter__(self):
        if self._failure is not None:
            raise self._failure
        yield from super().__iter__()
        if self._failure is not None:
            raise self._failure

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        """Decode sample ``sample_id`` (its global index in the mixture) into tokens and document starts."""
        if self._failure is not None:
            raise self._failure
        shard_id, _ = self.spanner[sample_id]
        if shard_id not in self._checked:
            self.prepare_shard(shard_id)
        raw = super().get_item(sample_id, retry)
        if 'tokens' not in raw:
            raise ValueError(
                f'sample {sample_id} has columns {sorted(raw)}, expected a tokens column: prepare '
                f'the data with rlp-data prepare (or llm-foundry with --concat_tokens)'
            )
        tokens = raw['tokens']
        stream = int(self.stream_per_shard[shard_id])
        if isinstance(tokens, bytes | bytearray):
            dtype = self.token_dtypes[stream]
            if dtype is None:
                raise ValueError(
                    f'stream {stream} stores tokens as raw bytes; declare their dtype with '
                    f'data.streams.<name>.token_dtype (llm-foundry wrote int64 by default, '
                    f'int32 in newer converters)'
                )
            tokens = np.frombuffer(tokens, dtype=dtype)
        tokens = np.asarray(tokens).astype(np.int64)[: self.seq_len]
        if (
            self.vocab_size is not None
            and len(tokens)
            and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.vocab_size
        ):
            bad = int(tokens.max()) if int(tokens.max()) >= self.vocab_size else int(tokens.min())
            raise DataIntegrityError(
                f'data.streams.{self.stream_names[stream]}: sample {sample_id} holds token id {bad} but the model '
                f'has {self.vocab_size} embeddings (ids 0..{self.vocab_size - 1}); the data was prepared with '
                f'another tokenizer (or token_dtype is wrong); fix: train with the tokenizer and model the data '
                f'was prepared for, or prepare it again with this tokenizer'
            )
        if 'doc_starts' in raw:
            starts = np.asarray(raw['doc_starts'], dtype=np.int64)
        elif self.eos_token_id is not None:
            starts = doc_starts_from_eos(tokens, self.eos_token_id)
        else:
            starts = np.zeros(0, dtype=np.int64)
        return {'tokens': tokens, 'doc_starts': starts, 'sample_id': int(sample_id)}


def collate_samples(samples: list[dict[str, Any]], seq_len: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack decoded samples into the training batch (see the module docstring for the contract).

    Samples shorter than ``seq_len`` are right-padded with ``pad_token_id``, ``attention_mask`` 0 and label -100.
    """
    batch_size = len(samples)
    input_ids = np.full((batch_size, seq_len), pad_token_id, dtype=np.int64)  # (B, L)
    attention = np.zeros((batch_size, seq_len), dtype=np.int64)  # (B, L)
    segments = np.zeros((batch_size, seq_len), dtype=np.int64)  # (B, L)
    for i, sample in enumerate(samples):
        tokens = sample['tokens'][:seq_len]
        n = len(tokens)
        input_ids[i, :n] = tokens
        attention[i, :n] = 1
        seg = segment_ids_from_starts(n, sample['doc_starts'])
        segments[i, :n] = seg
        segments[i, n:] = seg[-1] if n else 0
    labels = np.where(attention == 1, input_ids, -100)
    return {
        'input_ids': torch.from_numpy(input_ids),
        'labels': torch.from_numpy(labels),
        'attention_mask': torch.from_numpy(attention),
        'segment_ids': torch.from_numpy(segments),
        'sample_id': torch.tensor([s['sample_id'] for s in samples], dtype=torch.int64),
    }


class _Collate:
    """Picklable collate function (DataLoader workers may be spawned)."""

    def __init__(self, seq_len: int, pad_token_id: int):
        self.seq_len = seq_len
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_samples(samples, self.seq_len, self.pad_token_id)


def build_dataloader(
    cfg: DataConfig,
    *,
    run_name: str,
    device_batch_size: int,
    seed: int,
    eos_token_id: Optional[int],
    pad_token_id: Optional[int],
    vocab_size: Optional[int] = None,
) -> DataLoader:
    """The training DataLoader over the stream mixture.

    ``batch_size`` goes to both the dataset (deterministic, elastic resumption) and the loader; ``drop_last``
    and persistent workers avoid streaming's uneven-epoch barrier hangs (streaming#617). ``vocab_size`` (the
    model's embedding rows) turns an out-of-range token id into a one-line error.
    """
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else eos_token_id
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (pad_token_id if pad_token_id is not None else eos)
    if pad is None:
        raise ConfigError('no padding id: the tokenizer has neither pad nor eos token; set data.pad_token_id')
    dataset = TokenSampleDataset(
        streams=build_streams(cfg, run_name),
        token_dtypes=[s.token_dtype for s in cfg.streams.values()],
        seq_len=cfg.seq_len,
        eos_token_id=eos,
        stream_names=list(cfg.streams),
        vocab_size=vocab_size,
        batch_size=device_batch_size,
        shuffle=cfg.shuffle,
        shuffle_seed=cfg.shuffle_seed if cfg.shuffle_seed is not None else seed,
        shuffle_algo=cfg.shuffle_algo,
        shuffle_block_size=cfg.shuffle_block_size,
        num_canonical_nodes=cfg.num_canonical_nodes,
        partition_algo=cfg.partition_algo,
        epoch_size=cfg.epoch_size,
        predownload=cfg.predownload,
        cache_limit=cfg.cache_limit,
        sampling_method=cfg.sampling_method,
        batching_method=cfg.batching_method,
    )
    extra = {}
    if cfg.num_workers > 0:
        extra = {'persistent_workers': True, 'prefetch_factor': cfg.prefetch_factor or 2}
    return DataLoader(
        dataset,
        batch_size=device_batch_size,
        collate_fn=_Collate(cfg.seq_len, pad),
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=cfg.pin_memory,
        **extra,
    )
