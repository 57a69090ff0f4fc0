"""Train from a recipe: ``composer -n N -m rlp.train RECIPE [key.sub=value ...]`` (or ``python -m rlp.train``).

The steps below are :func:`main`'s; steps 2 to 5 are :func:`rlp.run.trainer.build_trainer`.

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
import logging
import os
import shutil
import signal
import sys
import time
from typing import Optional

import yaml

from rlp.run.recipe import load_recipe
from rlp.run.recipe_schema import ConfigError, Recipe, recipe_to_dict, validate_for_world
from rlp.strictcfg import one_line

__all__ = ['main']

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


def _signal_exit(stop: BaseException) -> Optional[int]:
    """The exit code of Ctrl-C or SIGTERM (Composer's engine turns both into ``sys.exit(128 + signal)``), else None."""
    if isinstance(stop, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return stop.code if stop.code in (128 + signal.SIGINT, 128 + signal.SIGTERM) else None


def _remove_skeleton(output_dir: str) -> None:
    """Remove the run folder this run created when it trained nothing: only the resolved config, empty files and empty
    folders are there (anything else keeps the folder)."""
    for root, _dirs, files in os.walk(output_dir):
        for name in files:
            if name != 'resolved_config.yaml' and os.path.getsize(os.path.join(root, name)) > 0:
                return
    shutil.rmtree(output_dir, ignore_errors=True)


def _interrupted(trainer, recipe: Recipe, save_folder: Optional[str]) -> str:
    """The one line for Ctrl-C during ``fit``: where the run stopped and how to go on."""
    batch = trainer.state.timestamp.batch.value
    if save_folder is None:
        return (
            f'interrupted at batch {batch}; nothing was saved (trainer.save_folder is null), so the same command '
            f'starts over; set trainer.save_folder to make runs resumable'
        )
    newest = None
    try:
        from rlp.run.checkpoint import find_latest_checkpoint

        newest = find_latest_checkpoint(recipe.trainer.save_folder, recipe.run_name)
    except Exception:  # a store that cannot be listed now: the line below still says what to do
        pass
    where = f'from {newest}' if newest else f'from the start (no checkpoint in {save_folder} yet)'
    return f'interrupted at batch {batch}; rerun the same command to resume {where}'


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
    except ConfigError as err:
        print(f'rlp.train: invalid recipe {args.recipe}: {one_line(err)}', file=sys.stderr)
        return 2
    # The trainer's modules (torch, Composer, streaming) load only now: a bad recipe or command is refused above in
    # about a second, before they are imported.
    from rlp.run.checkpoint import upload_failure
    from rlp.run.guards import NonFiniteError
    from rlp.run.integrity import DataIntegrityError
    from rlp.run.summary import summarize
    from rlp.run.trainer import AlreadyFinished, build_trainer, output_dir_of, save_folder_of

    output_dir = output_dir_of(recipe)
    save_folder = save_folder_of(recipe)
    start = time.time()
    fresh = not os.path.exists(output_dir)
    try:
        trainer, output_dir = build_trainer(recipe, world_size=world_size)
    except (KeyboardInterrupt, SystemExit) as stop:
        code = _signal_exit(stop)
        if code is None:
            raise
        print('rlp.train: interrupted before training started; nothing was trained', file=sys.stderr, flush=True)
        return code
    except ConfigError as err:  # nothing is written before this point: the run folder appears only below
        print(f'rlp.train: {one_line(err)}', file=sys.stderr)
        return 2
    except AlreadyFinished as done:
        if rank == 0:
            print(f'rlp.train: nothing to do: {done}', flush=True)
            print(summarize(output_dir, save_folder=save_folder), flush=True)
        return 0
    if rank == 0:
        _write_resolved(recipe, args.recipe, output_dir, world_size)
    try:
        trainer.fit()
    except (KeyboardInterrupt, SystemExit) as stop:
        code = _signal_exit(stop)
        if code is None:
            raise
        if rank == 0:
            print(f'rlp.train: {_interrupted(trainer, recipe, save_folder)}', file=sys.stderr, flush=True)
        return code
    except (NonFiniteError, DataIntegrityError) as err:  # a run of NaN steps; a damaged shard, a foreign token id
        trainer.close()
        if rank == 0 and fresh and trainer.state.timestamp.batch.value == 0:
            _remove_skeleton(output_dir)
        print(f'rlp.train: stopped: {err}', file=sys.stderr, flush=True)
        return 1
    except Exception as err:  # a checkpoint upload that failed: one line (rlp.run.checkpoint.upload_failure)
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
