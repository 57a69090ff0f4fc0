"""Model and tokenizer from the recipe: any HF causal LM, pretrained or random-init, wrapped for Composer.

``model.name_or_path`` loads a hub model or a local folder (with weights unless ``pretrained: false``);
``model.config`` builds a random-init model from a config mapping (``model_type`` plus fields), for tests and the
CPU demo. ``tokenizer.name_or_path: bundled`` is the small BPE shipped with the project.
The result is ``composer.models.HuggingFaceModel(model, tokenizer, use_logits=True)``: the RLP algorithm reaches
the HF module as ``state.model.model`` and the tokenizer as ``state.model.tokenizer``.
"""

from __future__ import annotations

from typing import Any

import torch

from rlp.run.recipe import ConfigError, ModelConfig, TokenizerConfig

__all__ = ['build_composer_model', 'build_hf_model', 'build_tokenizer']

_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def build_tokenizer(cfg: TokenizerConfig):
    """The tokenizer named by the recipe; a missing pad token is set to EOS (batches carry no padding in
    packed mode; the pad id only matters for pack mode ``none`` and for generation)."""
    from transformers import AutoTokenizer

    name = cfg.name_or_path
    if name == 'bundled':
        from pipeline.bundled_tokenizer import bundled_tokenizer_dir

        name = str(bundled_tokenizer_dir())
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **cfg.kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f'tokenizer.name_or_path={cfg.name_or_path!r} cannot be loaded ({err}); give a local '
            f'tokenizer folder, a reachable hub name, or "bundled"'
        ) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _config_from_mapping(mapping: dict[str, Any], tokenizer):
    from transformers import AutoConfig

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
    from transformers import AutoConfig, AutoModelForCausalLM

    common: dict[str, Any] = {}
    if cfg.attn_implementation is not None:
        common['attn_implementation'] = cfg.attn_implementation
    if cfg.torch_dtype is not None:
        common['torch_dtype'] = _DTYPES[cfg.torch_dtype]
    if cfg.config is not None:
        hf_config = _config_from_mapping(cfg.config, tokenizer)
    elif not cfg.pretrained:
        hf_config = AutoConfig.from_pretrained(
            cfg.name_or_path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        )
    elif cfg.config_overrides:
        hf_config = AutoConfig.from_pretrained(
            cfg.name_or_path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        )
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
            raise ConfigError(
                f'model.name_or_path={cfg.name_or_path!r} cannot be loaded ({err}); give a local '
                f'folder with config.json and weights, or a reachable hub name'
            ) from err
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise ConfigError(
            f'the model has {model.get_input_embeddings().weight.shape[0]} embeddings but the tokenizer '
            f'has {len(tokenizer)} tokens; use the tokenizer that belongs to the model'
        )
    return model


def build_composer_model(model_cfg: ModelConfig, tokenizer_cfg: TokenizerConfig, seed: int = 17, template: Any = None):
    """``(HuggingFaceModel, tokenizer)`` for the Trainer.

    ``template`` is the recipe's ``rlp.template``; with ``add_tags: true`` missing think tags are added to the
    tokenizer and the embeddings resized here, before the optimizer exists.
    """
    from composer.models import HuggingFaceModel

    tokenizer = build_tokenizer(tokenizer_cfg)
    hf_model = build_hf_model(model_cfg, tokenizer, seed=seed)
    if template is not None and template.add_tags:
        from rlp.template import add_think_tokens

        add_think_tokens(tokenizer, hf_model, template)
    return HuggingFaceModel(hf_model, tokenizer=tokenizer, use_logits=True), tokenizer
