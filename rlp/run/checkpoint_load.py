"""Reading a saved checkpoint back (for ``rlp export`` and ``rlp eval``): which checkpoint a path names, fetching it
from an object store, and its ``state`` mapping (model, integrations, algorithms; never the optimizer).

A path is a monolithic checkpoint file (``ep0-ba4-rank0.pt``), an FSDP-sharded checkpoint folder
(torch.distributed.checkpoint layout with a ``.metadata`` file), an ``s3://`` (or other Composer object store)
URI of either, or a save folder, meaning the newest complete checkpoint in it (found by
:func:`rlp.run.checkpoint.find_latest_checkpoint`). Every failure is a :class:`CheckpointError` whose message is
one line naming the path, what is wrong and the fix.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from composer.utils.file_helpers import maybe_create_object_store_from_uri

# the loader torch's own dcp_to_torch_save uses: the state dict is rebuilt from .metadata, no model needed
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
from tqdm import tqdm

from rlp.run.checkpoint import find_latest_checkpoint, list_remote, split_remote

__all__ = [
    'CheckpointError',
    'decode_tagged_floats',
    'load_checkpoint',
    'resolve_checkpoint',
    'restore_dropped_special_tokens',
]

_KEYS = {'state.model', 'state.integrations', 'state.algorithms', 'state.callbacks'}  # a sharded load (no optimizer)
_LAYOUTS = 'a checkpoint file (ep<E>-ba<B>-rank0.pt), a sharded folder (ep<E>-ba<B>/ with .metadata) or a save folder'


class CheckpointError(Exception):
    """A checkpoint path that names nothing readable: one line naming the path, the problem and the fix."""


def resolve_checkpoint(path: str) -> tuple[str, str]:
    """``(kind, location)`` of the checkpoint ``path`` names: kind ``monolithic`` or ``sharded``.

    A save folder resolves to its newest complete checkpoint. Raises :class:`CheckpointError` when nothing is there.
    """
    remote = split_remote(path)
    if remote is None:
        if os.path.isfile(path):
            return 'monolithic', path
        if os.path.isfile(os.path.join(path, '.metadata')):
            return 'sharded', path.rstrip('/')
        if not os.path.isdir(path):
            raise CheckpointError(f'CHECKPOINT {path!r} does not exist; give {_LAYOUTS}')
        return _newest_in(path, exists=True)
    backend, bucket, key = remote
    store = _store(path)
    try:
        store.get_object_size(key)
        return 'monolithic', path
    except Exception:  # not an object (or unreadable: the listing below reports why)
        pass
    names = _list(backend, bucket, key)
    if '.metadata' in names:
        return 'sharded', path.rstrip('/')
    return _newest_in(path, exists=bool(names))


def _newest_in(folder: str, exists: bool) -> tuple[str, str]:
    if not exists:
        raise CheckpointError(f'CHECKPOINT {folder!r} does not exist; give {_LAYOUTS}')
    latest = find_latest_checkpoint(folder, '')
    if latest is None:
        raise CheckpointError(
            f'CHECKPOINT {folder!r} is a folder without a complete checkpoint (looked for ep<E>-ba<B>-rank0.pt '
            f'files and ep<E>-ba<B>/ folders with a .metadata file); point at the folder training saved to, or at '
            f'one checkpoint'
        )
    return ('monolithic', latest) if latest.endswith('.pt') else ('sharded', latest)


def _store(uri: str) -> Any:
    try:
        return maybe_create_object_store_from_uri(uri)
    except Exception as err:  # unknown backend, missing client library
        raise CheckpointError(f'CHECKPOINT {uri!r}: cannot open its object store ({err}); use s3:// or gs://') from err


def _list(backend: str, bucket: str, key: str) -> list[str]:
    try:
        return list_remote(backend, bucket, key)
    except Exception as err:  # a store that cannot list, no such bucket, no credentials, unreachable endpoint
        raise CheckpointError(
            f'CHECKPOINT {backend}://{bucket}/{key} cannot be listed ({type(err).__name__}: {err}); check the '
            f'bucket name, S3_ENDPOINT_URL and the AWS credentials'
        ) from err


def load_checkpoint(kind: str, location: str, workdir: str, progress: bool = True) -> dict[str, Any]:
    """The checkpoint's ``state`` mapping (at least ``model`` and ``integrations``; the optimizer is not read)."""
    remote = split_remote(location)
    if kind == 'monolithic':
        path = location
        if remote is not None:
            path = os.path.join(workdir, 'checkpoint.pt')
            _download(_store(location), remote[2], path, progress)
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f'{location!r} is not a Composer checkpoint: not a torch zip archive (truncated, or another format)'
            )
        try:  # Composer's own loader uses weights_only=False too: checkpoints hold Composer objects
            ck = torch.load(path, map_location='cpu', weights_only=False, mmap=True)
        except Exception as err:
            raise CheckpointError(f'{location!r} is not a Composer checkpoint: torch.load failed ({err})') from err
    else:
        folder = location
        if remote is not None:
            folder = os.path.join(workdir, 'sharded')
            backend, bucket, key = remote
            store = _store(location)
            names = [n for n in _list(backend, bucket, key) if '/' not in n]
            for name in names:
                _download(store, f'{key}/{name}', os.path.join(folder, name), progress)
        ck = _load_sharded(location, folder)
    state = ck.get('state') if isinstance(ck, dict) else None
    hf = (state or {}).get('integrations', {}).get('huggingface') if isinstance(state, dict) else None
    if not isinstance(hf, dict) or 'content' not in hf.get('model', {}).get('config', {}) or 'model' not in state:
        raise CheckpointError(
            f'{location!r} is not a Composer checkpoint of a Hugging Face model (no state.integrations.huggingface '
            f'config); export needs a checkpoint saved by a Trainer around composer.models.HuggingFaceModel'
        )
    return state


def _download(store: Any, key: str, dest: str, progress: bool) -> None:
    bar = tqdm(desc=f'download {os.path.basename(key)}', unit='B', unit_scale=True, disable=not progress, leave=False)

    def callback(done: int, total: int) -> None:
        bar.total, _ = total, bar.update(done - bar.n)

    try:
        store.download_object(key, dest, callback=callback if progress else None)
    except Exception as err:
        raise CheckpointError(f'cannot download {store.get_uri(key)} ({type(err).__name__}: {err})') from err
    finally:
        bar.close()


def _load_sharded(location: str, folder: str) -> dict[str, Any]:
    try:
        ck = _load_state_dict_from_keys(_KEYS, storage_reader=dcp.FileSystemReader(folder))
    except Exception as err:
        raise CheckpointError(
            f'{location!r}: cannot read the sharded checkpoint ({type(err).__name__}: {err})'
        ) from err
    restore_dropped_special_tokens(ck)
    return ck


_FLOAT_TAGS = {'Infinity': float('inf'), '-Infinity': float('-inf'), 'NaN': float('nan')}


def decode_tagged_floats(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The saved Hugging Face config mapping with transformers' tagged floats turned back into floats.

    transformers 5 writes floats JSON cannot hold as ``{'__float__': 'Infinity'}`` (also ``-Infinity``, ``NaN``)
    in ``PreTrainedConfig.to_dict``, which Composer saves as the config in ``state.integrations.huggingface``; only
    transformers' own JSON reader decodes them, and Composer's ``get_hf_config_from_composer_state_dict`` passes
    the mapping as it is to ``AutoConfig.for_model``, whose typed fields then refuse it. Nemotron-H is hit: its
    ``time_step_limit`` defaults to ``(0.0, inf)``. Test:
    ``tests/rlp/tools/test_export_hybrid.py::test_composer_config_round_trip_needs_the_float_tags_decoded``."""

    def decode(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {'__float__'} and node['__float__'] in _FLOAT_TAGS:
                return _FLOAT_TAGS[node['__float__']]
            return {k: decode(v) for k, v in node.items()}
        if isinstance(node, list):
            return [decode(v) for v in node]
        return node

    return decode(hf_config)


def restore_dropped_special_tokens(ck: dict[str, Any]) -> None:
    """Put back the tokenizer post-processor's empty ``special_tokens`` map that a sharded checkpoint loses.

    torch.distributed.checkpoint flattens a state dict into its leaves (``_traverse.traverse_state_dict`` walks
    every mapping), so an empty dict has no leaf and is missing when the state is read back. transformers 5 saves a
    template post-processor with ``"special_tokens": {}`` (no token carries an id of its own) inside the
    ``tokenizer.json`` that Composer keeps in ``state.integrations.huggingface.tokenizer``, and the tokenizers
    library refuses the file without that key ("data did not match any variant of untagged enum
    PostProcessorWrapper"). The key is required and, when it was dropped, was empty: restoring ``{}`` is exact.
    Test: ``tests/rlp/tools/test_export.py::test_sharded_state_drops_empty_dicts``."""
    files = ck.get('state', {}).get('integrations', {}).get('huggingface', {}).get('tokenizer') or {}
    content = (files.get('tokenizer.json') or {}).get('content')
    processor = content.get('post_processor') if isinstance(content, dict) else None
    stack = [processor]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get('type') == 'TemplateProcessing':
            node.setdefault('special_tokens', {})
        stack.extend(node.get('processors') or ())  # a Sequence post-processor
