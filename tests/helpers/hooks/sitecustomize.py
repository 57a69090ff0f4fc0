"""Fault-injection hooks for subprocess tests, kept out of the production modules.

A test that wants a hook puts this folder first on the child's ``PYTHONPATH`` (:func:`tests.helpers.hooks.hook_env`)
and sets the hook's environment variable; Python imports ``sitecustomize`` at start-up in every process (the
``composer`` launcher and each rank alike). Each hook waits, through a ``sys.meta_path`` finder, until the module it
patches is imported, then wraps one function of it. Without the variables nothing is patched.

Hooks:
  - ``RLP_TEST_HANG_AFTER_BATCH=N``: training (``rlp.run.trainer.build_trainer``) gets a callback that stops making
    progress after batch N, so a crash test can SIGKILL it at a known point between two checkpoints.
  - ``RLP_DATA_TEST_SLEEP_AFTER_UNIT=S``: ``rlp-data prepare`` sleeps S seconds after each finished unit of work,
    so a crash test can kill it in the middle.
  - ``RLP_TEST_HANG_IN=PHASE:ARG``: the process blocks forever inside one phase, after printing
    ``RLP_TEST_HANG_IN=...: hanging in ...`` on stderr, so a crash test can SIGKILL it exactly there:
      - ``rollout:B``: inside ``rlp.rollouts.sample_thoughts`` (its first call) while batch B (0-based, the batch
        index of the RLP keys) trains;
      - ``backward:B``: inside the backward pass of batch B, in the gradient hook of a parameter half-way down the
        model's parameter list (autograd has produced some gradients of the step, not all);
      - ``upload:NAME[@B]``: inside Composer's checkpoint uploader process, in the upload of the object whose
        name ends with NAME: mid-transfer (boto3's progress callback, once a first 256 KiB of the body has been
        read to be sent: the request is open, the object not written) when the file is larger than that, else on
        entry, before the request (boto3 reports the progress of a smaller body only after sending it). With
        ``@B``, training also holds after batch B until its ``latest`` pointer uploads are submitted (Composer's
        ``CheckpointSaver.batch_end`` called in a loop), then waits: ``upload:latest-rank0.pt.symlink@5`` stops
        between a checkpoint's upload and the upload of its pointer, wherever the pointer would otherwise land.
  - ``RLP_TEST_PAUSE_IN=upload:NAME:FILE``: as ``upload:NAME`` of ``RLP_TEST_HANG_IN`` (the same point of the
    same upload), but the uploader process pauses there once, after printing ``RLP_TEST_PAUSE_IN=...: paused in
    ...`` on stderr, until FILE exists, then goes on with the transfer, so a test can change the world (e.g. take
    the object store down) while the request is open and part of the object has been sent.
  - ``RLP_DATA_TEST_KILL_AFTER_UPLOAD=PID:PORT``: ``rlp-data prepare`` SIGKILLs the S3 server process PID right
    after its first ``pipeline.storage.remote.upload_files`` call returned, and waits until 127.0.0.1:PORT refuses
    connections (an object-store outage in the middle of publishing).
  - ``RLP_TEST_WAIT_AFTER_BATCH=N:FILE``: after batch N, training lets the checkpoint uploads in flight finish
    (Composer's ``CheckpointSaver.batch_end`` called until its uploads and ``latest`` pointer tasks are done),
    creates ``FILE.reached`` and waits until FILE exists, so a test can change the world (e.g. take the object
    store down) at a known point.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from typing import Any, Callable

HANG_ENV = 'RLP_TEST_HANG_AFTER_BATCH'
SLEEP_ENV = 'RLP_DATA_TEST_SLEEP_AFTER_UNIT'
HANG_IN_ENV = 'RLP_TEST_HANG_IN'
PAUSE_IN_ENV = 'RLP_TEST_PAUSE_IN'
KILL_UPLOAD_ENV = 'RLP_DATA_TEST_KILL_AFTER_UPLOAD'
WAIT_ENV = 'RLP_TEST_WAIT_AFTER_BATCH'
_now = {'batch': -1}  # the batch being trained, kept by the HANG_IN tracker callback


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after ``name`` has been executed for the first time."""

    def __init__(self, name: str, patch: Callable[[Any], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            self.patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def _patch_train(module: Any) -> None:
    batches = int(os.environ[HANG_ENV])
    build = module.build_trainer

    def build_trainer(*args: Any, **kwargs: Any) -> Any:
        from composer.core import Callback

        class HangAfter(Callback):
            def batch_end(self, state: Any, logger: Any) -> None:
                if state.timestamp.batch.value == batches:
                    print(f'{HANG_ENV}={batches}: waiting to be killed', file=sys.stderr, flush=True)
                    while True:
                        time.sleep(1)

        trainer, output_dir = build(*args, **kwargs)
        trainer.state.callbacks.append(HangAfter())
        return trainer, output_dir

    module.build_trainer = build_trainer


def _patch_prepare_worker(module: Any) -> None:
    """Make both units of work of ``pipeline.workers`` sleep after they return (their done marker is written last).

    Pool workers get the wrapped functions too: forked ones inherit the patched module, spawned ones run this file
    again (``PYTHONPATH`` is inherited); a task is pickled by name, which resolves to the wrapper.
    """
    import functools

    delay = os.environ[SLEEP_ENV]

    def sleep_after(unit: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(unit)
        def unit_then_sleep(job: Any) -> Any:
            marker = unit(job)
            print(f'{SLEEP_ENV}={delay}: sleeping after {unit.__name__}', file=sys.stderr, flush=True)
            time.sleep(float(delay))
            return marker

        return unit_then_sleep

    for name in ('tokenize_unit', 'write_unit'):
        setattr(module, name, sleep_after(getattr(module, name)))


def _hang_here(where: str) -> None:
    print(f'{HANG_IN_ENV}={os.environ[HANG_IN_ENV]}: hanging in {where}', file=sys.stderr, flush=True)
    while True:
        time.sleep(1)


def _hang_in() -> tuple[str, str]:
    phase, _, arg = os.environ[HANG_IN_ENV].partition(':')
    if phase not in ('rollout', 'backward', 'upload') or not arg:
        raise ValueError(
            f'{HANG_IN_ENV}={os.environ[HANG_IN_ENV]!r}: expected rollout:B, backward:B or upload:NAME[@B]'
        )
    return phase, arg


def _patch_train_tracker(module: Any) -> None:
    """A callback that keeps ``_now['batch']`` and, for ``backward:B``, hooks a parameter's gradient."""
    phase, arg = _hang_in()
    build = module.build_trainer

    def build_trainer(*args: Any, **kwargs: Any) -> Any:
        from composer.core import Callback

        class Tracker(Callback):
            def fit_start(self, state: Any, logger: Any) -> None:
                if phase != 'backward':
                    return
                params = [p for p in state.model.parameters() if p.requires_grad]
                middle = params[len(params) // 2]

                def in_backward(grad: Any) -> None:
                    if _now['batch'] == int(arg):
                        _hang_here(f'the backward pass of batch {arg} (gradient of parameter {len(params) // 2})')

                middle.register_hook(in_backward)

            def before_train_batch(self, state: Any, logger: Any) -> None:
                _now['batch'] = int(state.timestamp.batch.value)

            def batch_end(self, state: Any, logger: Any) -> None:
                if phase != 'upload' or _now['batch'] != int(arg.partition('@')[2]):
                    return
                from composer.callbacks import CheckpointSaver

                for saver in [c for c in state.callbacks if isinstance(c, CheckpointSaver)]:
                    while saver.symlink_upload_tasks:  # each is submitted once its checkpoint is on the store
                        saver.batch_end(state, logger)
                        time.sleep(0.05)
                print(f'{HANG_IN_ENV}={os.environ[HANG_IN_ENV]}: training holds', file=sys.stderr, flush=True)
                while True:
                    time.sleep(1)

        trainer, output_dir = build(*args, **kwargs)
        trainer.state.callbacks.insert(0, Tracker())
        return trainer, output_dir

    module.build_trainer = build_trainer


def _patch_rollouts(module: Any) -> None:
    sample = module.sample_thoughts

    def sample_thoughts(*args: Any, **kwargs: Any) -> Any:
        if _now['batch'] == int(_hang_in()[1]):
            _hang_here(f'rlp.rollouts.sample_thoughts at batch {_now["batch"]}')
        return sample(*args, **kwargs)

    module.sample_thoughts = sample_thoughts


def _pause_in() -> tuple[str, str]:
    phase, _, rest = os.environ[PAUSE_IN_ENV].partition(':')
    name, _, path = rest.partition(':')
    if phase != 'upload' or not name or not path:
        raise ValueError(f'{PAUSE_IN_ENV}={os.environ[PAUSE_IN_ENV]!r}: expected upload:NAME:FILE')
    return name, path


def _pause_here(where: str, path: str, paused: list) -> None:
    """Wait until ``path`` exists, the first time only (a retry of the same upload passes)."""
    if paused:
        return
    paused.append(where)
    print(f'{PAUSE_IN_ENV}={os.environ[PAUSE_IN_ENV]}: paused in {where}', file=sys.stderr, flush=True)
    while not os.path.exists(path):
        time.sleep(0.05)
    print(f'{PAUSE_IN_ENV}={os.environ[PAUSE_IN_ENV]}: released', file=sys.stderr, flush=True)


def _patch_s3_upload(module: Any) -> None:
    if os.environ.get(PAUSE_IN_ENV):
        name, path = _pause_in()
        paused: list = []

        def stop(where: str) -> None:
            _pause_here(where, path, paused)
    else:
        name, stop = _hang_in()[1].partition('@')[0], _hang_here
    upload = module.S3ObjectStore.upload_object

    def upload_object(self: Any, object_name: str, filename: Any, callback: Any = None, **kwargs: Any) -> Any:
        if not str(object_name).endswith(name):
            return upload(self, object_name, filename, callback, **kwargs)
        if os.path.getsize(filename) <= 256 * 1024:
            stop(f'the upload of {object_name} (before its request: {os.path.getsize(filename)} bytes)')

        def progress(sent: int, total: int) -> None:
            if callback is not None:
                callback(sent, total)
            if sent > 0:
                stop(f'the upload of {object_name} ({sent} of {total} bytes read to be sent)')

        return upload(self, object_name, filename, progress, **kwargs)

    module.S3ObjectStore.upload_object = upload_object


def _patch_upload_kill(module: Any) -> None:
    import signal
    import socket

    pid, port = (int(x) for x in os.environ[KILL_UPLOAD_ENV].split(':'))
    upload = module.upload_files
    calls = []

    def upload_files(*args: Any, **kwargs: Any) -> Any:
        result = upload(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            os.kill(pid, signal.SIGKILL)
            while True:
                with socket.socket() as sock:
                    if sock.connect_ex(('127.0.0.1', port)) != 0:
                        break
                time.sleep(0.05)
            print(f'{KILL_UPLOAD_ENV}: killed the S3 server after the first upload', file=sys.stderr, flush=True)
        return result

    module.upload_files = upload_files


def _patch_train_wait(module: Any) -> None:
    batch, _, path = os.environ[WAIT_ENV].partition(':')
    build = module.build_trainer

    def build_trainer(*args: Any, **kwargs: Any) -> Any:
        from composer.core import Callback

        class WaitAfter(Callback):
            def batch_end(self, state: Any, logger: Any) -> None:
                if state.timestamp.batch.value == int(batch):
                    from composer.callbacks import CheckpointSaver

                    for saver in [c for c in state.callbacks if isinstance(c, CheckpointSaver) and c.remote_uploader]:
                        while saver.symlink_upload_tasks or saver.remote_uploader.futures:
                            saver.batch_end(state, logger)
                            time.sleep(0.05)
                    open(path + '.reached', 'w').close()
                    while not os.path.exists(path):
                        time.sleep(0.05)

        trainer, output_dir = build(*args, **kwargs)
        trainer.state.callbacks.append(WaitAfter())
        return trainer, output_dir

    module.build_trainer = build_trainer


if os.environ.get(KILL_UPLOAD_ENV):
    sys.meta_path.insert(0, _PatchOnImport('pipeline.storage.remote', _patch_upload_kill))

if os.environ.get(WAIT_ENV):
    sys.meta_path.insert(0, _PatchOnImport('rlp.run.trainer', _patch_train_wait))

if os.environ.get(HANG_IN_ENV):
    _phase = _hang_in()[0]
    if _phase in ('rollout', 'backward') or '@' in _hang_in()[1]:
        sys.meta_path.insert(0, _PatchOnImport('rlp.run.trainer', _patch_train_tracker))
    if _phase == 'rollout':
        sys.meta_path.insert(0, _PatchOnImport('rlp.rollouts', _patch_rollouts))
    if _phase == 'upload':
        sys.meta_path.insert(0, _PatchOnImport('composer.utils.object_store.s3_object_store', _patch_s3_upload))

if os.environ.get(PAUSE_IN_ENV):
    _pause_in()
    if os.environ.get(HANG_IN_ENV):
        raise ValueError(f'set {PAUSE_IN_ENV} or {HANG_IN_ENV}, not both')
    sys.meta_path.insert(0, _PatchOnImport('composer.utils.object_store.s3_object_store', _patch_s3_upload))

if os.environ.get(HANG_ENV):
    sys.meta_path.insert(0, _PatchOnImport('rlp.run.trainer', _patch_train))

if os.environ.get(SLEEP_ENV):
    sys.meta_path.insert(0, _PatchOnImport('pipeline.workers', _patch_prepare_worker))
