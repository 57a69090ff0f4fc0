"""Recipe checks that read text or URIs rather than one section's values: YAML syntax of recipe files and of
command-line overrides, the URI schemes of stream and checkpoint locations, query strings on remote folders, and the
``trainer.fsdp`` mapping.

Each raises :class:`~rlp.strictcfg.ConfigError` with one line naming the value (the file and line/column, the
override, or the key), the rule and the fix; :mod:`rlp.run.recipe` calls them while it reads and validates.

Supported schemes, as the installed libraries implement them:

* a stream's ``remote``: a local folder, or what streaming 0.13 downloads from (its ``CloudDownloader``
  registry): ``s3://``, ``gs://``, ``oci://``, ``azure://``, ``azure-dl://``, ``dbfs://`` (``dbfs:/Volumes/...``
  included), ``hf://``, ``sftp://``, ``alipan://``. A stream's ``local`` is always a local folder.
* ``trainer.save_folder``: a local folder, or what Composer 0.32 saves to and lists from a URI
  (``maybe_create_object_store_from_uri``): ``s3://``, ``gs://``, ``oci://``, ``azure://``, ``dbfs://``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Optional

import yaml

from rlp.strictcfg import ConfigError

__all__ = [
    'SAVE_FOLDER_SCHEMES',
    'STREAM_SCHEMES',
    'check_gguf_file',
    'check_save_folder_scheme',
    'check_stream_locations',
    'load_yaml_file',
    'parse_override',
    'refuse_uri_queries',
    'shown_location',
]

STREAM_SCHEMES = ('s3', 'gs', 'oci', 'azure', 'azure-dl', 'dbfs', 'hf', 'sftp', 'alipan')
SAVE_FOLDER_SCHEMES = ('s3', 'gs', 'oci', 'azure', 'dbfs')
_URI = re.compile(r'([A-Za-z][A-Za-z0-9+.-]*):/')  # dbfs:/Volumes has one slash
_HINTS = {'az': 'azure', 'abfs': 'azure-dl', 'abfss': 'azure-dl', 'gcs': 'gs', 's3a': 's3', 's3n': 's3'}


def _scheme(value: str) -> Optional[str]:
    m = _URI.match(value)
    return m.group(1).lower() if m else None


def _refuse_scheme(key: str, value: str, scheme: str, allowed: tuple[str, ...], who: str, fix: str) -> None:
    if scheme in allowed:
        return
    names = ', '.join(f'{s}://' for s in allowed)
    if scheme in _HINTS and _HINTS[scheme] in allowed:
        fix = f'write {_HINTS[scheme]}:// instead of {scheme}://'
    elif scheme == 'file':
        fix = 'write the plain local path, without file://'
    raise ConfigError(
        f'{key}={value!r}: the scheme {scheme}:// is not supported; rule: {key} is a local folder or a URI {who} '
        f'can use ({names}); fix: {fix}'
    )


def check_stream_locations(name: str, remote: Optional[str], local: Optional[str]) -> None:
    """Refuse a stream ``remote`` with a scheme streaming cannot download from, and a URI as ``local``."""
    if remote is not None and _scheme(remote):
        _refuse_scheme(
            f'data.streams.{name}.remote',
            remote,
            _scheme(remote),
            STREAM_SCHEMES,
            'streaming 0.13',
            'copy the shards to a local folder or to one of those stores',
        )
    if local is not None and _scheme(local):
        raise ConfigError(
            f'data.streams.{name}.local={local!r} is a URI; rule: local is a folder on this machine (the cache, or '
            f'the dataset itself without remote); fix: set data.streams.{name}.remote={local} and leave local unset'
        )


def check_gguf_file(section: str, gguf_file: Optional[str], name_or_path: Optional[str]) -> None:
    """Refuse ``{section}.gguf_file`` without a folder or hub repo to find it in, or not naming a ``.gguf`` file."""
    if gguf_file is None:
        return
    key = f'{section}.gguf_file'
    if name_or_path is None:
        raise ConfigError(
            f'{key}={gguf_file!r} needs {section}.name_or_path (the folder or hub repo that holds the file); fix: set '
            f'{section}.name_or_path to that folder, or drop {key}'
        )
    if not gguf_file.lower().endswith('.gguf') or not gguf_file.strip():
        raise ConfigError(
            f'{key}={gguf_file!r} is not a .gguf file name; rule: the name of a GGUF file inside '
            f'{section}.name_or_path, e.g. model.Q4_1.gguf; fix: give that file name, or drop {key}'
        )


def check_save_folder_scheme(save_folder: Optional[str]) -> None:
    """Refuse a ``trainer.save_folder`` URI whose scheme Composer cannot save checkpoints to."""
    scheme = _scheme(save_folder) if save_folder is not None else None
    if scheme:
        _refuse_scheme(
            'trainer.save_folder',
            save_folder,
            scheme,
            SAVE_FOLDER_SCHEMES,
            'Composer 0.32',
            'save to a local folder or to one of those stores',
        )


def _mark(err: yaml.YAMLError) -> tuple[str, str]:
    """``('line L, column C', 'problem')`` of a PyYAML error, on one line."""
    mark = getattr(err, 'problem_mark', None) or getattr(err, 'context_mark', None)
    problem = getattr(err, 'problem', None) or getattr(err, 'context', None) or str(err)
    where = f'line {mark.line + 1}, column {mark.column + 1}' if mark is not None else 'an unknown position'
    context, start = getattr(err, 'context', None), getattr(err, 'context_mark', None)
    if context and start is not None and getattr(err, 'problem', None):  # where the open construct began
        problem = f'{problem} ({context} started at line {start.line + 1}, column {start.column + 1})'
    return where, ' '.join(str(problem).split())


def load_yaml_file(path: Path) -> Any:
    """The YAML document in ``path``; a syntax error (or non-UTF-8 text) is one line naming the file and place."""
    try:
        with open(path, encoding='utf-8') as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as err:
        where, problem = _mark(err)
        raise ConfigError(
            f'recipe {str(path)!r} is not valid YAML at {where}: {problem}; rule: a recipe is a YAML mapping of '
            f'sections; fix: correct that spot (nested keys indented by spaces, no tabs; every bracket and quote '
            f'closed; quote values holding ": " or " #")'
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f'recipe {str(path)!r} is not UTF-8 text (byte {err.start}); rule: a recipe is a UTF-8 YAML file; '
            f'fix: save it as UTF-8'
        ) from None


def parse_override(item: str) -> tuple[str, Any]:
    """``'a.b=VALUE'`` -> ``('a.b', VALUE parsed as YAML)``; an empty value is ``''``.

    Raises:
        ConfigError: no ``=``, no key, or a value that is not valid YAML (with its column and the fix).
    """
    key, eq, raw = item.partition('=')
    if not eq or not key.strip():
        raise ConfigError(
            f'override {item!r} is not key.sub=value; rule: every argument after the recipe is one override '
            f'KEY=VALUE (the value parsed as YAML); fix: write e.g. trainer.max_duration=20ba'
        )
    if not raw.strip():
        return key.strip(), ''
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        where, problem = _mark(err)
        column = where.rsplit(', ', 1)[-1] if where.startswith('line 1,') else where
        raise ConfigError(
            f'override {item!r}: the value {raw!r} is not valid YAML (at {column} of the value: {problem}); '
            f'fix: complete it (close every bracket and quote), or pass it as a string by quoting it in YAML, '
            f'e.g. {key.strip()}="\'{raw}\'" in the shell'
        ) from None


def shown_location(folder: str) -> str:
    """A save folder as printed: a local path made absolute; a URI with its query string (signed-URL tokens) and
    any password replaced by ``<redacted>``."""
    parts = urllib.parse.urlsplit(folder)
    if not re.match(r'[A-Za-z][A-Za-z0-9+.-]*:/', folder):
        return os.path.abspath(folder)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f':{parts.password}@', ':<redacted>@', 1)
    query = '<redacted>' if parts.query else ''
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ''))


def refuse_uri_queries(recipe: Any) -> None:
    """Refuse a stream ``remote``/``local`` or ``trainer.save_folder`` URI of a validated
    :class:`~rlp.run.recipe_schema.Recipe` with a query string (a signed URL's ``?X-Amz-Signature=...``): file
    names are appended to these folders, so a query would end up inside object keys and error messages. The
    message shows the URI with its query redacted (:func:`shown_location`)."""
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


# trainer.fsdp: the FSDP2Config options of Composer 0.32 a recipe may set (device_mesh is built by Composer)
FSDP_OPTIONS = {
    'reshard_after_forward': (bool, int),
    'activation_checkpointing': (bool,),
    'activation_cpu_offload': (bool,),
    'state_dict_type': ('sharded',),
    'mixed_precision': ('FULL', 'DEFAULT', 'PURE'),
}
# FSDP1 options and what replaces them under FSDP2
_FSDP1_OPTIONS = {
    'sharding_strategy': 'FSDP2 always shards parameters, gradients and optimizer state (FULL_SHARD)',
    'use_orig_params': 'FSDP2 keeps the original parameters (as DTensors)',
    'limit_all_gathers': 'FSDP2 has no such option',
    'backward_prefetch': 'FSDP2 prefetches on its own',
    'forward_prefetch': 'FSDP2 prefetches on its own',
    'sync_module_states': 'Composer sets it for FSDP2 when needed',
    'cpu_offload': 'use activation_cpu_offload for activations; parameter offload is not supported',
    'activation_checkpointing_reentrant': 'FSDP2 activation checkpointing is non-reentrant',
}


def check_fsdp(fsdp: Optional[dict[str, Any]]) -> None:
    """Refuse a ``trainer.fsdp`` mapping that Composer's FSDP2Config would not take as the recipes mean it.

    Every key must be in :data:`FSDP_OPTIONS` with an allowed value; FSDP1-only keys are named with what FSDP2 does
    instead; ``state_dict_type`` must be ``sharded`` (the default): the teachers' shards and the optimizer's
    DTensor state go to sharded checkpoints (``rlp export`` writes a full Hugging Face model from one).
    """
    if fsdp is None:
        return
    if not isinstance(fsdp, dict):
        raise ConfigError(f'trainer.fsdp={fsdp!r} must be a mapping of FSDP2 options (or null for no FSDP)')
    for key, value in fsdp.items():
        if key in _FSDP1_OPTIONS:
            raise ConfigError(
                f'trainer.fsdp.{key}={value!r} is an FSDP1 option; rule: trainer.fsdp configures FSDP2 '
                f'(fully_shard), where {_FSDP1_OPTIONS[key]}; fix: remove trainer.fsdp.{key}'
            )
        if key not in FSDP_OPTIONS:
            raise ConfigError(
                f'trainer.fsdp.{key} is not an FSDP2 option; rule: trainer.fsdp takes {", ".join(sorted(FSDP_OPTIONS))}'
                f'; fix: remove or rename it'
            )
        allowed = FSDP_OPTIONS[key]
        types = tuple(a for a in allowed if isinstance(a, type))
        ok = isinstance(value, types) if types else value in allowed
        if not ok:
            shown = ' or '.join(a.__name__ if isinstance(a, type) else str(a) for a in allowed)
            fix = (
                "sharded checkpoints carry the teachers' shards; rlp export turns one into a full model"
                if key == 'state_dict_type'
                else f'set trainer.fsdp.{key} to {shown}'
            )
            raise ConfigError(f'trainer.fsdp.{key}={value!r} is not allowed; rule: {shown}; fix: {fix}')
