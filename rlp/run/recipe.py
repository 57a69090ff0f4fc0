"""Recipe schema: one YAML file per run, validated into typed config objects before anything is built.

A recipe has the sections ``variables``, ``run_name``, ``seed``, ``model``, ``tokenizer``, ``data``, ``rlp``,
``trainer``, ``loggers`` and ``callbacks``. Every section is a dataclass built with :func:`rlp.strictcfg.build`,
so an unknown key at any depth is an error naming the key path and the allowed keys. ``rlp`` is parsed by
:class:`rlp.config.RLPConfig` (``rlp: null`` trains with the next-token loss only, the CPT baseline).

Values may reference ``${variables.NAME}``: a string that is exactly one reference takes the variable's value
and type, a reference inside a longer string is substituted as text. Command-line overrides ``key.sub=value``
are applied after loading and before resolution; values are parsed as YAML (``rlp=null``, ``trainer.lr=1e-5``).
An override assigns: ``data.streams={...}`` replaces the whole mapping; ``KEY=$delete`` removes KEY.

Base recipes. A recipe may start from another one with the top-level key ``base: FILE`` (a path relative to the
recipe's own folder, or absolute); the base may itself have a ``base`` (a chain; a cycle or a missing file is a
one-line error). The child is deep-merged onto its base:

* mapping onto mapping merges key by key, recursively; any other value (a scalar, a list, ``null``) replaces the
  base's value whole. So lists replace, and ``rlp: null`` turns off a base's ``rlp`` section.
* ``KEY: $delete`` removes the base's KEY, so the schema's default applies (use it for keys of free-form
  mappings such as ``trainer.fsdp``, or where ``null`` is not the default); deleting a key the base does not
  have is an error (a typo).
* a mapping holding ``$replace: true`` replaces the base's mapping instead of merging into it (e.g. a mixture
  child's ``data.streams``, so the base's streams are dropped, not kept beside the child's).

The directives ``$delete`` and ``$replace`` are recognised in mappings only (not inside lists). The order is: read
the base chain, merge, apply command-line overrides, resolve variables, build the typed objects; strict validation
sees only the merged result (an unknown key a child adds is refused as in any recipe), and the written
``resolved_config.yaml`` holds that merged result, without ``base``.

Every check of one section lives in that section's ``__post_init__`` and cross-section checks in
:class:`Recipe`'s, so ``load_recipe`` refuses everything that the recipe alone can tell is wrong. Checks that need
the launch (world size) live in :func:`validate_for_world`; checks that need the machine (is there a GPU) are in
:mod:`rlp.run.train`; checks that need the network (the save folder's bucket) live in :mod:`rlp.run.checkpoint`;
checks that need the tokenizer, the model or the data files are made where those are built (:mod:`rlp.run.models`,
:mod:`rlp.run.data`). Nothing here loads weights, so every recipe in ``recipes/`` validates on a laptop.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from rlp.config import RLPConfig
from rlp.run.recipe_checks import check_save_folder_scheme, check_stream_locations, load_yaml_file, parse_override
from rlp.strictcfg import ConfigError, build, to_dict

__all__ = [
    'DELETE',
    'REPLACE',
    'CallbacksConfig',
    'ConfigError',
    'DataConfig',
    'LoggersConfig',
    'ModelConfig',
    'OptimizerConfig',
    'Recipe',
    'SchedulerConfig',
    'StreamConfig',
    'TokenizerConfig',
    'TrainerConfig',
    'apply_overrides',
    'load_recipe',
    'merge_recipe_data',
    'parse_recipe',
    'read_recipe_data',
    'recipe_to_dict',
    'resolve_variables',
    'validate_for_world',
]

TOKEN_DTYPES = ('uint8', 'uint16', 'uint32', 'int16', 'int32', 'int64')

DELETE = '$delete'  # value that removes a key of the base recipe (in an override: of the recipe)
REPLACE = '$replace'  # key of a mapping (`$replace: true`) that replaces the base's mapping instead of merging


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
        if 'proportion' in families.values() and set(families.values()) != {'proportion'}:
            raise ConfigError(
                f'data.streams mix weighting families {families}: streaming refuses relative '
                f'(proportion) and absolute (repeat/choose/none) weights in one mixture; give every '
                f'stream a proportion, or none of them'
            )
        if self.num_workers < 0:
            raise ConfigError(f'data.num_workers={self.num_workers} must be >= 0')


@dataclass
class ModelConfig:
    """The HF causal LM: pretrained (``name_or_path``) or random-init from a config mapping (``config``).

    Attributes:
        name_or_path: hub name or local folder with weights, e.g. ``Qwen/Qwen3-1.7B``. Exactly one of
            ``name_or_path`` and ``config``.
        config: a transformers config as a mapping with ``model_type`` (random init); vocab size defaults to the
            tokenizer's length.
        pretrained: with ``name_or_path``: load its weights (true) or only its config and init randomly (false).
        torch_dtype: dtype the weights are loaded or created in. None = transformers' default (float32). These
            are the master weights the optimizer updates: keep them float32 and get bf16 compute from
            ``trainer.precision: amp_bf16`` (a 16-bit dtype needs ``trainer.low_precision_weights: true``).
        config_overrides: config fields set on top of the model's config (pretrained or not), e.g.
            ``{attn_pdrop: 0.0, resid_pdrop: 0.0, embd_pdrop: 0.0}`` to switch off GPT-2's dropout, which RLP
            refuses.
        attn_implementation: transformers' attention kernel. None = transformers' default for the model.
        trust_remote_code: allow the checkpoint's own modeling code (models transformers does not ship).
        revision: hub revision (branch, tag or commit) of ``name_or_path``. None = the default branch.
    """

    name_or_path: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    pretrained: bool = True
    torch_dtype: Optional[Literal['float32', 'bfloat16', 'float16']] = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    attn_implementation: Optional[Literal['eager', 'sdpa', 'flash_attention_2']] = None
    trust_remote_code: bool = False
    revision: Optional[str] = None

    def __post_init__(self):
        if (self.name_or_path is None) == (self.config is None):
            raise ConfigError(
                'model needs exactly one of name_or_path (pretrained HF model) or config '
                '(a mapping with model_type, for random init)'
            )
        if self.config is not None and 'model_type' not in self.config:
            raise ConfigError('model.config needs a model_type (e.g. llama, qwen3, gpt2)')


@dataclass
class TokenizerConfig:
    """The tokenizer.

    Attributes:
        name_or_path: hub name, local folder, or ``bundled`` (the small BPE shipped with the project, in
            ``pipeline/assets/tokenizer``).
        kwargs: extra keyword arguments of ``AutoTokenizer.from_pretrained`` (e.g. ``trust_remote_code``).
    """

    name_or_path: str = 'bundled'
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """The optimizer (``trainer.optimizer``).

    Attributes:
        name: ``decoupled_adamw`` (Composer's DecoupledAdamW: weight decay not scaled by the lr), ``adamw``
            (torch.optim.AdamW) or ``sgd`` (torch.optim.SGD, no momentum; ``betas``/``eps`` unused).
        lr: peak learning rate, > 0.
        betas: Adam's two moment decays.
        eps: Adam's denominator epsilon.
        weight_decay: weight decay (decoupled for ``decoupled_adamw``).
    """

    name: Literal['adamw', 'decoupled_adamw', 'sgd'] = 'decoupled_adamw'
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f'trainer.optimizer.lr={self.lr} must be > 0')
        if len(self.betas) != 2:
            raise ConfigError(f'trainer.optimizer.betas={self.betas} must have two values')


@dataclass
class SchedulerConfig:
    """The learning-rate schedule (``trainer.scheduler``), a multiplier on ``trainer.optimizer.lr``.

    Attributes:
        name: ``constant``, ``cosine_with_warmup`` (cosine decay from 1 to ``alpha_f`` over the run) or
            ``linear_with_warmup`` (linear decay from 1 to ``alpha_f``), each after a linear warmup.
        t_warmup: Composer time of the linear warmup from 0, e.g. ``100ba`` or ``0.05dur``; ``0ba`` = none.
        alpha_f: final multiplier of the decaying schedules (``cosine_with_warmup``: 0.1 ends at lr / 10).
    """

    name: Literal['constant', 'cosine_with_warmup', 'linear_with_warmup'] = 'constant'
    t_warmup: str = '0ba'
    alpha_f: float = 0.0

    def __post_init__(self):
        if not re.fullmatch(r'\d+(\.\d*)?(ba|ep|sp|tok|dur)', self.t_warmup):
            raise ConfigError(
                f'trainer.scheduler.t_warmup={self.t_warmup!r} is not a Composer time; '
                f'write e.g. 100ba, 0.05dur, or 0ba for no warmup'
            )


@dataclass
class TrainerConfig:
    """Composer Trainer settings: duration, batch sizes, optimisation, numerics, parallelism, checkpoints.

    Attributes:
        max_duration: Composer time string: ``100ba``, ``1ep``, ``2000000tok``.
        global_train_batch_size: samples per optimizer step over all ranks; divisible by world size x device
            microbatch size (:func:`validate_for_world`).
        device_train_microbatch_size: samples per forward/backward on one rank (gradient accumulation covers
            the rest of the rank's batch).
        device: ``cpu``, ``gpu``, or ``auto`` (a GPU when CUDA is visible, else the CPU).
        precision: Composer precision; ``amp_bf16``/``amp_fp16`` need a GPU (``device: cpu`` is refused here,
            ``device: auto`` resolving to the CPU is refused at start-up).
        optimizer: see :class:`OptimizerConfig`.
        scheduler: see :class:`SchedulerConfig`.
        grad_clip_norm: clip the global gradient norm to this value. None = no clipping.
        fsdp: passed through to Composer's FSDP config (``parallelism_config={'fsdp': ...}``) on more than one
            GPU; ignored (with a warning) otherwise. None = no FSDP (DDP on several GPUs).
        save_folder: local folder or ``s3://``/``gs://`` URI; ``{run_name}`` is filled in. None = no checkpoints.
        save_interval: Composer time between checkpoints, e.g. ``500ba`` or ``1ep``.
        save_num_checkpoints_to_keep: checkpoints kept in the local save folder; -1 = all.
        autoresume: resume from the newest complete checkpoint in ``save_folder`` (see :mod:`rlp.run.checkpoint`).
        load_path: checkpoint to start from when ``save_folder`` holds none yet (first launch only).
        load_weights_only: with ``load_path``: load only the model weights (fresh optimizer, schedule and data
            position).
        output_dir: local folder for ``metrics.jsonl``, the sampled-thoughts JSONL and ``resolved_config.yaml``;
            ``{run_name}`` is filled in.
        record_sample_ids: write the global batch's sample ids into each ``metrics.jsonl`` record (tests,
            debugging); needs ``loggers.metrics_jsonl``.
        dist_timeout: seconds a torch.distributed collective may wait before the run fails.
        deterministic_mode: Composer's deterministic mode (deterministic CUDA kernels; slower).
        max_nonfinite_steps: an optimizer step whose loss or gradients are NaN/inf is skipped (weights and
            optimizer state untouched, counted in ``train/nonfinite_steps``); this many in a row stop the run.
        low_precision_weights: allow ``model.torch_dtype`` bfloat16/float16 for training. The optimizer then
            updates 16-bit weights directly: at lr 1e-6 most updates round to nothing (measured on a tiny Llama:
            2% of the weights changed after 20 AdamW steps, mean change 1.5% of fp32's). Off: such a recipe is
            refused.
    """

    max_duration: str
    global_train_batch_size: int
    device_train_microbatch_size: int = 1
    device: Literal['auto', 'cpu', 'gpu'] = 'auto'
    precision: Literal['fp32', 'amp_bf16', 'amp_fp16'] = 'fp32'
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip_norm: Optional[float] = 1.0
    fsdp: Optional[dict[str, Any]] = None
    save_folder: Optional[str] = None
    save_interval: str = '1000ba'
    save_num_checkpoints_to_keep: int = -1
    autoresume: bool = True
    load_path: Optional[str] = None
    load_weights_only: bool = False
    output_dir: str = './runs/{run_name}'
    record_sample_ids: bool = False
    dist_timeout: float = 300.0
    deterministic_mode: bool = False
    max_nonfinite_steps: int = 10
    low_precision_weights: bool = False

    def __post_init__(self):
        if self.global_train_batch_size < 1 or self.device_train_microbatch_size < 1:
            raise ConfigError(
                f'trainer.global_train_batch_size={self.global_train_batch_size} and '
                f'device_train_microbatch_size={self.device_train_microbatch_size} must be >= 1'
            )
        if not re.fullmatch(r'\d+(ba|ep|sp|tok|dur)', self.max_duration):
            raise ConfigError(
                f'trainer.max_duration={self.max_duration!r} is not a Composer time; '
                f'write e.g. 100ba, 1ep or 2000000tok'
            )
        if not re.fullmatch(r'\d+(ba|ep|sp|tok)', self.save_interval):
            raise ConfigError(
                f'trainer.save_interval={self.save_interval!r} is not a Composer time; write e.g. 500ba or 1ep'
            )
        if self.device == 'cpu' and self.precision != 'fp32':
            raise ConfigError(
                f'trainer.precision={self.precision} needs a GPU but trainer.device=cpu; '
                f'on CPU use trainer.precision=fp32'
            )
        check_save_folder_scheme(self.save_folder)
        if self.max_nonfinite_steps < 1:
            raise ConfigError(
                f'trainer.max_nonfinite_steps={self.max_nonfinite_steps} must be >= 1 (the number of skipped '
                f'non-finite steps in a row that stops the run; default 10)'
            )


@dataclass
class LoggersConfig:
    """Where metrics go (``loggers``).

    Attributes:
        progress_bar: Composer's progress bar on the console.
        console: print one short line per logged batch (batch, losses, reward, gain vs EMA, clip fraction,
            thought length, throughput; :class:`rlp.run.metrics.ConsoleLine`).
        console_interval: Composer time between console prints, e.g. ``1ba`` (every batch), ``10ba`` or ``1ep``.
        console_verbose: the full output instead: the resolved config printed at start (else only written to
            ``{output_dir}/resolved_config.yaml``) and, with ``console``, Composer's ConsoleLogger printing every
            logged scalar (about 35 lines per batch).
        metrics_jsonl: write ``{output_dir}/metrics.jsonl``: one JSON object per batch.
    """

    progress_bar: bool = True
    console: bool = True
    console_interval: str = '1ba'
    console_verbose: bool = False
    metrics_jsonl: bool = True

    def __post_init__(self):
        if not re.fullmatch(r'[1-9]\d*(ba|ep)', self.console_interval):
            raise ConfigError(
                f'loggers.console_interval={self.console_interval!r} is not a batch or epoch count; write e.g. '
                f'1ba, 10ba or 1ep'
            )


@dataclass
class CallbacksConfig:
    """Composer callbacks (``callbacks``).

    Attributes:
        speed_monitor: window size (batches) of Composer's SpeedMonitor (throughput, wall clock); None = off.
        lr_monitor: log the learning rate every batch (Composer's LRMonitor).
        memory_monitor: GPU memory statistics (Composer's MemoryMonitor; GPU runs only, ignored on CPU).
    """

    speed_monitor: Optional[int] = 10
    lr_monitor: bool = True
    memory_monitor: bool = False


@dataclass
class Recipe:
    """A whole recipe, after merging its base chain (see the module docstring).

    Attributes:
        run_name: names the run's folders and object keys (``{run_name}`` in paths): letters, digits, ``.``,
            ``_``, ``-``.
        model: see :class:`ModelConfig`.
        data: see :class:`DataConfig`.
        trainer: see :class:`TrainerConfig`.
        variables: free-form values referenced as ``${variables.NAME}`` elsewhere in the recipe.
        seed: seeds model init, the data shuffle (unless ``data.shuffle_seed``) and the RLP algorithm's draws.
        tokenizer: see :class:`TokenizerConfig`.
        rlp: the RLP algorithm (:class:`rlp.config.RLPConfig`); None (``rlp: null``) for next-token training
            only (the CPT baseline).
        loggers: see :class:`LoggersConfig`.
        callbacks: see :class:`CallbacksConfig`.
    """

    run_name: str
    model: ModelConfig
    data: DataConfig
    trainer: TrainerConfig
    variables: dict[str, Any] = field(default_factory=dict)
    seed: int = 17
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    rlp: Optional[RLPConfig] = None
    loggers: LoggersConfig = field(default_factory=LoggersConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)

    def __post_init__(self):
        if not re.fullmatch(r'[A-Za-z0-9._-]+', self.run_name):
            raise ConfigError(
                f'run_name={self.run_name!r} may only hold letters, digits, ".", "_" and "-" '
                f'(it names folders and object keys)'
            )
        if self.model.torch_dtype in ('bfloat16', 'float16') and not self.trainer.low_precision_weights:
            raise ConfigError(
                f'model.torch_dtype={self.model.torch_dtype} makes the optimizer update {self.model.torch_dtype} '
                f'master weights, which lose most updates at small learning rates; load float32 weights and train '
                f'with trainer.precision=amp_bf16 (bf16 compute), or set trainer.low_precision_weights=true'
            )
        if self.trainer.record_sample_ids and not self.loggers.metrics_jsonl:
            raise ConfigError(
                'trainer.record_sample_ids needs loggers.metrics_jsonl=true (ids go into metrics.jsonl); '
                'set loggers.metrics_jsonl=true or trainer.record_sample_ids=false'
            )


_REF = re.compile(r'\$\{variables\.([A-Za-z0-9_.]+)\}')


def _lookup(variables: dict[str, Any], dotted: str) -> Any:
    node: Any = variables
    for part in dotted.split('.'):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(
                f'${{variables.{dotted}}} is not defined; defined variables: '
                f'{", ".join(sorted(variables)) or "(none)"}'
            )
        node = node[part]
    return node


def resolve_variables(data: dict[str, Any]) -> dict[str, Any]:
    """Replace ``${variables.x}`` references everywhere outside ``variables`` (variables may use each other)."""
    variables = copy.deepcopy(data.get('variables') or {})

    def resolve(node: Any, depth: int = 0) -> Any:
        if depth > 20:
            raise ConfigError('variables reference each other in a cycle')
        if isinstance(node, dict):
            return {k: resolve(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, depth) for v in node]
        if isinstance(node, str):
            whole = _REF.fullmatch(node)
            if whole:
                return resolve(_lookup(variables, whole.group(1)), depth + 1)
            return _REF.sub(lambda m: str(resolve(_lookup(variables, m.group(1)), depth + 1)), node)
        return node

    variables = resolve(variables)
    out = resolve({k: v for k, v in data.items() if k != 'variables'})
    out['variables'] = variables
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; ``$delete`` removes the key) to a copy of ``data``."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)  # one-line errors: no '=', bad YAML
        parts = key.split('.')
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f'override {item!r}: {part!r} is not a mapping in the recipe')
            node = node[part]
        if value == DELETE:
            if parts[-1] not in node:
                raise ConfigError(f'override {item!r}: the recipe has no {key.strip()!r} to delete; drop the override')
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return data


def _join(where: str, key: Any) -> str:
    return f'{where}.{key}' if where else str(key)


def merge_recipe_data(base: dict[str, Any], child: dict[str, Any], where: str = '') -> dict[str, Any]:
    """Deep-merge recipe mapping ``child`` onto ``base`` (new mapping; neither argument changes).

    Mapping onto mapping merges key by key; any other child value (scalar, list, null) replaces the base's.
    ``KEY: $delete`` removes the base's KEY; a child mapping with ``$replace: true`` replaces the base's mapping.

    Args:
        base: the base recipe's (merged) mapping.
        child: the child's mapping, without its ``base`` key.
        where: key path of the two mappings, for error messages.

    Raises:
        ConfigError: ``$delete`` of a key the base does not have, or ``$replace`` with a value other than true.

    Example:
        >>> merge_recipe_data({'a': {'x': 1, 'y': 2}, 'b': [1]}, {'a': {'y': '$delete', 'z': 3}, 'b': [2]})
        {'a': {'x': 1, 'z': 3}, 'b': [2]}
    """
    out = copy.deepcopy(base)
    for key, value in child.items():
        path = _join(where, key)
        if key == REPLACE:
            raise ConfigError(  # inside mappings it was taken out by the caller: this is a file's top level
                f'{REPLACE} at the top level of a recipe would drop its whole base; remove the base key instead, '
                f'or put {REPLACE}: true inside the mapping to replace, e.g. data.streams'
            )
        if value == DELETE:
            if key not in out:
                raise ConfigError(
                    f'{path}: {DELETE} removes a key of the base recipe, but the base has no {path!r}; '
                    f'drop the line (or fix the key name)'
                )
            del out[key]
        elif isinstance(value, dict):
            replace = value.get(REPLACE, False)
            if replace is not True and REPLACE in value:
                raise ConfigError(
                    f'{_join(path, REPLACE)}={replace!r}: {REPLACE} takes only true; drop it to merge with the base'
                )
            inner = {k: v for k, v in value.items() if k != REPLACE}
            below = out.get(key) if not replace else None
            out[key] = merge_recipe_data(below if isinstance(below, dict) else {}, inner, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'recipe {str(path)!r}: a recipe is a YAML mapping of sections, got {type(data).__name__}')
    return data


def read_recipe_data(path: str | Path) -> dict[str, Any]:
    """The recipe at ``path`` as one plain mapping: its base chain read and merged, no ``base`` key left.

    Raises:
        ConfigError: the file or a base in its chain does not exist, the chain has a cycle, a ``base`` is not a
            file name, or a merge directive is misused (see :func:`merge_recipe_data`).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'recipe {str(path)!r} does not exist; pass a YAML file such as recipes/smoke-cpu.yaml')
    chain: list[Path] = []
    datas: list[dict[str, Any]] = []
    current = path
    while True:
        resolved = current.resolve()
        if resolved in chain:
            names = ' -> '.join(str(p) for p in [*chain, resolved])
            raise ConfigError(f'recipe {str(path)!r}: the base chain {names} is a cycle; remove one of the base keys')
        chain.append(resolved)
        data = _read_yaml_mapping(current)
        base = data.pop('base', None)
        datas.append(data)
        if base is None:
            break
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(
                f'recipe {str(current)!r}: base={base!r} is not a file name; write e.g. base: qwen3-1.7b-rlp.yaml '
                f"(relative to the recipe's folder)"
            )
        nxt = current.parent / base
        if not nxt.is_file():
            raise ConfigError(
                f'recipe {str(current)!r}: base {base!r} does not exist (looked for {str(nxt)!r}); base is a path '
                f"relative to the recipe's own folder, e.g. base: qwen3-1.7b-rlp.yaml"
            )
        current = nxt
    merged: dict[str, Any] = {}
    for data in reversed(datas):  # the root of the chain first, the named recipe last
        merged = merge_recipe_data(merged, data)
    return merged


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """Validate a recipe mapping (base chain merged, variables resolved) into a :class:`Recipe`."""
    if not isinstance(data, dict):
        raise ConfigError(f'a recipe is a YAML mapping of sections, got {type(data).__name__}')
    return build(Recipe, data)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe and its base chain, merge, apply ``key=value`` overrides, resolve variables, validate.

    Example:
        >>> recipe = load_recipe('recipes/smoke-cpu.yaml', ['trainer.max_duration=4ba'])  # doctest: +SKIP
    """
    return parse_recipe(resolve_variables(apply_overrides(read_recipe_data(path), overrides or [])))


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe as plain data (logged at start and written beside the metrics)."""
    return to_dict(recipe)


def validate_for_world(recipe: Recipe, world_size: int) -> int:
    """Checks that need the launch size; returns the per-rank (device) batch size.

    Raises:
        ConfigError: the global batch is not divisible by ``world_size x device_train_microbatch_size``.
    """
    t = recipe.trainer
    unit = world_size * t.device_train_microbatch_size
    if t.global_train_batch_size % unit:
        raise ConfigError(
            f'trainer.global_train_batch_size={t.global_train_batch_size} is not divisible by world size '
            f'{world_size} x device_train_microbatch_size {t.device_train_microbatch_size} = {unit}; pick a global '
            f'batch that is a multiple of {unit} (the same global batch on every world size keeps the data order)'
        )
    return t.global_train_batch_size // world_size


def main(argv: list[str] | None = None) -> int:
    """``python -m rlp.run.recipe RECIPE [key.sub=value ...]``: print the merged, resolved recipe as YAML."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ('-h', '--help'):
        print('usage: python -m rlp.run.recipe RECIPE [key.sub=value ...]  (prints the merged, validated recipe)')
        return 0 if args else 2
    try:
        recipe = load_recipe(args[0], args[1:])
    except ConfigError as err:
        print(f'rlp.run.recipe: invalid recipe {args[0]}: {err}', file=sys.stderr)
        return 2
    print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
