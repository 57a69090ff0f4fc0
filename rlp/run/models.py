"""Model and tokenizer from the recipe: any HF causal LM, pretrained or random-init, wrapped for Composer.

``model.name_or_path`` loads a hub model or a local folder (with weights unless ``pretrained: false``);
``model.config`` builds a random-init model from a config mapping (``model_type`` plus fields), for tests and the
CPU demo. ``tokenizer.name_or_path: bundled`` is the small BPE shipped with the project.
The result is ``composer.models.HuggingFaceModel(model, tokenizer, use_logits=True)``: the RLP algorithm reaches
the HF module as ``state.model.model`` and the tokenizer as ``state.model.tokenizer``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional

import torch
from composer.models import HuggingFaceModel
from huggingface_hub import is_offline_mode  # reads HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pipeline.bundled_tokenizer import bundled_tokenizer_dir
from rlp.run.recipe_freeform import check_tokenizer_kwargs
from rlp.run.recipe_schema import ConfigError, ModelConfig, TokenizerConfig
from rlp.template import TemplateError, add_think_tokens, resolve_template

__all__ = ['build_composer_model', 'build_hf_model', 'build_tokenizer', 'gguf_kwargs']

_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def _looks_like_path(name: str) -> bool:
    """True for what can only be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x/``), False for what may be a
    hub id (``name`` or ``org/name``)."""
    return name.startswith(('.', '/', '~')) or name.endswith('/') or '\\' in name or name.count('/') > 1


def _check_local(key: str, name: str, what: str) -> None:
    """Refuse a local path that does not exist (or is a file) before transformers takes it for a hub id."""
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        raise ConfigError(
            f'{key}={name!r} is a file; rule: {what} is a folder (as written by save_pretrained) or a hub id; fix: '
            f'name the folder that holds it'
        )
    if _looks_like_path(name) and not os.path.isdir(path):
        raise ConfigError(
            f'{key}={name!r}: the folder {os.path.abspath(path)} does not exist; rule: {what} is an existing local '
            f'folder or a hub id; fix: check the path (a relative path starts from the working folder {os.getcwd()})'
        )


def _load_error(key: str, name: str, what: str, err: BaseException) -> ConfigError:
    """A failed load of ``name``: a local folder missing files, or a hub id that cannot be fetched (offline?)."""
    detail = ' '.join(str(err).split())[:200]
    if os.path.isdir(os.path.expanduser(name)):
        return ConfigError(
            f'{key}={name!r}: the folder holds no loadable {what} ({detail}); fix: point at a folder written by '
            f'save_pretrained'
        )
    if is_offline_mode():
        reason = (
            'cannot be downloaded: this machine is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set) and the '
            'Hugging Face cache does not hold it'
        )
    else:
        reason = f'could not be fetched from the Hugging Face hub ({detail})'
    return ConfigError(
        f'{key}={name!r} is not a local folder and {reason}; fix: check the name (HF_TOKEN for a gated model), or '
        f'fetch it where the hub is reachable (save_pretrained to a folder, or copy the HF cache) and point at it'
    )


def gguf_kwargs(key: str, name: str, gguf_file: Optional[str], weights: bool = False) -> dict[str, Any]:
    """The ``from_pretrained`` keywords that load ``gguf_file`` (none without one), after checking what loading it
    needs: the ``gguf`` and ``accelerate`` packages, and the file itself when ``name`` is a local folder.

    ``weights``: for a model's ``from_pretrained``, also ask for every weight dequantised into a plain dense model
    (transformers otherwise keeps quantized blocks when a GGUF matmul kernel is installed, which cannot be trained,
    and marks even a dequantised model as quantized, which ``save_pretrained`` refuses)."""
    if gguf_file is None:
        return {}
    missing = [m for m in ('gguf', 'accelerate') if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f'{key}={gguf_file!r} needs the package(s) {", ".join(missing)}, which are not installed; fix: '
            f"pip install -e '.[gguf]'"
        )
    folder = os.path.expanduser(name)
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, gguf_file)):
        raise ConfigError(
            f'{key}={gguf_file!r}: no such file in the folder {os.path.abspath(folder)}; rule: the name of a GGUF '
            f'file inside that folder; fix: check the name (the folder holds '
            f'{sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))[:5] or "no .gguf file"})'
        )
    if not weights:
        return {'gguf_file': gguf_file}
    from transformers import GgufConfig

    return {'gguf_file': gguf_file, 'quantization_config': GgufConfig(dequantize=True)}


def build_tokenizer(cfg: TokenizerConfig):
    """The tokenizer named by the recipe; a missing pad token is set to EOS (batches carry no padding in
    packed mode; the pad id only matters for pack mode ``none`` and for generation)."""
    name = cfg.name_or_path
    if name == 'bundled':
        name = str(bundled_tokenizer_dir())
    else:
        _check_local('tokenizer.name_or_path', name, 'a tokenizer')
    gguf = gguf_kwargs('tokenizer.gguf_file', name, cfg.gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **gguf, **cfg.kwargs)
    except (OSError, ValueError) as err:
        raise _load_error('tokenizer.name_or_path', cfg.name_or_path, 'tokenizer', err) from err
    check_tokenizer_kwargs(tokenizer, cfg.kwargs)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _config_from_mapping(mapping: dict[str, Any], tokenizer):
    fields = dict(mapping)
    model_type = fields.pop('model_type')
    fields.setdefault('vocab_size', len(tokenizer))
    for key in ('eos_token_id', 'pad_token_id', 'bos_token_id'):
        value = getattr(tokenizer, key, None)
        if value is not None:
            fields.setdefault(key, value)
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f'model.config (model_type={model_type!r}) is not a valid transformers config: {err}'
        ) from err


def _override(hf_config: Any, overrides: dict[str, Any]) -> None:
    """Set ``model.config_overrides`` on the config; a key the config does not have is a one-line error."""
    for key, value in overrides.items():
        if not hasattr(hf_config, key):
            raise ConfigError(
                f'model.config_overrides.{key}: the {type(hf_config).__name__} has no field {key!r}; use one of its '
                f'fields (e.g. the *dropout* / *pdrop* keys named by the error that sent you here)'
            )
        setattr(hf_config, key, value)


def build_hf_model(cfg: ModelConfig, tokenizer, seed: int = 17):
    """The HF causal LM; random init is seeded with ``seed`` so every rank builds the same weights."""
    common: dict[str, Any] = {}
    if cfg.name_or_path is not None:
        _check_local('model.name_or_path', cfg.name_or_path, 'a model')
        common.update(gguf_kwargs('model.gguf_file', cfg.name_or_path, cfg.gguf_file, weights=True))
    if cfg.attn_implementation is not None:
        common['attn_implementation'] = cfg.attn_implementation
    if cfg.torch_dtype is not None:
        common['dtype'] = _DTYPES[cfg.torch_dtype]
    if cfg.config is not None:
        hf_config = _config_from_mapping(cfg.config, tokenizer)
    elif not cfg.pretrained or cfg.config_overrides:
        try:
            hf_config = AutoConfig.from_pretrained(
                cfg.name_or_path,
                trust_remote_code=cfg.trust_remote_code,
                revision=cfg.revision,
                **gguf_kwargs('model.gguf_file', cfg.name_or_path, cfg.gguf_file),
            )
        except (OSError, ValueError) as err:
            raise _load_error('model.name_or_path', cfg.name_or_path, 'model config (config.json)', err) from err
    else:
        hf_config = None
    if hf_config is not None:
        _override(hf_config, cfg.config_overrides)
    if hf_config is not None and (cfg.config is not None or not cfg.pretrained):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=cfg.trust_remote_code, **common)
    else:
        try:
            if hf_config is not None:  # pretrained weights with config_overrides
                common['config'] = hf_config
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name_or_path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision, **common
            )
        except (OSError, ValueError) as err:  # missing files, unreachable hub, malformed name
            raise _load_error('model.name_or_path', cfg.name_or_path, 'model (config.json and weights)', err) from err
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise ConfigError(
            f'the model has {model.get_input_embeddings().weight.shape[0]} embeddings but the tokenizer '
            f'has {len(tokenizer)} tokens; use the tokenizer that belongs to the model'
        )
    return model


def wrap_blocks_for_fsdp(hf_model: Any) -> list[str]:
    """Give a hybrid model (one with recurrent layers, :func:`rlp.hf.recurrent_layers`) one FSDP unit and one
    activation-checkpointing region per block: Composer asks the HF module's ``fsdp_wrap_fn`` /
    ``activation_checkpointing_fn`` which submodules to wrap, and here both answer True for the classes the model
    names in ``_no_split_modules`` (Nemotron-H: ``NemotronHBlock``, each holding one Mamba2, attention or MLP mixer
    with its norm, so a Mamba2 layer's parameters are gathered together). Functions the model already defines are
    kept. Returns the block class names used (empty: nothing set)."""
    from rlp.hf import recurrent_layers

    names = list(getattr(hf_model, '_no_split_modules', None) or ())
    if not names or not recurrent_layers(hf_model):
        return []

    def is_block(module: torch.nn.Module) -> bool:
        return type(module).__name__ in names

    for attr in ('fsdp_wrap_fn', 'activation_checkpointing_fn'):
        if not callable(getattr(hf_model, attr, None)):
            setattr(hf_model, attr, is_block)
    return names


def build_composer_model(model_cfg: ModelConfig, tokenizer_cfg: TokenizerConfig, seed: int = 17, template: Any = None):
    """``(HuggingFaceModel, tokenizer)`` for the Trainer.

    ``template`` is the recipe's ``rlp.template``; with ``add_tags: true`` missing think tags are added to the
    tokenizer and the embeddings resized here, before the optimizer exists.
    """
    tokenizer = build_tokenizer(tokenizer_cfg)
    hf_model = build_hf_model(model_cfg, tokenizer, seed=seed)
    wrap_blocks_for_fsdp(hf_model)
    if template is not None:
        if template.add_tags:
            add_think_tokens(tokenizer, hf_model, template)
        try:  # the algorithm resolves it again at the start of fit; refuse here, before Composer starts
            resolve_template(tokenizer, template, model=hf_model)
        except TemplateError as err:
            raise ConfigError(f'tokenizer {tokenizer_cfg.name_or_path!r}: {err}') from None
    return HuggingFaceModel(hf_model, tokenizer=tokenizer, use_logits=True), tokenizer
