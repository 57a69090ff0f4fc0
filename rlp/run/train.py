"""Train from a recipe: ``composer -n N -m rlp.train RECIPE [key.sub=value ...]`` (or ``python -m rlp.train``).

Start-up order (each step matters for determinism or for surviving a crash):

1. Validate the recipe (its base chain merged; unknown keys, weighting families, batch divisibility for this
   world size) and log the resolved config (also written to ``{output_dir}/resolved_config.yaml``).
2. Check the save folder's bucket, initialise torch.distributed (gloo on CPU, NCCL on GPU).
3. ``streaming.base.util.clean_stale_shared_memory()`` once per process, before any StreamingDataset, when
   ``data.clean_stale_shared_memory`` (a crashed run's shared memory otherwise blocks the restart).
4. Seed everything, build tokenizer, model (seeded random init or pretrained), the stream mixture, optimizer,
   schedule, the RLP algorithm (unless ``rlp: null``), loggers and callbacks.
5. Find the newest complete checkpoint in ``save_folder`` ourselves (:mod:`rlp.run.checkpoint`) and pass it as
   ``load_path``; Composer's own autoresume stays off (it misses checkpoints whose ``latest`` pointer was not
   uploaded yet and prefers stale local copies).
6. ``fit``; then rank 0 prints a summary: losses, reward and information-gain trend, where the files are.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import time
from typing import Any, Optional

import yaml

from rlp.run.recipe import ConfigError, Recipe, load_recipe, recipe_to_dict, validate_for_world

__all__ = ['build_trainer', 'main', 'shown_location', 'summarize']

log = logging.getLogger('rlp.train')


_USAGE = 'python -m rlp.train RECIPE [key.sub=value ...]  (or: composer -n N -m rlp.train RECIPE [key.sub=value ...])'


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (usage and fix included) with exit code 2."""

    def error(self, message: str):
        self.exit(2, f'rlp.train: error: {message}; usage: {_USAGE}; e.g. python -m rlp.train recipes/smoke-cpu.yaml\n')


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = _Parser(prog='rlp.train', usage=_USAGE, description='Train from a recipe.')
    parser.add_argument('recipe', nargs='?', help='YAML recipe (required), e.g. recipes/smoke-cpu.yaml')
    parser.add_argument('overrides', nargs='*', help='optional key.sub=value overrides (values parsed as YAML)')
    args = parser.parse_args(argv)
    if args.recipe is None:
        parser.error('a recipe file is required (overrides are optional)')
    return args


class AlreadyFinished(Exception):
    """The newest checkpoint already reaches ``max_duration``: nothing to train (a rerun of a finished run)."""


def _device_name(requested: str) -> str:
    import torch

    if requested == 'auto':
        return 'gpu' if torch.cuda.is_available() else 'cpu'
    if requested == 'gpu' and not torch.cuda.is_available():
        raise ConfigError('trainer.device=gpu but no CUDA device is visible; use trainer.device=auto or cpu')
    return requested


def _optimizer(recipe: Recipe, params):
    import torch
    from composer.optim import DecoupledAdamW

    o = recipe.trainer.optimizer
    if o.name == 'decoupled_adamw':
        return DecoupledAdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if o.name == 'adamw':
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay)


def _scheduler(recipe: Recipe):
    from composer.optim import (
        ConstantScheduler,
        ConstantWithWarmupScheduler,
        CosineAnnealingScheduler,
        CosineAnnealingWithWarmupScheduler,
        LinearScheduler,
        LinearWithWarmupScheduler,
    )

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


def _output_dir(recipe: Recipe) -> str:
    return recipe.trainer.output_dir.replace('{run_name}', recipe.run_name)


def _algorithms(recipe: Recipe, tokenizer, output_dir: str) -> list:
    from composer.algorithms import GradientClipping

    algorithms: list = []
    if recipe.trainer.grad_clip_norm is not None:
        algorithms.append(GradientClipping(clipping_type='norm', clipping_threshold=recipe.trainer.grad_clip_norm))
    if recipe.rlp is not None:
        from rlp.run.algorithm import RLP

        rlp_cfg = recipe.rlp
        if rlp_cfg.log.path is None:  # the sampled-thoughts JSONL lives beside metrics.jsonl
            rlp_cfg = dataclasses.replace(
                rlp_cfg, log=dataclasses.replace(rlp_cfg.log, path=os.path.join(output_dir, 'thoughts.jsonl'))
            )
        algorithms.append(RLP(rlp_cfg, seed=recipe.seed, tokenizer=tokenizer))
    from rlp.run.guards import FiniteSteps

    # last in the list: Composer runs AFTER_* events in reverse order, so it sees the NTP loss before RLP does
    algorithms.append(FiniteSteps(max_consecutive=recipe.trainer.max_nonfinite_steps))
    return algorithms


def build_trainer(recipe: Recipe, *, world_size: int):
    """Everything from step 2 to 5 of the module docstring; returns ``(trainer, output_dir)``."""
    from composer import Trainer
    from composer.callbacks import LRMonitor, MemoryMonitor, SpeedMonitor
    from composer.devices import DeviceCPU, DeviceGPU
    from composer.utils import dist, reproducibility

    from rlp.run import checkpoint
    from rlp.run.data import build_dataloader
    from rlp.run.integrity import check_stream_tokenizers
    from rlp.run.metrics import ConsoleLine, MetricsJsonlLogger, SampleIdRecorder
    from rlp.run.models import build_composer_model

    t = recipe.trainer
    device_batch = validate_for_world(recipe, world_size)
    device = _device_name(t.device)
    # Recipe checks that need the machine stay here (this one and _device_name's); all others are in rlp.run.recipe.
    # TrainerConfig refuses amp on device: cpu; device: auto turns into the CPU only where no CUDA device is visible.
    if device == 'cpu' and t.precision != 'fp32':
        raise ConfigError(
            f'trainer.precision={t.precision} needs a GPU but trainer.device={t.device} found none; '
            f'on CPU use trainer.precision=fp32'
        )
    if t.save_folder is not None:
        checkpoint.check_save_folder(t.save_folder, recipe.run_name)
    check_output_folders(recipe)
    dist.initialize_dist(DeviceGPU() if device == 'gpu' else DeviceCPU(), timeout=t.dist_timeout)
    if recipe.data.clean_stale_shared_memory:
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
    reproducibility.seed_all(recipe.seed)

    output_dir = _output_dir(recipe)
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
    if recipe.callbacks.speed_monitor:
        callbacks.append(SpeedMonitor(window_size=recipe.callbacks.speed_monitor))
    if recipe.callbacks.lr_monitor:
        callbacks.append(LRMonitor())
    if recipe.callbacks.memory_monitor and device == 'gpu':
        callbacks.append(MemoryMonitor())

    load_path, load_weights_only = t.load_path, t.load_weights_only
    if t.autoresume and t.save_folder is not None:
        newest = checkpoint.find_latest_checkpoint(t.save_folder, recipe.run_name)
        if newest is not None:
            done = checkpoint.checkpoint_batch(newest)
            if t.max_duration.endswith('ba') and done >= int(t.max_duration[:-2]):
                raise AlreadyFinished(
                    f'{newest} already covers trainer.max_duration={t.max_duration}; raise '
                    f'max_duration to train further, or change run_name/save_folder to start over'
                )
            load_path, load_weights_only = newest, False
            log.info('resuming from %s', newest)

    parallelism = None
    if t.fsdp is not None:
        if device == 'gpu' and world_size > 1:
            parallelism = {'fsdp': dict(t.fsdp)}
        else:
            log.warning(
                'trainer.fsdp is ignored: FSDP needs more than one GPU (device=%s, world=%d)', device, world_size
            )

    trainer = Trainer(
        model=model,
        train_dataloader=loader,
        max_duration=t.max_duration,
        optimizers=optimizer,
        schedulers=_scheduler(recipe),
        algorithms=_algorithms(recipe, tokenizer, output_dir),
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
        save_overwrite=False,
        autoresume=False,  # rlp.run.checkpoint picks the newest complete checkpoint (see its docstring)
        load_path=load_path,
        load_weights_only=load_weights_only,
        dist_timeout=t.dist_timeout,
        deterministic_mode=t.deterministic_mode,
    )
    checkpoint.set_symlink_upload_poll(trainer)
    checkpoint.manage_uploads(trainer, output_dir)  # local copies under the run folder, upload retries and errors
    return trainer, output_dir


def _trend(records: list[dict[str, Any]], key: str) -> Optional[tuple[float, float, int]]:
    values = [r[key] for r in records if isinstance(r.get(key), int | float)]
    if not values:
        return None
    k = max(1, len(values) // 4)
    return sum(values[:k]) / k, sum(values[-k:]) / k, len(values)


def _verdict(ema: Optional[tuple], current: Optional[tuple]) -> list[str]:
    """What the reward trend says, read from the gain against the EMA teacher; a warning when the gain against the
    current model rises while the gain against the EMA falls (the policy games the reward by damaging its own
    no-think prediction: typical of a learning rate that is too high)."""
    if ema is None:
        return []
    first, last, _ = ema
    trend = 'rose' if last > first else 'did not rise'
    level = 'thoughts help' if last > 0 else 'a thought still costs more than it gains'
    lines = [f'  the reward against the EMA teacher {trend}: rlp/gain_vs_ema {first:.4f} -> {last:.4f} '
             f'(first -> last quarter; {level})']  # fmt: skip
    if current is not None and current[1] > current[0] and last < first:
        lines.append(
            f'  WARNING: rlp/gain_vs_current rose ({current[0]:.4f} -> {current[1]:.4f}) while rlp/gain_vs_ema '
            f'fell: the policy is degrading its own no-think prediction; lower the learning rate or add NTP loss'
        )
    return lines


def shown_location(folder: str) -> str:
    """A save folder as printed: a local path made absolute; a URI with its query string (signed-URL tokens) and
    any password replaced by ``<redacted>``."""
    import urllib.parse

    parts = urllib.parse.urlsplit(folder)
    if not re.match(r'[A-Za-z][A-Za-z0-9+.-]*:/', folder):
        return os.path.abspath(folder)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f':{parts.password}@', ':<redacted>@', 1)
    query = '<redacted>' if parts.query else ''
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ''))


def summarize(output_dir: str, seconds: Optional[float] = None, save_folder: Optional[str] = None) -> str:
    """Human summary of a run from its ``metrics.jsonl``: first vs last quarter of each loss and reward, and where
    the files are (metrics, thoughts, resolved config, and the checkpoints when ``save_folder`` is given)."""
    from rlp.run.metrics import read_metrics

    metrics_path = os.path.join(output_dir, 'metrics.jsonl')
    records = [r for _, r in sorted(read_metrics(metrics_path).items()) if 'loss/train/total' in r]
    lines = [f'== rlp.train summary: {len(records)} batches' + (f' in {seconds:.0f} s' if seconds else '')]
    keys = sorted({k for r in records for k in r})
    wanted = [k for k in keys if k.startswith('loss/train/')]
    wanted += [k for k in keys if ('reward' in k or 'gain' in k or 's_ema' in k or 's_pred' in k) and k not in wanted]
    for key in wanted:
        trend = _trend(records, key)
        if trend:
            first, last, n = trend
            lines.append(f'  {key:40s} first quarter {first: .4f} -> last quarter {last: .4f}  ({n} values)')
    lines += _verdict(_trend(records, 'rlp/gain_vs_ema'), _trend(records, 'rlp/gain_vs_current'))
    lines.append(f'  metrics (one JSON object per batch): {os.path.abspath(metrics_path)}')
    thoughts = os.path.join(output_dir, 'thoughts.jsonl')
    if os.path.exists(thoughts):
        lines.append(f'  sampled thoughts: {os.path.abspath(thoughts)}')
    lines.append(f'  resolved config: {os.path.abspath(os.path.join(output_dir, "resolved_config.yaml"))}')
    if save_folder is not None:
        lines.append(f'  checkpoints: {shown_location(save_folder)}')
    return '\n'.join(lines)


def check_output_folders(recipe: Recipe) -> None:
    """Refuse a local ``trainer.output_dir`` or ``trainer.save_folder`` that cannot be created or written (a path
    whose parent is a file, a read-only folder) before any work, instead of failing at the first write."""
    from pipeline.errors import UsageError
    from pipeline.prepare_args import check_local_folder

    for key, folder in (('trainer.output_dir', _output_dir(recipe)), ('trainer.save_folder', _save_folder(recipe))):
        if folder is None:
            continue
        if os.path.isfile(folder):
            raise ConfigError(f'{key}={folder!r} is a file; rule: {key} is a folder; fix: choose another path')
        try:
            check_local_folder(folder, key)
        except UsageError as err:
            raise ConfigError(str(err)) from None


def refuse_uri_queries(recipe: Recipe) -> None:
    """Refuse a stream ``remote``/``local`` or ``trainer.save_folder`` URI with a query string (a signed URL's
    ``?X-Amz-Signature=...``): file names are appended to these folders, so a query would end up inside object
    keys and error messages. The message shows the URI with its query redacted (:func:`shown_location`)."""
    named = [
        (f'data.streams.{n}.{k}', getattr(s, k)) for n, s in recipe.data.streams.items() for k in ('remote', 'local')
    ]
    for key, value in named + [('trainer.save_folder', recipe.trainer.save_folder)]:
        if value and re.match(r'[A-Za-z][A-Za-z0-9+.-]*:/', value) and ('?' in value or '#' in value):
            raise ConfigError(
                f'{key}={shown_location(value)!r} carries a query string (a signed URL?); remote folders take '
                f'none: file names are appended to them and credentials come from the environment (AWS_*, '
                f'S3_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...); remove everything from the ?'
            )


def _one_line(err: BaseException) -> str:
    return ' '.join(str(err).split())


def _save_folder(recipe: Recipe) -> Optional[str]:
    """``trainer.save_folder`` with ``{run_name}`` filled in, as Composer formats it; None when not saving."""
    from rlp.run.checkpoint import format_save_folder

    folder = recipe.trainer.save_folder
    return format_save_folder(folder, recipe.run_name) if folder is not None else None


def _write_resolved(recipe: Recipe, recipe_path: str, output_dir: str, world_size: int) -> None:
    """Write ``resolved_config.yaml``; say where in one line (the whole config too with console_verbose)."""
    resolved = yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, 'resolved_config.yaml')
    with open(path, 'w') as fh:
        fh.write(resolved)
    if recipe.loggers.console_verbose:
        log.info('resolved recipe %s (world size %d):\n%s', recipe_path, world_size, resolved)
    else:
        log.info('resolved recipe %s (world size %d) written to %s', recipe_path, world_size, os.path.abspath(path))


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``rlp.train`` (and the ``rlp-train`` console script)."""
    args = _parse_args(argv)
    logging.basicConfig(  # the run's log goes to stdout; stderr is kept for the one line of a user error
        level=logging.INFO,
        stream=sys.stdout,
        format='%(asctime)s rank' + os.environ.get('RANK', '0') + ' %(levelname)s %(name)s: %(message)s',
    )
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        validate_for_world(recipe, world_size)
        refuse_uri_queries(recipe)
    except ConfigError as err:
        print(f'rlp.train: invalid recipe {args.recipe}: {_one_line(err)}', file=sys.stderr)
        return 2
    output_dir = _output_dir(recipe)
    save_folder = _save_folder(recipe)
    start = time.time()
    try:
        trainer, output_dir = build_trainer(recipe, world_size=world_size)
    except ConfigError as err:  # nothing is written before this point: the run folder appears only below
        print(f'rlp.train: {_one_line(err)}', file=sys.stderr)
        return 2
    except AlreadyFinished as done:
        if rank == 0:
            print(f'rlp.train: nothing to do: {done}', flush=True)
            print(summarize(output_dir, save_folder=save_folder), flush=True)
        return 0
    if rank == 0:
        _write_resolved(recipe, args.recipe, output_dir, world_size)
    from rlp.run.guards import NonFiniteError
    from rlp.run.integrity import DataIntegrityError

    try:
        trainer.fit()
    except (NonFiniteError, DataIntegrityError) as err:  # a run of NaN steps; a damaged shard, a foreign token id
        print(f'rlp.train: stopped: {err}', file=sys.stderr, flush=True)
        trainer.close()
        return 1
    except Exception as err:  # a checkpoint upload that failed: one line (rlp.run.checkpoint.upload_failure)
        from rlp.run.checkpoint import upload_failure

        line = upload_failure(trainer, err)
        if line is None:
            raise
        print(f'rlp.train: stopped: {line}', file=sys.stderr, flush=True)
        trainer.close()
        return 1
    trainer.close()
    if rank == 0:
        print(summarize(output_dir, time.time() - start, save_folder=save_folder), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
