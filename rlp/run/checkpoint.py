"""Resumption: find the newest complete checkpoint in a save folder (local or object store) ourselves.

This module is the one place that works around two Composer 0.32.1 autoresume bugs (Composer is frozen
upstream, so they will not be fixed there). ``rlp.run.trainer`` therefore never turns on Composer's own
``autoresume``; it lists the save folder with :func:`find_latest_checkpoint` and passes the result as
``load_path``.

1. Late ``latest`` pointer on object stores. Composer uploads
   ``latest-rank0.pt.symlink`` only after polling that the checkpoint object exists (every 30 s, private
   ``CheckpointSaver._symlink_upload_wait_before_next_try_in_seconds``). A job killed in that window leaves the
   checkpoint on S3 without the pointer; Composer's autoresume then starts again from batch 0 and fails at the
   end with "Object ... already exists, but overwrite was set to False". Test:
   ``tests/rlp/run/test_checkpoint.py::test_composer_autoresume_misses_checkpoint_without_symlink``.
2. Stale local copy. Composer's autoresume downloads the remote pointer target into
   a local folder literally named ``s3:/bucket/prefix/`` under the working directory and, on the next start,
   prefers that local ``latest-rank0.pt`` over the object store, so an old checkpoint wins. Test:
   ``tests/rlp/run/test_checkpoint.py::test_composer_autoresume_prefers_stale_local_s3_folder``.

Two more workarounds apply to object-store save folders only (:func:`manage_uploads`, called on the built trainer):

3. Local copies left behind. ``CheckpointSaver.__init__`` (``composer/callbacks/checkpoint_saver.py``) writes every
   checkpoint into a ``tempfile.mkdtemp()`` folder that nothing ever deletes and, with the default
   ``num_checkpoints_to_keep=-1``, keeps every checkpoint there; ``RemoteUploader`` (``composer/utils/
   remote_uploader.py``) copies each one again into a ``TemporaryDirectory`` before uploading it. So a run leaves a
   full local copy of every checkpoint in the system temp folder, after a success and a crash alike. Here the
   folders move to ``{output_dir}/.checkpoint-uploads/rank{R}/`` (wiped when the next run starts, removed when the
   trainer closes), and each local checkpoint is deleted as soon as the uploader holds its copy, which the
   uploader deletes once the object is on the store. Test:
   ``tests/rlp/run/test_checkpoint.py::test_composer_leaves_checkpoint_copies_in_the_temp_folder``.
4. Upload failures. The uploader process gives up after botocore's retries (Composer's own retry covers only
   ``ObjectStoreTransientError``, which an unreachable endpoint is not; with botocore's default an unreachable
   endpoint failed after 0.1 s, measured), and the error surfaces in a later ``batch_end`` or at ``fit_end`` as a
   bare botocore exception and a wall of chained tracebacks, with no word on which checkpoint was lost. Here the
   S3 client gets ``UPLOAD_MAX_ATTEMPTS`` retries with botocore's backoff (unless ``AWS_MAX_ATTEMPTS`` is set), so
   a short outage passes while training goes on, and :func:`upload_failure` turns the failure into one line: the
   checkpoint, its URI, the cause, the fix.
   Test: ``tests/rlp/run/test_checkpoint_outage.py``.

Completeness: an object-store object exists only once its upload finished; a local monolithic checkpoint is a
torch zip file whose central directory is written last (a truncated file fails ``zipfile.is_zipfile``); a
sharded checkpoint folder is complete once its ``.metadata`` file exists (torch.distributed.checkpoint writes it
after every shard) in a local folder; on an object store each rank uploads its own shard file, so ``.metadata``
(uploaded by rank 0) can land before another rank's shard, and a job killed then leaves a torn folder: a remote
sharded folder counts only when every file its ``.metadata`` names is listed (:func:`_sharded_complete`), else the
next older checkpoint is used. The torn folder's files stay where they are, and Composer refuses to write over
them (an upload of an existing object fails; a local file with a later batch fails ``fit_start``'s conflict check):
``rlp.run.train`` therefore passes ``save_overwrite=True`` when it resumes from the checkpoint found here, since
everything newer in the folder is by construction an incomplete leftover of the killed run. Test:
``tests/rlp/run/test_fsdp.py::test_sharded_kill_and_restart_is_bitwise_identical``.

A torn local checkpoint (a save cut short by a full disk or a kill: a ``.pt`` file that is not a complete zip, a
sharded folder without ``.metadata``) newer than the newest complete one is never resumed from, and would make
Composer refuse to write the same name again (``FileExistsError ... may conflict``) when the resumed run reaches
that batch. Training therefore sets it aside (:func:`set_aside_torn`): renamed to ``<name>.torn`` (kept, not
deleted) with one warning line naming it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from typing import Optional

from rlp.run.recipe_schema import ConfigError
from rlp.strictcfg import one_line

# Composer and boto3 are imported inside the functions that use them: ``rlp --help`` imports this module (through
# ``rlp.tools.export``, for ``checkpoint_batch``) and should not wait for them.

__all__ = [
    'SYMLINK_POLL_ENV',
    'check_save_folder',
    'checkpoint_batch',
    'find_latest_checkpoint',
    'format_save_folder',
    'list_remote',
    'manage_uploads',
    'set_aside_torn',
    'set_symlink_upload_poll',
    'split_remote',
    'upload_failure',
]

log = logging.getLogger(__name__)

_MONOLITHIC = re.compile(r'(?:^|/)ep(\d+)-ba(\d+)-rank0\.pt$')
_SHARDED = re.compile(r'(?:^|/)ep(\d+)-ba(\d+)/\.metadata$')
SYMLINK_POLL_ENV = 'RLP_SYMLINK_UPLOAD_POLL_S'
"""Environment variable (seconds) that shortens Composer's symlink-upload poll; tests set it to keep runs short."""


def format_save_folder(save_folder: str, run_name: str) -> str:
    """``save_folder`` with ``{run_name}`` filled in (the only placeholder Composer allows in folders)."""
    return save_folder.replace('{run_name}', run_name)


def split_remote(folder: str) -> Optional[tuple[str, str, str]]:
    """``(backend, bucket, path)`` of an object-store URI (path without a trailing ``/``); None for a local path."""
    from composer.utils.file_helpers import parse_uri

    backend, bucket, path = parse_uri(folder)
    return (backend, bucket, path.rstrip('/')) if backend else None


def _newest(names: list[str], pattern: re.Pattern, accept=None) -> Optional[tuple[tuple[int, int], str]]:
    """The newest name matching ``pattern`` (highest batch, then epoch) that ``accept`` (if given) takes."""
    found = []
    for name in names:
        m = pattern.search(name)
        if m:
            found.append(((int(m.group(2)), int(m.group(1))), name))  # batch first: it grows monotonically
    for key, name in sorted(found, reverse=True):
        if accept is None or accept(name):
            return key, name
    return None


def _sharded_complete(folder: str, metadata_name: str, names: list[str]) -> bool:
    """True if every shard file that the remote sharded checkpoint's ``.metadata`` names is in ``names``."""
    import pickle

    from composer.utils.file_helpers import maybe_create_object_store_from_uri

    store = maybe_create_object_store_from_uri(folder)
    key = f'{split_remote(folder)[2]}/{metadata_name}'.lstrip('/')
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, '.metadata')
        store.download_object(key, local)
        with open(local, 'rb') as fh:
            metadata = pickle.load(fh)  # torch.distributed.checkpoint's own format (FileSystemReader reads it so)
    parent = metadata_name[: -len('.metadata')]
    missing = sorted(
        {info.relative_path for info in metadata.storage_data.values()}
        - {n[len(parent) :] for n in names if n.startswith(parent)}
    )
    if missing:
        log.warning('%s/%s is incomplete (missing %s): skipped', folder, parent.rstrip('/'), ', '.join(missing))
    return not missing


def list_remote(backend: str, bucket: str, path: str) -> list[str]:
    """The object names under ``backend://bucket/path/``, relative to it (``ep0-ba4/.metadata``, ...)."""
    from composer.utils.file_helpers import maybe_create_object_store_from_uri

    store = maybe_create_object_store_from_uri(f'{backend}://{bucket}/{path}')
    if store is None or not hasattr(store, 'list_objects'):
        raise ConfigError(
            f'cannot list {backend}://{bucket}/{path}: Composer has no listing object store for '
            f'{backend}://; use s3:// or gs:// (or a local folder) as trainer.save_folder'
        )
    prefix = f'{path}/' if path else ''
    return [key[len(prefix) :] for key in store.list_objects(prefix) if key.startswith(prefix)]


def _list_local(folder: str) -> list[str]:
    names = []
    if not os.path.isdir(folder):
        return names
    for entry in os.listdir(folder):
        full = os.path.join(folder, entry)
        if os.path.isfile(full) and not os.path.islink(full) and zipfile.is_zipfile(full):
            names.append(entry)
        elif os.path.isdir(full) and os.path.isfile(os.path.join(full, '.metadata')):
            names.append(f'{entry}/.metadata')
    return names


def _torn_local(folder: str) -> list[str]:
    """Checkpoint names in a local ``folder`` that were started but never completed (see the module docstring)."""
    torn = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        full = os.path.join(folder, entry)
        if os.path.islink(full):
            continue
        if _MONOLITHIC.search(entry) and os.path.isfile(full) and not zipfile.is_zipfile(full):
            torn.append(entry)
        elif re.fullmatch(r'ep\d+-ba\d+', entry) and os.path.isdir(full) and not os.path.isfile(f'{full}/.metadata'):
            torn.append(entry)
    return torn


def set_aside_torn(save_folder: str, run_name: str) -> list[str]:
    """Rename each torn checkpoint of a local save folder to ``<name>.torn`` (one warning line each); rank 0 only.

    Returns the new paths. Object stores need nothing: an object exists only once its upload finished.
    """
    from composer.utils import dist

    folder = format_save_folder(save_folder, run_name)
    if dist.get_global_rank() != 0 or split_remote(folder) is not None:
        return []
    moved = []
    for name in _torn_local(folder):
        src = os.path.join(folder, name)
        dest = f'{src}.torn'
        n = 1
        while os.path.exists(dest):
            n += 1
            dest = f'{src}.torn{n}'
        os.rename(src, dest)
        moved.append(dest)
        log.warning(
            'torn checkpoint %s (an interrupted save: not a complete checkpoint) set aside as %s; resuming from the '
            'newest complete one; delete it once you no longer need it',
            src,
            os.path.basename(dest),
        )
    return moved


def checkpoint_batch(path: str) -> int:
    """The batch count in a checkpoint name written by Composer (``.../ep0-ba40-rank0.pt`` -> 40)."""
    m = re.search(r'ep\d+-ba(\d+)(?:-rank0\.pt)?/?$', path)
    if not m:
        raise ValueError(f'{path!r} is not a Composer checkpoint name (ep<E>-ba<B>-rank0.pt or ep<E>-ba<B>/)')
    return int(m.group(1))


def find_latest_checkpoint(save_folder: str, run_name: str) -> Optional[str]:
    """Path or URI of the newest complete checkpoint in ``save_folder``, or None if there is none.

    Monolithic checkpoints ``ep{E}-ba{B}-rank0.pt`` and sharded folders ``ep{E}-ba{B}/`` are both found; the
    one with the highest batch count wins. Composer's ``latest*`` pointers are ignored (see the module
    docstring). Under ``composer -n N`` call it on every rank after dist init; rank 0's answer is broadcast.
    """
    from composer.utils import dist

    answer: list[Optional[str]] = [None]
    if dist.get_global_rank() == 0:
        folder = format_save_folder(save_folder, run_name)
        remote = split_remote(folder)
        names = list_remote(*remote) if remote else _list_local(folder)
        sharded = _newest(names, _SHARDED, accept=(lambda n: _sharded_complete(folder, n, names)) if remote else None)
        candidates = [c for c in (_newest(names, _MONOLITHIC), sharded) if c is not None]
        if candidates:
            _, name = max(candidates)
            if name.endswith('/.metadata'):
                name = name[: -len('/.metadata')]
            answer[0] = f'{folder.rstrip("/")}/{name}'
        log.info('newest complete checkpoint in %s: %s', folder, answer[0])
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(answer, src=0)
    return answer[0]


def check_save_folder(save_folder: str, run_name: str) -> None:
    """Fail before training when an object-store save folder's bucket is missing or unreachable.

    Raises:
        ConfigError: naming the bucket, the cause and the fix.
    """
    remote = split_remote(format_save_folder(save_folder, run_name))
    if remote is None:
        return
    backend, bucket, path = remote
    if not bucket:
        raise ConfigError(f'trainer.save_folder={save_folder!r} names no bucket; write {backend}://BUCKET/prefix')
    if backend != 's3':
        return
    import boto3
    import botocore.exceptions

    client = boto3.client('s3', endpoint_url=os.environ.get('S3_ENDPOINT_URL') or None)
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as err:
        code = err.response.get('Error', {}).get('Code', '?')
        raise ConfigError(
            f'trainer.save_folder={save_folder!r}: bucket {bucket!r} is not usable (S3 error {code}); '
            f'create it or fix the name/credentials (S3_ENDPOINT_URL, AWS_* variables)'
        ) from err
    except botocore.exceptions.BotoCoreError as err:
        raise ConfigError(
            f'trainer.save_folder={save_folder!r}: cannot reach bucket {bucket!r} ({err}); check '
            f'S3_ENDPOINT_URL and the AWS credentials'
        ) from err


def set_symlink_upload_poll(trainer, seconds: Optional[float] = None) -> None:
    """Shorten Composer's poll before uploading the ``latest`` pointer (private attribute, Composer 0.32.1).

    ``fit`` blocks at its end until the pointer is uploaded, polling every 30 s; tests set
    ``RLP_SYMLINK_UPLOAD_POLL_S`` to keep short runs short. Our resumption does not depend on the pointer.
    """
    if seconds is None:
        env = os.environ.get(SYMLINK_POLL_ENV)
        if not env:
            return
        seconds = float(env)
    saver = getattr(trainer, '_checkpoint_saver', None)
    if saver is not None and hasattr(saver, '_symlink_upload_wait_before_next_try_in_seconds'):
        saver._symlink_upload_wait_before_next_try_in_seconds = seconds


UPLOADS_DIRNAME = '.checkpoint-uploads'
UPLOAD_MAX_ATTEMPTS = 15
"""botocore retries (its ``max_attempts``) per request of a checkpoint upload; backoff rand(0, 1) x min(0.05 x 2^i,
20) s, so an unreachable store fails the upload after 53-73 s (measured), while training goes on."""


def manage_uploads(trainer, output_dir: str) -> None:
    """Workarounds 3 and 4 of the module docstring, on a built trainer whose save folder is an object store."""
    from composer.core import Callback
    from composer.utils import dist
    from composer.utils.checkpoint import PartialFilePath

    saver = getattr(trainer, '_checkpoint_saver', None)
    uploader = getattr(saver, 'remote_uploader', None)
    if uploader is None:
        return
    root = os.path.abspath(os.path.join(output_dir, UPLOADS_DIRNAME, f'rank{dist.get_global_rank()}'))
    shutil.rmtree(root, ignore_errors=True)  # copies a killed run left behind
    os.makedirs(root)
    tmp = os.path.realpath(tempfile.gettempdir())
    rel = os.path.relpath(os.path.realpath(saver.folder), tmp)
    if not rel.startswith('..'):  # the empty mkdtemp() folder of CheckpointSaver.__init__
        shutil.rmtree(os.path.join(tmp, rel.split(os.sep)[0]), ignore_errors=True)
    saver.folder = os.path.join(root, 'checkpoints')
    os.makedirs(saver.folder)  # CheckpointSaver.init made the old one; fit_start lists it
    saver.filename = PartialFilePath(saver.filename.filename, saver.folder)
    if saver.latest_filename is not None:
        saver.latest_filename = PartialFilePath(saver.latest_filename.filename, saver.folder)
    saver.num_checkpoints_to_keep = 0  # delete the local file once the uploader has copied it
    saver.tmp_dir_for_symlink.cleanup()
    saver.tmp_dir_for_symlink = tempfile.TemporaryDirectory(prefix='pointer-', dir=root)
    uploader._tempdir.cleanup()
    uploader._tempdir = tempfile.TemporaryDirectory(prefix='upload-', dir=root)
    uploader._upload_staging_folder = uploader._tempdir.name
    if uploader.remote_backend_name == 's3' and not os.environ.get('AWS_MAX_ATTEMPTS'):
        uploader.backend_kwargs['client_config'] = {
            'retries': {'mode': 'adaptive', 'max_attempts': UPLOAD_MAX_ATTEMPTS}
        }

    uploads: dict = {}  # future -> [object name, submitted at, finished at]
    submit = uploader.upload_file_async

    def upload_file_async(remote_file_name, file_path, overwrite):
        future = submit(remote_file_name=remote_file_name, file_path=file_path, overwrite=overwrite)
        uploads[future] = [remote_file_name, time.monotonic(), None]
        future.add_done_callback(lambda f: uploads[f].__setitem__(2, time.monotonic()))
        return future

    uploader.upload_file_async = upload_file_async
    uploader.rlp_uploads = uploads

    class RemoveUploadFolder(Callback):
        def post_close(self) -> None:  # after the saver's post_close, which waits for the uploads
            shutil.rmtree(root, ignore_errors=True)
            parent = os.path.dirname(root)
            if os.path.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)

    trainer.state.callbacks.append(RemoveUploadFolder())


def _short_error(exc: BaseException, limit: int = 300) -> str:
    text = one_line(exc) or type(exc).__name__
    return f'{type(exc).__name__}: {text[: limit - 3] + "..." if len(text) > limit else text}'


def upload_failure(trainer, err: BaseException) -> Optional[str]:
    """One line for a checkpoint upload that failed (``err`` raised by ``fit``), or None if ``err`` is not one."""
    uploader = getattr(getattr(trainer, '_checkpoint_saver', None), 'remote_uploader', None)
    uploads = getattr(uploader, 'rlp_uploads', None)
    if not uploads:
        return None
    failed = [(f, info) for f, info in uploads.items() if f.done() and f.exception() is not None]
    pointer_check = isinstance(err, RuntimeError) and 'Failed to check if checkpoint files upload' in str(err)
    if not failed or not (pointer_check or any(f.exception() is err for f, _ in failed)):
        return None
    future, (name, submitted, finished) = failed[0]
    store = f'{uploader.remote_backend_name}://{uploader.remote_bucket_name}'
    done = [info[0] for f, info in uploads.items() if f.done() and f.exception() is None and 'latest' not in info[0]]
    kept = f'{store}/{done[-1]}' if done else 'none uploaded by this run'
    what = 'the latest pointer' if 'latest' in os.path.basename(name) else f'checkpoint {os.path.basename(name)}'
    return (
        f'{what} was not saved: uploading {store}/{name} failed after {(finished or submitted) - submitted:.0f} s of '
        f'retries ({_short_error(future.exception())}); the run stopped at batch '
        f'{trainer.state.timestamp.batch.value}; the checkpoints already on the store are intact (newest from this '
        f'run: {kept}); fix: once the store is reachable (check S3_ENDPOINT_URL / AWS_ENDPOINT_URL and the network; '
        'AWS_MAX_ATTEMPTS lengthens the retry), rerun the same command to resume from the newest checkpoint'
    )
