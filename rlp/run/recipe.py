"""Recipe schema: one YAML file per run, validated into typed config objects before anything is built.

A recipe has the sections ``variables``, ``run_name``, ``seed``, ``model``, ``tokenizer``, ``data``, ``rlp``,
``trainer``, ``loggers`` and ``callbacks``. Every section is a dataclass built with :func:`rlp.strictcfg.build`,
so an unknown key at any depth is an error naming the key path and the allowed keys. ``rlp`` is parsed by
:class:`rlp.config.RLPConfig` (``rlp: null`` trains with the next-token loss only, the CPT baseline).

Values may reference ``${variables.NAME}``: a string that is exactly one reference takes the variable's value
and type, a reference inside a longer string is substituted as text. Command-line overrides ``key.sub=value``
are applied after loading and before resolution; values are parsed as YAML (``rlp=null``, ``trainer.lr=1e-5``).

Checks that need the launch (world size) live in :func:`validate_for_world`; checks that need the network (the
save folder's bucket) live in :mod:`rlp.run.checkpoint`. Nothing here loads weights, so every recipe in
``recipes/`` validates on a laptop.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from rlp.config import RLPConfig
from rlp.strictcfg import ConfigError, build, to_dict

__all__ = [
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
    'parse_recipe',
    'recipe_to_dict',
    'resolve_variables',
    'validate_for_world',
]

TOKEN_DTYPES = ('uint8', 'uint16', 'uint32', 'int16', 'int32', 'int64')


@dataclass
class StreamConfig:
    """One named MDS stream of the training mixture (a folder written by ``rlp-data prepare`` or llm-foundry)."""

    remote: Optional[str] = None
    """Where the shards live: ``s3://``/``gs://``/... or a local folder. ``null`` reads ``local`` directly."""
    local: Optional[str] = None
    """Local cache folder, distinct per stream. Default: ``{data.cache_dir}/{run_name}/{stream name}``."""
    split: Optional[str] = None
    """Sub-folder of ``remote``/``local`` holding ``index.json``."""
    proportion: Optional[float] = None
    """Relative weight of the stream (normalised over streams). Cannot be mixed with ``repeat``/``choose``."""
    repeat: Optional[float] = None
    """Absolute weighting: each epoch sees the stream this many times."""
    choose: Optional[int] = None
    """Absolute weighting: each epoch sees exactly this many samples of the stream."""
    token_dtype: Optional[str] = None
    """Only for legacy llm-foundry datasets whose ``tokens`` column is raw ``bytes``: their dtype (e.g. int32)."""
    download_retry: Optional[int] = None
    download_timeout: Optional[float] = None
    validate_hash: Optional[str] = None
    keep_zip: Optional[bool] = None

    def __post_init__(self):
        if self.token_dtype is not None and self.token_dtype not in TOKEN_DTYPES:
            raise ConfigError(f'token_dtype {self.token_dtype!r} is not supported; use one of {TOKEN_DTYPES}')
        for name in ('proportion', 'repeat', 'choose'):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f'{name}={value} must be > 0; drop the stream instead of giving it weight 0')


@dataclass
class DataConfig:
    """The training data: a StreamingDataset mixture of named streams plus loader settings."""

    seq_len: int
    """Tokens per sample fed to the model; longer samples are truncated, shorter ones padded (pack mode none)."""
    streams: dict[str, StreamConfig] = field(default_factory=dict)
    """Named streams; at least one. All use ``proportion`` or all use ``repeat``/``choose`` (or no weight)."""
    cache_dir: str = './cache/streams'
    """Root of the default per-stream local caches."""
    shuffle: bool = True
    shuffle_seed: Optional[int] = None
    """Default: the recipe's ``seed``."""
    shuffle_algo: str = 'py1e'
    shuffle_block_size: Optional[int] = None
    num_canonical_nodes: Optional[int] = 1
    """Keep it fixed across launches: the global sample order then does not depend on the number of ranks."""
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
    """EOS id used to derive document starts for streams without a ``doc_starts`` column. Default: tokenizer's."""
    pad_token_id: Optional[int] = None
    """Padding id for samples shorter than ``seq_len``. Default: the tokenizer's pad (else EOS)."""
    clean_stale_shared_memory: bool = True
    """Call streaming's ``clean_stale_shared_memory()`` once at start-up (it is not liveness-aware: turn it
    off when other streaming jobs run on the same host, e.g. parallel test processes)."""

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
                    f'data.streams.{name} sets proportion together with repeat/choose; ' f'use one weighting family'
                )
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
    """The HF causal LM: pretrained (``name_or_path``) or random-init from a config mapping (``config``)."""

    name_or_path: Optional[str] = None
    """Hub name or local folder with weights, e.g. ``Qwen/Qwen3-1.7B``."""
    config: Optional[dict[str, Any]] = None
    """A transformers config as a mapping with ``model_type`` (random init); vocab size defaults to the
    tokenizer's length."""
    pretrained: bool = True
    """With ``name_or_path``: load its weights (true) or only its config and init randomly (false)."""
    torch_dtype: Optional[Literal['float32', 'bfloat16', 'float16']] = None
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
    """The tokenizer: hub name, local folder, or ``bundled`` (the small BPE shipped with the project)."""

    name_or_path: str = 'bundled'
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
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
    name: Literal['constant', 'cosine_with_warmup', 'linear_with_warmup'] = 'constant'
    t_warmup: str = '0ba'
    alpha_f: float = 0.0


@dataclass
class TrainerConfig:
    """Composer Trainer settings: duration, batch sizes, optimisation, numerics, parallelism, checkpoints."""

    max_duration: str
    """Composer time string: ``100ba``, ``1ep``, ``2000000tok``."""
    global_train_batch_size: int
    """Samples per optimizer step over all ranks; divisible by world size x device microbatch size."""
    device_train_microbatch_size: int = 1
    device: Literal['auto', 'cpu', 'gpu'] = 'auto'
    precision: Literal['fp32', 'amp_bf16', 'amp_fp16'] = 'fp32'
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip_norm: Optional[float] = 1.0
    fsdp: Optional[dict[str, Any]] = None
    """Passed through to Composer's FSDP config (``parallelism_config={'fsdp': ...}``) on more than one GPU."""
    save_folder: Optional[str] = None
    """Local folder or ``s3://``/``gs://`` URI; ``{run_name}`` is filled in."""
    save_interval: str = '1000ba'
    save_num_checkpoints_to_keep: int = -1
    autoresume: bool = True
    """Resume from the newest complete checkpoint in ``save_folder`` (see :mod:`rlp.run.checkpoint`)."""
    load_path: Optional[str] = None
    """Checkpoint to start from when ``save_folder`` holds none yet (first launch only)."""
    load_weights_only: bool = False
    output_dir: str = './runs/{run_name}'
    """Local folder for ``metrics.jsonl``, the sampled-thoughts JSONL and ``resolved_config.yaml``."""
    record_sample_ids: bool = False
    """Write the global batch's sample ids into each ``metrics.jsonl`` record (tests, debugging)."""
    dist_timeout: float = 300.0
    deterministic_mode: bool = False

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
                f'trainer.save_interval={self.save_interval!r} is not a Composer time; ' f'write e.g. 500ba or 1ep'
            )


@dataclass
class LoggersConfig:
    progress_bar: bool = True
    console: bool = True
    """Print every logged scalar to the console."""
    console_interval: str = '1ba'
    metrics_jsonl: bool = True
    """Write ``{output_dir}/metrics.jsonl``: one JSON object per batch."""


@dataclass
class CallbacksConfig:
    speed_monitor: Optional[int] = 10
    """Window size of Composer's SpeedMonitor (throughput, wall clock), or null for none."""
    lr_monitor: bool = True
    memory_monitor: bool = False
    """GPU memory statistics (GPU runs only)."""


@dataclass
class Recipe:
    """A whole recipe; ``rlp`` is None (``rlp: null``) for next-token training only (the CPT baseline)."""

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
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a copy of ``data``."""
    data = copy.deepcopy(data)
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f'override {item!r} is not key.sub=value (e.g. trainer.max_duration=20ba)')
        key, raw = item.split('=', 1)
        value = yaml.safe_load(raw) if raw.strip() else ''
        parts = key.strip().split('.')
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f'override {item!r}: {part!r} is not a mapping in the recipe')
            node = node[part]
        node[parts[-1]] = value
    return data


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """Validate a recipe mapping (variables already resolved) into a :class:`Recipe`."""
    if not isinstance(data, dict):
        raise ConfigError(f'a recipe is a YAML mapping of sections, got {type(data).__name__}')
    return build(Recipe, data)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides, resolve variables and validate it.

    Example:
        >>> recipe = load_recipe('recipes/smoke-cpu.yaml', ['trainer.max_duration=4ba'])  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'recipe {str(path)!r} does not exist; pass a YAML file such as recipes/smoke-cpu.yaml')
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    return parse_recipe(resolve_variables(apply_overrides(data, overrides or [])))


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
