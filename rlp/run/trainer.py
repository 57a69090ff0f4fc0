"""The Trainer factory behind ``rlp.train``: a validated recipe in, a Composer ``Trainer`` out.

:func:`build_trainer` is steps 2 to 5 of the start-up order in :mod:`rlp.run.train`: the save folder's bucket and
the machine checked, torch.distributed initialised, stale shared memory cleaned, everything seeded and built
(tokenizer, model, stream mixture, optimizer, schedule, the RLP algorithm and the guards, loggers, callbacks), and
the newest complete checkpoint in ``save_folder`` found ourselves (:mod:`rlp.run.checkpoint`) and passed as
``load_path`` (Composer's own autoresume stays off: it misses checkpoints whose ``latest`` pointer was not uploaded
yet and prefers stale local copies).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Optional

import torch
from composer import Trainer
from composer.callbacks import LRMonitor, MemoryMonitor, SpeedMonitor
from composer.devices import DeviceCPU, DeviceGPU
from composer.optim import (
    ConstantScheduler,
    ConstantWithWarmupScheduler,
    CosineAnnealingScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    LinearScheduler,
    LinearWithWarmupScheduler,
)
from composer.utils import dist as composer_dist
from composer.utils import reproducibility
from streaming.base.util import clean_stale_shared_memory

from pipeline.errors import UsageError
from pipeline.prepare_args import check_local_folder
from rlp.run import checkpoint
from rlp.run.algorithm import RLP
from rlp.run.checkpoint import format_save_folder
from rlp.run.data import build_dataloader
from rlp.run.fsdp import ClipGradNorm, GlooGradAverage, fsdp2_config
from rlp.run.guards import FiniteSteps
from rlp.run.integrity import check_stream_tokenizers
from rlp.run.metrics import ConsoleLine, MetricsJsonlLogger, SampleIdRecorder
from rlp.run.models import build_composer_model
from rlp.run.recipe_freeform import check_free_form
from rlp.run.recipe_schema import ConfigError, Recipe, validate_for_world
from rlp.run.throughput import FlopCounter

__all__ = ['AlreadyFinished', 'build_trainer', 'check_output_folders', 'output_dir_of', 'save_folder_of']

log = logging.getLogger('rlp.train')


class AlreadyFinished(Exception):
    """The newest checkpoint already reaches ``max_duration``: nothing to train (a rerun of a finished run)."""


def _device_name(requested: str) -> str:
    if requested == 'auto':
        return 'gpu' if torch.cuda.is_available() else 'cpu'
    if requested == 'gpu' and not torch.cuda.is_available():
        raise ConfigError('trainer.device=gpu but no CUDA device is visible; use trainer.device=auto or cpu')
    return requested


def _optimizer(recipe: Recipe, params):
    o = recipe.trainer.optimizer
    if o.name == 'decoupled_adamw':
        return DecoupledAdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if o.name == 'adamw':
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay)


def _scheduler(recipe: Recipe):
    s = recipe.trainer.scheduler
    if re.fullmatch(r'0+(\.0*)?[a-z]*', s.t_warmup):  # no warmup (the *WithWarmup classes warn about it)
        if s.name == 'constant':
            return ConstantScheduler()
        if s.name == 'cosine_with_warmup':
            return CosineAnnealingScheduler(alpha_f=s.alpha_f)
        return LinearScheduler(alpha_i=1.0, alpha_f=s.alpha_f)
    if s.name == 'constant':
        return ConstantWithWarmupScheduler(t_warmup=s.t_warmup)
    if s.name == 'cosine_with_warmup':
        return CosineAnnealingWithWarmupScheduler(t_warmup=s.t_warmup, alpha_f=s.alpha_f)
    return LinearWithWarmupScheduler(t_warmup=s.t_warmup, alpha_f=s.alpha_f)


def output_dir_of(recipe: Recipe) -> str:
    return recipe.trainer.output_dir.replace('{run_name}', recipe.run_name)


def _algorithms(recipe: Recipe, tokenizer, output_dir: str, fsdp2: bool) -> list:
    algorithms: list = []
    if recipe.trainer.grad_clip_norm is not None:  # not Composer's GradientClipping: it skips FSDP2 (rlp.run.fsdp)
        algorithms.append(ClipGradNorm(recipe.trainer.grad_clip_norm))
    if recipe.rlp is not None:
        rlp_cfg = recipe.rlp
        if rlp_cfg.log.path is None:  # the sampled-thoughts JSONL lives beside metrics.jsonl
            rlp_cfg = dataclasses.replace(
                rlp_cfg, log=dataclasses.replace(rlp_cfg.log, path=os.path.join(output_dir, 'thoughts.jsonl'))
            )
        algorithms.append(RLP(rlp_cfg, seed=recipe.seed, tokenizer=tokenizer))
    # after RLP: Composer runs AFTER_* events in reverse order, so it sees the NTP loss before RLP does
    algorithms.append(FiniteSteps(max_consecutive=recipe.trainer.max_nonfinite_steps))
    if fsdp2:  # last: averages gloo's summed FSDP2 gradients before anything reads them (rlp.run.fsdp)
        algorithms.append(GlooGradAverage())
    return algorithms


def build_trainer(recipe: Recipe, *, world_size: int):
    """Everything from step 2 to 5 of the module docstring; returns ``(trainer, output_dir)``."""
    t = recipe.trainer
    device_batch = validate_for_world(recipe, world_size)
    check_free_form(recipe)  # model.config, trainer.fsdp keys against their transformers / Composer classes
    device = _device_name(t.device)
    # Recipe checks that need the machine stay here (this one and _device_name's); all others are in the recipe layer.
    # TrainerConfig refuses amp on device: cpu; device: auto turns into the CPU only where no CUDA device is visible.
    if device == 'cpu' and t.precision != 'fp32':
        raise ConfigError(
            f'trainer.precision={t.precision} needs a GPU but trainer.device={t.device} found none; '
            f'on CPU use trainer.precision=fp32'
        )
    if t.save_folder is not None:
        checkpoint.check_save_folder(t.save_folder, recipe.run_name)
    check_output_folders(recipe)
    composer_dist.initialize_dist(DeviceGPU() if device == 'gpu' else DeviceCPU(), timeout=t.dist_timeout)
    if recipe.data.clean_stale_shared_memory:
        clean_stale_shared_memory()
    reproducibility.seed_all(recipe.seed)

    output_dir = output_dir_of(recipe)
    template = recipe.rlp.template if recipe.rlp is not None else None
    check_stream_tokenizers(recipe.data, recipe.tokenizer)  # before any weights load: the data fits the tokenizer
    model, tokenizer = build_composer_model(recipe.model, recipe.tokenizer, seed=recipe.seed, template=template)
    loader = build_dataloader(
        recipe.data,
        run_name=recipe.run_name,
        device_batch_size=device_batch,
        seed=recipe.seed,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        vocab_size=model.model.get_input_embeddings().weight.shape[0],
    )
    optimizer = _optimizer(recipe, model.parameters())

    loggers, callbacks = [], []
    verbose = recipe.loggers.console and recipe.loggers.console_verbose  # Composer's ConsoleLogger: every scalar
    if recipe.loggers.console and not verbose:
        loggers.append(ConsoleLine(recipe.loggers.console_interval))
    if recipe.loggers.metrics_jsonl:
        metrics_logger = MetricsJsonlLogger(os.path.join(output_dir, 'metrics.jsonl'))
        loggers.append(metrics_logger)
        if t.record_sample_ids:  # Recipe refuses record_sample_ids without metrics_jsonl
            callbacks.append(SampleIdRecorder(metrics_logger))
    callbacks.append(FlopCounter())  # before the SpeedMonitor, which reads its count
    if recipe.callbacks.speed_monitor:
        peak = recipe.callbacks.peak_flops
        callbacks.append(SpeedMonitor(window_size=recipe.callbacks.speed_monitor, gpu_flops_available=peak))
    if recipe.callbacks.lr_monitor:
        callbacks.append(LRMonitor())
    if recipe.callbacks.memory_monitor and device == 'gpu':
        callbacks.append(MemoryMonitor())

    load_path, load_weights_only, resuming = t.load_path, t.load_weights_only, False
    if t.autoresume and t.save_folder is not None:
        checkpoint.set_aside_torn(t.save_folder, recipe.run_name)
        newest = checkpoint.find_latest_checkpoint(t.save_folder, recipe.run_name)
        if newest is not None:
            done = checkpoint.checkpoint_batch(newest)
            if t.max_duration.endswith('ba') and done >= int(t.max_duration[:-2]):
                raise AlreadyFinished(
                    f'{newest} already covers trainer.max_duration={t.max_duration}; raise '
                    f'max_duration to train further, or change run_name/save_folder to start over'
                )
            load_path, load_weights_only, resuming = newest, False, True
            log.info('resuming from %s', newest)

    parallelism = None
    if t.fsdp is not None:
        if world_size > 1:  # FSDP2 on GPUs (NCCL) or on CPU ranks (gloo): the same code path
            parallelism = {'fsdp': fsdp2_config(t.fsdp)}
        else:
            log.warning('trainer.fsdp is ignored: FSDP needs more than one rank (world=%d)', world_size)

    trainer = Trainer(
        model=model,
        train_dataloader=loader,
        max_duration=t.max_duration,
        optimizers=optimizer,
        schedulers=_scheduler(recipe),
        algorithms=_algorithms(recipe, tokenizer, output_dir, fsdp2=parallelism is not None),
        device=device,
        precision=t.precision,
        device_train_microbatch_size=t.device_train_microbatch_size,
        parallelism_config=parallelism,
        run_name=recipe.run_name,
        seed=recipe.seed,
        loggers=loggers,
        callbacks=callbacks,
        progress_bar=recipe.loggers.progress_bar,
        log_to_console=verbose,
        console_log_interval=recipe.loggers.console_interval,
        console_stream='stdout',
        save_folder=t.save_folder,
        save_interval=t.save_interval,
        save_num_checkpoints_to_keep=t.save_num_checkpoints_to_keep,
        save_overwrite=resuming,  # what is newer than the resumed checkpoint is a torn leftover (rlp.run.checkpoint)
        autoresume=False,  # rlp.run.checkpoint picks the newest complete checkpoint (see its docstring)
        load_path=load_path,
        load_weights_only=load_weights_only,
        dist_timeout=t.dist_timeout,
        deterministic_mode=t.deterministic_mode,
    )
    checkpoint.set_symlink_upload_poll(trainer)
    checkpoint.manage_uploads(trainer, output_dir)  # local copies under the run folder, upload retries and errors
    return trainer, output_dir


def check_output_folders(recipe: Recipe) -> None:
    """Refuse a local ``trainer.output_dir`` or ``trainer.save_folder`` that cannot be created or written (a path
    whose parent is a file, a read-only folder) before any work, instead of failing at the first write."""
    for key, folder in (('trainer.output_dir', output_dir_of(recipe)), ('trainer.save_folder', save_folder_of(recipe))):
        if folder is None:
            continue
        if os.path.isfile(folder):
            raise ConfigError(f'{key}={folder!r} is a file; rule: {key} is a folder; fix: choose another path')
        try:
            check_local_folder(folder, key)
        except UsageError as err:
            raise ConfigError(str(err)) from None


def save_folder_of(recipe: Recipe) -> Optional[str]:
    """``trainer.save_folder`` with ``{run_name}`` filled in, as Composer formats it; None when not saving."""
    folder = recipe.trainer.save_folder
    return format_save_folder(folder, recipe.run_name) if folder is not None else None
