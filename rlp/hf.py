"""The one home for calling and unwrapping a Hugging Face causal LM, whatever wraps it.

A model reaches the RLP code as a plain HF module, as Composer's ``HuggingFaceModel`` around one (which takes a
single mapping and exposes the HF module as ``.model``), possibly inside DDP (``.module``) or with FSDP1 units
inside. Every function here accepts all of these.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch

__all__ = [
    'accepts',
    'active_dropout',
    'call_model',
    'eval_mode',
    'full_params',
    'is_fsdp',
    'is_fsdp2',
    'keep_last_logits',
    'new_cache',
    'recurrent_layers',
    'unwrap_hf',
]


def _composer_inner(model: Any) -> Any:
    """The model without DDP's ``.module`` wrapper (a ComposerModel or an HF module)."""
    return getattr(model, 'module', model)


def _is_composer_hf(inner: Any) -> bool:
    return hasattr(inner, 'model_forward_args')


def unwrap_hf(model: Any) -> Any:
    """The HF causal LM inside DDP / Composer's HuggingFaceModel / FSDP (FSDP forwards attribute access)."""
    inner = _composer_inner(model)
    return inner.model if _is_composer_hf(inner) else inner


def call_model(model: Any, **kwargs: Any) -> Any:
    """Run an HF causal LM, or Composer's ``HuggingFaceModel`` (which takes one mapping), with ``kwargs``.

    For a Composer model, keyword arguments its HF module does not take are dropped.
    """
    inner = _composer_inner(model)
    if _is_composer_hf(inner):
        return model({k: v for k, v in kwargs.items() if k in inner.model_forward_args})
    return model(**kwargs)


def accepts(model: Any, name: str) -> bool:
    """True if the model's forward takes the keyword argument ``name``."""
    inner = _composer_inner(model)
    if _is_composer_hf(inner):
        return name in inner.model_forward_args
    return name in inspect.signature(inner.forward).parameters


def keep_last_logits(model: Any, n: int) -> dict[str, int]:
    """``{'logits_to_keep': n}`` when the model supports it (saves the (N, L, V) logits), else ``{}``."""
    return {'logits_to_keep': n} if accepts(model, 'logits_to_keep') else {}


def recurrent_layers(model: Any) -> list[int]:
    """Indices of the model's recurrent (state-space / linear-attention, e.g. Mamba2) layers; empty for a plain
    transformer. Read from the cache layout transformers builds from the config (``DynamicCache(config=...)``), so
    any hybrid architecture transformers knows is detected without listing model names."""
    from transformers import DynamicCache
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    config = getattr(unwrap_hf(model), 'config', None)
    if config is None:
        return []
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config transformers cannot lay out as a cache: nothing known to be recurrent
        return []
    return [i for i, layer in enumerate(layers) if isinstance(layer, LinearAttentionCacheLayerMixin)]


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for a prefill: laid out from the config (one recurrent-state layer per recurrent
    layer) for a hybrid model, the plain lazily-built one otherwise."""
    from transformers import DynamicCache

    return DynamicCache(config=unwrap_hf(model).config) if recurrent_layers(model) else DynamicCache()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Switch ``model`` to eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def is_fsdp(module: torch.nn.Module) -> bool:
    """True if ``module`` is or contains an FSDP1 ``FullyShardedDataParallel`` instance."""
    return any(type(m).__name__ == 'FullyShardedDataParallel' for m in module.modules())


def is_fsdp2(module: torch.nn.Module) -> bool:
    """True if ``module`` holds FSDP2 (``fully_shard``) modules."""
    return any(
        type(m).__name__.startswith('FSDP') and type(m).__name__ != 'FullyShardedDataParallel' and hasattr(m, 'unshard')
        for m in module.modules()
    )


@contextlib.contextmanager
def full_params(model: torch.nn.Module) -> Iterator[None]:
    """Context in which ``model``'s parameters are full, unsharded tensors (read-only: ``writeback=False``).

    FSDP1: ``FSDP.summon_full_params(model, writeback=False, recurse=True, rank0_only=False)`` (collective, all ranks
    get the full tensors). Anything else: no-op. FSDP2 is refused: its teachers are sharded like the policy and read
    theta shard by shard (:mod:`rlp.sharded`), never gathered whole.
    """
    if is_fsdp2(model):
        raise NotImplementedError(
            'full_params: an FSDP2 (fully_shard) model is never gathered whole here; create its teachers with '
            'Teachers.create(model, sharded=True) before sharding (rlp.sharded)'
        )
    if not is_fsdp(model):
        yield
        return
    # Imported here, for FSDP models only: torch builds without distributed support lack the module.
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(model, writeback=False, recurse=True, rank0_only=False):
        yield


_DROPOUT_ATTRS = ('attention_dropout', 'attn_dropout', 'dropout', 'hidden_dropout', 'resid_dropout')


def active_dropout(model: Any) -> list[str]:
    """Names of the dropout settings that are > 0 in ``model`` (``nn.Dropout`` modules, and float attributes such
    as Llama's ``attention_dropout`` that HF attention layers apply functionally); empty when there is none."""
    found = []
    for name, module in unwrap_hf(model).named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            found.append(f'{name or "model"} (p={module.p:g})')
            continue
        for attr in _DROPOUT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, float) and value > 0:
                found.append(f'{name or "model"}.{attr}={value:g}')
    return found
