"""``rlp export``: a Composer checkpoint -> a Hugging Face folder (safetensors, tokenizer, generation config).

CHECKPOINT is a monolithic checkpoint file (``ep0-ba4-rank0.pt``), an FSDP-sharded checkpoint folder
(torch.distributed.checkpoint layout with a ``.metadata`` file), an ``s3://`` (or other Composer object store)
URI of either, or a save folder, meaning the newest complete checkpoint in it (found by
:func:`rlp.run.checkpoint.find_latest_checkpoint`).

What a checkpoint of ``composer.models.HuggingFaceModel`` holds (Composer 0.32.1): ``state.model``, the wrapper's
state dict (keys ``model.<HF key>``); ``state.integrations['huggingface']``, the HF config (content and model
class) and the tokenizer's files (empty when the wrapper had no tokenizer); ``state.algorithms``, a list of
``(name, state_dict)`` where RLP's holds ``{'teacher': {'ema': {HF key: tensor}, ...}, ...}`` (under FSDP2 the EMA
teacher's shards are in ``state.callbacks['TeacherShards']['ema']`` instead, see
:class:`rlp.run.algorithm.TeacherShards`; a sharded checkpoint's metadata stitches them into whole tensors). The model
class is rebuilt from the saved config without random init, the weights are loaded strictly (only tied weights may be
absent) and the folder is written with ``save_pretrained`` into a temporary sibling that is renamed at the end.
``rlp_export.json`` in the folder records the source and a digest of the weights: re-exporting the same weights
into it is allowed, a different model is refused unless ``--overwrite``; a folder export did not write is never
replaced.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Optional

import torch
from tqdm import tqdm

from pipeline.bundled_tokenizer import bundled_tokenizer_dir
from rlp.config import TemplateConfig
from rlp.run.checkpoint import checkpoint_batch
from rlp.template import TemplateError, tag_token_id
from rlp.tools.cli import CliError

# Composer, transformers and the checkpoint reader (which loads Composer) are imported inside the functions that use
# them: ``rlp --help`` imports every subcommand module to build its parser, and should not wait for them.

__all__ = ['MARKER', 'add_parser', 'export_checkpoint', 'run']

MARKER = 'rlp_export.json'


def _weights(state: dict[str, Any], which: str, location: str) -> dict[str, torch.Tensor]:
    """The HF state dict of the policy (``state.model`` without Composer's ``model.`` prefix) or the EMA teacher."""
    if which == 'policy':
        sd = state['model']
        if not sd or not all(k.startswith('model.') for k in sd):
            raise CliError(f'{location!r}: state.model is not a HuggingFaceModel state dict (keys model.*)')
        return {k[len('model.') :]: v for k, v in sd.items()}
    rlp = _rlp_state(state)
    if rlp is None:
        raise CliError(f'{location!r} holds no RLP algorithm state, hence no EMA teacher; use --weights policy')
    shards = (state.get('callbacks') or {}).get('TeacherShards') or {}
    ema = shards.get('ema') or rlp.get('teacher', {}).get('ema') or {}
    if not ema:
        raise CliError(
            f'{location!r}: the EMA teacher is empty (saved before its first batch); use --weights policy or a '
            f'later checkpoint'
        )
    return dict(ema)


def _build_model(state: dict[str, Any], sd: dict[str, torch.Tensor], location: str) -> Any:
    from composer.models.huggingface import get_hf_config_from_composer_state_dict
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from rlp.run.checkpoint_load import decode_tagged_floats

    hf_model = state['integrations']['huggingface']['model']
    integrations = copy.deepcopy(state['integrations'])
    content = integrations['huggingface']['model']['config']
    content['content'] = decode_tagged_floats(content['content'])
    try:
        config = get_hf_config_from_composer_state_dict({'state': {'integrations': integrations}})
    except Exception as err:
        raise CliError(f'{location!r}: the saved Hugging Face config cannot be rebuilt ({err})') from err
    module, _, name = str(hf_model['config'].get('class', '')).rpartition('.')
    with no_init_weights():
        try:
            model = getattr(importlib.import_module(module), name)(config)
        except (ImportError, AttributeError, ValueError):
            try:
                model = AutoModelForCausalLM.from_config(config)
            except ValueError as err:
                raise CliError(
                    f'{location!r}: model class {module}.{name} cannot be imported and transformers has no causal '
                    f'LM for model_type {config.model_type!r}'
                ) from err
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
        model.config.dtype = next(model.parameters()).dtype
    result = model.load_state_dict(sd, strict=False)
    tied = set(getattr(model, '_tied_weights_keys', None) or ()) if getattr(config, 'tie_word_embeddings', 0) else ()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CliError(
            f'{location!r}: the weights do not fit {type(model).__name__} (missing {missing[:5]}, unexpected '
            f'{result.unexpected_keys[:5]}); the trained module was changed beyond its config (e.g. a new head '
            f'bias), so save_pretrained cannot represent it'
        )
    model.tie_weights()
    return model.eval()


def _tokenizer(state: dict[str, Any], name: Optional[str], model: Any, workdir: str, location: str) -> Any:
    from composer.models import HuggingFaceModel
    from transformers import AutoTokenizer

    hf_state = state['integrations']['huggingface']
    if name is not None:
        try:
            tok = AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()) if name == 'bundled' else name)
        except (OSError, ValueError) as err:
            raise CliError(
                f'--tokenizer {name!r} cannot be loaded ({err}); give a tokenizer folder or "bundled"'
            ) from err
    elif not hf_state.get('tokenizer'):
        raise CliError(
            f'{location!r} carries no tokenizer (its HuggingFaceModel had none); pass --tokenizer NAME_OR_DIR with '
            f'the tokenizer the run trained with'
        )
    else:
        tok = HuggingFaceModel.load_huggingface_tokenizer_from_saved_state(
            hf_state, tokenizer_save_dir=os.path.join(workdir, 'tokenizer')
        )
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # as training sets it (rlp.run.models.build_tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        raise CliError(
            f'tokenizer {name or "of the checkpoint"!r} has {len(tok)} tokens but the model has {rows} embeddings; '
            f'pass the tokenizer the run trained with'
        )
    rlp_state = _rlp_state(state)
    # the run's tags, as the RLP state records them (checkpoints written before it did: the default <think> tokens)
    cfg = TemplateConfig(**(rlp_state or {}).get('template', {}))
    if name is not None and rlp_state is not None and cfg.tags == 'special':
        try:
            tag_token_id(tok, cfg.open_tag)
            tag_token_id(tok, cfg.close_tag)
        except TemplateError as err:
            raise CliError(
                f'--tokenizer {name!r} lacks the think tags {cfg.open_tag} {cfg.close_tag} as single tokens, which '
                f'this RLP checkpoint was trained with; pass the tokenizer the run trained with'
            ) from err
    return tok


def _rlp_state(state: dict[str, Any]) -> Optional[dict]:
    """The RLP algorithm's state dict in ``state.algorithms`` (a list of ``(name, state_dict)``), or None."""
    algorithms = state.get('algorithms') or []
    items = algorithms.items() if isinstance(algorithms, dict) else algorithms
    return next((sd for name, sd in items if name == 'RLP' or (isinstance(sd, dict) and 'teacher' in sd)), None)


def weights_digest(model: Any) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, bytes): equal digests = the same model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f'{name}|{t.dtype}|{tuple(t.shape)}\n'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_out_dir(out_dir: str, overwrite: bool) -> Optional[dict]:
    """The existing folder's marker (None when the folder is new or empty); refuses what may never be replaced.

    Only a folder that export wrote is ever replaced, ``--overwrite`` or not: it holds ``rlp_export.json`` and
    nothing but the files that marker lists (a save folder, a run folder, a folder of notes, or an exported folder
    into which something else was put later are refused, so ``--overwrite`` cannot delete them).
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CliError(f'OUT_DIR {out_dir!r} is a file; give a folder path')
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return None
    try:
        with open(os.path.join(out_dir, MARKER), encoding='utf-8') as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict) or 'weights_sha256' not in marker:
        raise CliError(
            f'OUT_DIR {out_dir!r} is not empty and was not written by rlp export (no {MARKER}); --overwrite replaces '
            f'only a folder rlp export wrote: choose a new folder'
        )
    listed = marker.get('files')
    foreign = sorted(
        name
        for name in os.listdir(out_dir)
        if name != MARKER
        and (name not in listed if isinstance(listed, list) else os.path.isdir(os.path.join(out_dir, name)))
    )
    if foreign:
        raise CliError(
            f'OUT_DIR {out_dir!r} holds {foreign[:3]} besides what rlp export wrote; it is never replaced, '
            f'--overwrite or not: move them out, or choose a new folder'
        )
    return marker


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_modes(folder: str) -> None:
    """Give ``folder`` (made by mkdtemp: 0700) and its files the modes a plain mkdir/open would: 0777/0666 & ~umask."""
    mask = _umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def export_checkpoint(
    checkpoint: str,
    out_dir: str,
    *,
    tokenizer: Optional[str] = None,
    weights: str = 'policy',
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the Hugging Face folder ``out_dir`` from ``checkpoint``; returns what ``rlp_export.json`` records."""
    from transformers import GenerationConfig

    from rlp.run.checkpoint_load import CheckpointError, load_checkpoint, resolve_checkpoint

    if weights not in ('policy', 'ema'):
        raise CliError(f'--weights {weights!r}: use policy (the trained model) or ema (the RLP EMA teacher)')
    if '://' in out_dir:
        raise CliError(f'OUT_DIR {out_dir!r} must be a local folder; export locally, then upload the folder')
    out_dir = os.path.abspath(out_dir)
    marker = _check_out_dir(out_dir, overwrite)
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(out_dir)}.tmp-')
    except OSError as err:
        raise CliError(f'OUT_DIR {out_dir!r}: cannot write in {parent!r} ({err}); choose a writable folder') from err
    stages = tqdm(total=4, desc='rlp export', disable=not progress, leave=False)
    try:
        with tempfile.TemporaryDirectory(dir=parent, prefix=f'.{os.path.basename(out_dir)}.work-') as work:
            try:
                kind, location = resolve_checkpoint(checkpoint)
                stages.update()
                state = load_checkpoint(kind, location, work, progress)
            except CheckpointError as err:
                raise CliError(str(err)) from err.__cause__
            stages.update()
            model = _build_model(state, _weights(state, weights, location), location)
            tok = _tokenizer(state, tokenizer, model, work, location)
            digest = weights_digest(model)
            stages.update()
            if marker is not None and not overwrite and marker.get('weights_sha256') != digest:
                raise CliError(
                    f'OUT_DIR {out_dir!r} already holds a different model (from {marker.get("checkpoint")!r}, '
                    f'weights {marker.get("weights")}); pass --overwrite to replace it, or choose another folder'
                )
            gen = GenerationConfig.from_model_config(model.config)
            for key in ('eos_token_id', 'pad_token_id', 'bos_token_id'):  # the tokenizer's EOS is what was trained
                value = getattr(tok, key, None)
                if value is not None and (key != 'bos_token_id' or gen.bos_token_id is None):
                    setattr(gen, key, value)
            model.generation_config = gen
            _save_quietly(model, staging)
            gen.save_pretrained(staging)
            tok.save_pretrained(staging)
            batch = checkpoint_batch(location) if re.search(r'ep\d+-ba\d+(?:-rank0\.pt)?/?$', location) else None
            params = sum(p.numel() for p in model.parameters())
            record = dict(checkpoint=location, kind=kind, batch=batch, weights=weights, parameters=params)
            record.update(model_class=type(model).__name__, tokenizer=tokenizer or 'checkpoint', weights_sha256=digest)
            record['files'] = sorted(os.listdir(staging))
            with open(os.path.join(staging, MARKER), 'w', encoding='utf-8') as fh:
                json.dump(record, fh, indent=2)
            _publish_modes(staging)
        _swap(staging, out_dir)
        stages.update()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        stages.close()
    return record


def _save_quietly(model: Any, folder: str) -> None:
    """``save_pretrained`` without transformers 5's "Writing model shards" bar (this command draws its own, or none
    under ``--no-progress``)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _swap(staging: str, out_dir: str) -> None:
    """Put ``staging`` at ``out_dir``; a previous folder there is moved aside first and removed last."""
    old = f'{staging}.old' if os.path.exists(out_dir) else None
    if old is not None:
        os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except OSError:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        'export',
        help='a Composer checkpoint -> a Hugging Face folder (from_pretrained gives the trained model)',
        description=__doc__.split('\n\n')[0].replace('``', ''),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='examples:\n  rlp export runs/demo/checkpoints hf/demo\n'
        '  rlp export s3://bucket/run/ep0-ba400-rank0.pt hf/run-ema --weights ema',
    )
    p.add_argument('checkpoint', metavar='CHECKPOINT', help='checkpoint file, sharded folder or save folder (or URI)')
    p.add_argument('out_dir', metavar='OUT_DIR', help='the Hugging Face folder to write (local)')
    p.add_argument('--tokenizer', metavar='NAME_OR_DIR', help="tokenizer to write (default: the checkpoint's own)")
    p.add_argument('--weights', choices=('policy', 'ema'), default='policy',
                   help='the trained policy (default) or the RLP EMA teacher')  # fmt: skip
    p.add_argument('--overwrite', action='store_true',
                   help='replace an OUT_DIR holding another model rlp export wrote (never other folders)')  # fmt: skip
    p.add_argument('--no-progress', action='store_true', help='no progress bars')


def run(args: Any) -> int:
    options = dict(tokenizer=args.tokenizer, weights=args.weights, overwrite=args.overwrite)
    record = export_checkpoint(args.checkpoint, args.out_dir, progress=not args.no_progress, **options)
    print(
        f'rlp export: {record["checkpoint"]} ({record["kind"]}, batch {record["batch"]}, {record["weights"]} '
        f'weights) -> {os.path.abspath(args.out_dir)} ({record["model_class"]}, {record["parameters"]:,} '
        f'parameters, tokenizer: {record["tokenizer"]})'
    )
    return 0
