"""Recipe schema: one YAML file per run, validated into typed config objects before anything is built.

A recipe has the sections ``variables``, ``run_name``, ``seed``, ``model``, ``tokenizer``, ``data``, ``rlp``,
``trainer``, ``loggers`` and ``callbacks``. Every section is a dataclass built with :func:`rlp.strictcfg.build`,
so an unknown key at any depth is an error naming the key path and the allowed keys. ``rlp`` is parsed by
:class:`rlp.config.RLPConfig` (``rlp: null`` trains with the next-token loss only, the CPT baseline).

How a recipe file becomes the mapping validated here (base chains, merging, ``key=value`` overrides,
``${variables.NAME}``) is :mod:`rlp.run.recipe`.

Every check of one section lives in that section's ``__post_init__`` and cross-section checks in
:class:`Recipe`'s (the query-string check of remote folders in :func:`rlp.run.recipe.parse_recipe`), so
:func:`rlp.run.recipe.load_recipe` refuses everything that the recipe alone can tell is wrong. Checks that need
the launch (world size) live in :func:`validate_for_world`; checks that need the machine (is there a GPU) are in
:mod:`rlp.run.trainer`; checks that need the network (the save folder's bucket) live in :mod:`rlp.run.checkpoint`;
checks that need the tokenizer, the model or the data files are made where those are built (:mod:`rlp.run.models`,
:mod:`rlp.run.data`). Nothing here loads weights, so every recipe in ``recipes/`` validates on a laptop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from rlp.config import RLPConfig
from rlp.run.recipe_checks import check_fsdp, check_gguf_file, check_save_folder_scheme
from rlp.run.recipe_streams import DataConfig, StreamConfig
from rlp.strictcfg import NEGATIVE, ConfigError, to_dict

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
    'recipe_to_dict',
    'validate_for_world',
]


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
        gguf_file: a GGUF file inside ``name_or_path`` (a folder or hub repo) to load the weights from, dequantised
            (needs ``pip install -e '.[gguf]'``). None = the folder's safetensors. ``rlp pretrained`` turns a GGUF
            into a plain folder once, which loads faster.
    """

    name_or_path: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    pretrained: bool = True
    torch_dtype: Optional[Literal['float32', 'bfloat16', 'float16']] = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    attn_implementation: Optional[Literal['eager', 'sdpa', 'flash_attention_2']] = None
    trust_remote_code: bool = False
    revision: Optional[str] = None
    gguf_file: Optional[str] = None

    def __post_init__(self):
        if (self.name_or_path is None) == (self.config is None):
            raise ConfigError(
                'model needs exactly one of name_or_path (pretrained HF model) or config '
                '(a mapping with model_type, for random init)'
            )
        if self.config is not None and 'model_type' not in self.config:
            raise ConfigError('model.config needs a model_type (e.g. llama, qwen3, gpt2)')
        check_gguf_file('model', self.gguf_file, self.name_or_path)
        if self.gguf_file is not None and not self.pretrained:
            raise ConfigError(
                f'model.gguf_file={self.gguf_file!r} with model.pretrained=false: a GGUF file carries weights; '
                f'fix: drop model.gguf_file for a random init, or set model.pretrained=true'
            )


@dataclass
class TokenizerConfig:
    """The tokenizer.

    Attributes:
        name_or_path: hub name, local folder, or ``bundled`` (the small BPE shipped with the project, in
            ``pipeline/assets/tokenizer``).
        kwargs: extra keyword arguments of ``AutoTokenizer.from_pretrained`` (e.g. ``trust_remote_code``).
        gguf_file: a GGUF file inside ``name_or_path`` whose tokenizer to load (usually the same as
            ``model.gguf_file``). None = the folder's tokenizer files.
    """

    name_or_path: str = 'bundled'
    kwargs: dict[str, Any] = field(default_factory=dict)
    gguf_file: Optional[str] = None

    def __post_init__(self):
        check_gguf_file('tokenizer', self.gguf_file, None if self.name_or_path == 'bundled' else self.name_or_path)


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
        fsdp: FSDP2 (``fully_shard``) options, passed to Composer as ``parallelism_config={'fsdp':
            FSDP2Config(...)}`` on more than one rank (GPUs with NCCL, or CPU ranks with gloo); ignored (with a
            warning) on one rank. Keys: ``reshard_after_forward``, ``activation_checkpointing``,
            ``activation_cpu_offload``, ``mixed_precision`` (FULL | DEFAULT | PURE), ``state_dict_type`` (sharded
            only). None = no FSDP (DDP on several ranks).
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
    save_num_checkpoints_to_keep: int = field(default=-1, metadata={NEGATIVE: '-1 keeps every checkpoint'})
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
        if not int(re.match(r'\d+', self.max_duration).group()):
            raise ConfigError(
                f'trainer.max_duration={self.max_duration!r} is a run of zero length; give a positive duration, '
                f'e.g. 100ba'
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
        check_fsdp(self.fsdp)
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
        peak_flops: the device's peak FLOP/s at the run's precision (e.g. 989e12 for an H100 SXM in bf16): the
            SpeedMonitor then logs ``throughput/device/mfu`` from the counted FLOPs (``throughput/flops``);
            None = Composer's table for known GPUs, no MFU elsewhere.
    """

    speed_monitor: Optional[int] = 10
    lr_monitor: bool = True
    memory_monitor: bool = False
    peak_flops: Optional[float] = None


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
                f'run_name={self.run_name!r} may only hold ASCII letters (a-z, A-Z), digits, ".", "_" and "-" '
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
