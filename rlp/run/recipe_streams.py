"""The ``data`` section of a recipe: the streams (MDS datasets, local or remote) and how they are mixed.

Part of the recipe schema (:mod:`rlp.run.recipe_schema`, which holds the other sections and the whole
:class:`~rlp.run.recipe_schema.Recipe`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from rlp.run.recipe_checks import check_stream_locations
from rlp.strictcfg import ConfigError

__all__ = ['TOKEN_DTYPES', 'DataConfig', 'StreamConfig']

TOKEN_DTYPES = ('uint8', 'uint16', 'uint32', 'int16', 'int32', 'int64')


@dataclass
class StreamConfig:
    """One named MDS stream of the training mixture (a folder written by ``rlp-data prepare`` or llm-foundry).

    Attributes:
        remote: where the shards live: ``s3://``/``gs://``/... or a local folder. None reads ``local`` directly.
        local: local cache folder, distinct per stream. Default: ``{data.cache_dir}/{run_name}/{stream name}``.
        split: sub-folder of ``remote``/``local`` holding ``index.json``; None = the folder itself.
        proportion: relative weight of the stream (normalised over streams). Cannot be mixed with
            ``repeat``/``choose``.
        repeat: absolute weighting: each epoch sees the stream this many times.
        choose: absolute weighting: each epoch sees exactly this many samples of the stream.
        token_dtype: only for legacy llm-foundry datasets whose ``tokens`` column is raw ``bytes``: their dtype
            (e.g. int32), one of ``uint8``, ``uint16``, ``uint32``, ``int16``, ``int32``, ``int64``.
        download_retry: download re-attempts per shard before giving up. None = streaming's default (2).
        download_timeout: seconds to wait for one shard's download before failing. None = streaming's default
            (60).
        validate_hash: hash algorithm (e.g. ``sha1``, ``xxh64``) of ``index.json`` that streaming checks each
            downloaded shard with, and that training's own check prefers. None = streaming checks nothing;
            training still checks every shard once per process against ``index.json`` (xxh64 when recorded;
            :mod:`rlp.run.integrity`).
        keep_zip: keep the compressed form of downloaded shards after decompressing them. None = streaming's
            default (keep only when the remote is local).
        allow_tokenizer_mismatch: train although the stream's ``manifest.json`` names another tokenizer (other
            hash or vocabulary size) than ``tokenizer.name_or_path``; only for tokenizers known to give the same
            ids. False = refuse at start-up.
    """

    remote: Optional[str] = None
    local: Optional[str] = None
    split: Optional[str] = None
    proportion: Optional[float] = None
    repeat: Optional[float] = None
    choose: Optional[int] = None
    token_dtype: Optional[str] = None
    download_retry: Optional[int] = None
    download_timeout: Optional[float] = None
    validate_hash: Optional[str] = None
    keep_zip: Optional[bool] = None
    allow_tokenizer_mismatch: bool = False

    def __post_init__(self):
        if self.token_dtype is not None and self.token_dtype not in TOKEN_DTYPES:
            raise ConfigError(f'token_dtype {self.token_dtype!r} is not supported; use one of {TOKEN_DTYPES}')
        for name in ('proportion', 'repeat', 'choose'):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f'{name}={value} must be > 0; drop the stream instead of giving it weight 0')


@dataclass
class DataConfig:
    """The training data: a StreamingDataset mixture of named streams plus loader settings.

    Attributes:
        seq_len: tokens per sample fed to the model; longer samples are truncated, shorter ones padded (pack
            mode none). At least 2.
        streams: named streams; at least one. All use ``proportion`` or all use ``repeat``/``choose`` (or no
            weight).
        cache_dir: root of the default per-stream local caches.
        shuffle: iterate the mixture in a seeded random order (false: sequential order).
        shuffle_seed: seed of the shuffle. None = the recipe's ``seed``.
        shuffle_algo: streaming's shuffling algorithm (``py1e``, ``py1br``, ``py1b``, ``py1s``, ``py2s``,
            ``naive``).
        shuffle_block_size: samples per shuffle block. None = streaming's default (4M / num_canonical_nodes,
            at least 2^18).
        num_canonical_nodes: keep it fixed across launches: the global sample order then does not depend on
            the number of ranks. None = streaming derives it from the first launch's node count.
        partition_algo: streaming's algorithm for partitioning samples over nodes, ranks and workers
            (``relaxed`` or ``orig``).
        epoch_size: samples per epoch over the whole mixture. None = the streams' total (weighted).
        predownload: samples each worker downloads ahead. None = streaming's default (8 x device batch).
        cache_limit: most bytes of shards kept in the local caches (e.g. ``100gb``); least recently used shards
            are evicted beyond it. None = no eviction.
        sampling_method: how a stream's partial repeat (e.g. ``repeat: 1.5``) picks its samples: ``balanced``
            (different samples each epoch, spread over the shards) or ``fixed`` (the same samples every epoch).
        batching_method: how streams are combined into batches: ``random`` (each batch from the whole
            mixture), ``stratified`` (each batch holds every stream in proportion), ``per_stream`` (each global
            batch from one stream) or ``device_per_stream`` (each device batch from one stream).
        num_workers: DataLoader worker processes (0 = load in the training process); >= 0.
        prefetch_factor: batches each worker loads ahead (with ``num_workers`` > 0). None = 2.
        pin_memory: DataLoader ``pin_memory`` (page-locked host batches, faster copies to the GPU).
        eos_token_id: EOS id used to derive document starts for streams without a ``doc_starts`` column.
            None = the tokenizer's.
        pad_token_id: padding id for samples shorter than ``seq_len``. None = the tokenizer's pad (else EOS).
        clean_stale_shared_memory: call streaming's ``clean_stale_shared_memory()`` once at start-up (it is not
            liveness-aware: turn it off when other streaming jobs run on the same host, e.g. parallel test
            processes).
    """

    seq_len: int
    streams: dict[str, StreamConfig] = field(default_factory=dict)
    cache_dir: str = './cache/streams'
    shuffle: bool = True
    shuffle_seed: Optional[int] = None
    shuffle_algo: str = 'py1e'
    shuffle_block_size: Optional[int] = None
    num_canonical_nodes: Optional[int] = 1
    partition_algo: str = 'relaxed'
    epoch_size: Optional[int] = None
    predownload: Optional[int] = None
    cache_limit: Optional[str] = None
    sampling_method: Literal['balanced', 'fixed'] = 'balanced'
    batching_method: Literal['random', 'stratified', 'per_stream', 'device_per_stream'] = 'random'
    num_workers: int = 0
    prefetch_factor: Optional[int] = None
    pin_memory: bool = False
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    clean_stale_shared_memory: bool = True

    def __post_init__(self):
        if self.seq_len < 2:
            raise ConfigError(f'data.seq_len={self.seq_len} must be >= 2 (a next-token target needs a prefix)')
        if not self.streams:
            raise ConfigError(
                'data.streams is empty: name at least one stream, e.g. '
                'data.streams.web: {remote: s3://bucket/web, split: train}'
            )
        families = {
            name: (
                'proportion'
                if s.proportion is not None
                else 'repeat/choose'
                if (s.repeat is not None or s.choose is not None)
                else 'none'
            )
            for name, s in self.streams.items()
        }
        for name, s in self.streams.items():
            if s.proportion is not None and (s.repeat is not None or s.choose is not None):
                raise ConfigError(
                    f'data.streams.{name} sets proportion together with repeat/choose; use one weighting family'
                )
            check_stream_locations(name, s.remote, s.local)
            if s.remote is None and s.local is None:
                raise ConfigError(
                    f'data.streams.{name} has neither remote nor local; set remote (s3://... or a '
                    f'folder) or local (a folder holding index.json)'
                )
        seen: dict[tuple[str, str], str] = {}
        for name, s in self.streams.items():
            if s.local is None:
                continue
            key = (os.path.normpath(s.local), s.split or '')
            if key in seen:
                raise ConfigError(
                    f'data.streams.{seen[key]} and data.streams.{name} share the local folder {s.local!r}'
                    f'{f" (split {s.split!r})" if s.split else ""}; streaming needs one local folder per stream; fix: '
                    f'give one of them another local folder, or merge them into one stream'
                )
            seen[key] = name
        if 'proportion' in families.values() and set(families.values()) != {'proportion'}:
            raise ConfigError(
                f'data.streams mix weighting families {families}: streaming refuses relative '
                f'(proportion) and absolute (repeat/choose/none) weights in one mixture; give every '
                f'stream a proportion, or none of them'
            )
        if self.num_workers < 0:
            raise ConfigError(f'data.num_workers={self.num_workers} must be >= 0')
