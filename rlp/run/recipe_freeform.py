"""Keys of the recipe's free-form sections checked against the class that receives them.

``model.config`` (a transformers config mapping), ``tokenizer.kwargs`` (keyword arguments of
``AutoTokenizer.from_pretrained``) and ``trainer.fsdp`` (Composer's FSDP config) are passed on to another library,
which accepts any key without a word (a transformers config stores an unknown key as an attribute; a typo there
trains the default). Each key is checked here against what the target class accepts, found by introspection (its
signature, its default instance's attributes, the ``kwargs.pop('NAME')`` calls of its constructor), not against a
list kept here, so a newer transformers or Composer with other fields keeps working. An unknown key is the same
one-line error as an unknown key elsewhere in the recipe: the key path and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
from typing import Any, Callable, Iterable

from rlp.strictcfg import ConfigError

__all__ = ['check_free_form', 'check_fsdp_keys', 'check_model_config', 'check_tokenizer_kwargs', 'fsdp_config_class']

_POPPED = re.compile(r"""kwargs\.(?:pop|get|setdefault)\(\s*['"](\w+)['"]""")


def _unknown(where: str, keys: Iterable[str], known: set[str], target: str) -> None:
    for key in keys:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f'did you mean {close[0]!r}? ' if close else ''
        raise ConfigError(
            f"unknown key '{where}.{key}' ({target} has no field {key!r}); {hint}fix: use a field of {target} or "
            f'remove the key'
        )


def _signature_names(fn: Callable) -> set[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _popped_names(fn: Callable) -> set[str]:
    """Names a function reads out of its ``**kwargs`` (``kwargs.pop('name', ...)``), from its source."""
    try:
        return set(_POPPED.findall(inspect.getsource(fn)))
    except (OSError, TypeError):
        return set()


def _init_names(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is not None:
            names |= _signature_names(init) | _popped_names(init)
    return names - {'self', 'kwargs', 'args'}


def _methods_popped(cls: type) -> set[str]:
    """Names any method of ``cls`` or its bases reads out of ``**kwargs`` (transformers 5 reads legacy keys such as
    ``rope_theta`` in a mixin's helper, not in ``__init__``)."""
    names: set[str] = set()
    for klass in cls.__mro__[:-1]:
        for attr in vars(klass).values():
            fn = getattr(attr, '__func__', attr)
            if inspect.isfunction(fn):
                names |= _popped_names(fn)
    return names


def check_model_config(mapping: dict[str, Any]) -> None:
    """Refuse a key of ``model.config`` that the transformers config class of its ``model_type`` does not define,
    and a value whose type differs from the class default's (an integer field given ``"64x"``)."""
    from transformers import CONFIG_MAPPING

    model_type = mapping.get('model_type')
    try:
        cls = CONFIG_MAPPING[model_type]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise ConfigError(
            f'model.config.model_type={model_type!r} is not a model type of this transformers{hint}; fix: use one '
            f'transformers knows, e.g. llama, qwen3, gpt2'
        ) from None
    known = _init_names(cls) | _methods_popped(cls) | set(getattr(cls, 'attribute_map', {}) or {}) | {'model_type'}
    try:
        defaults = vars(cls())
    except Exception:  # a config that cannot be built with defaults: its signature and pops still count
        defaults = {}
    _unknown('model.config', mapping, known | set(defaults), cls.__name__)
    for key, value in mapping.items():
        default = defaults.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f'model.config.{key}: got {value!r}, expected a finite number')
        if isinstance(default, int | float) and not isinstance(default, bool) and default >= 0:
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ConfigError(
                    f'model.config.{key}: got {value!r}, which is negative; rule: {cls.__name__}.{key} is >= 0 '
                    f'(default {default!r}); fix: give a value >= 0'
                )
        if default is None or isinstance(value, type(default)):
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(default, bool) or isinstance(value, bool) or isinstance(default, int | float | str):
            raise ConfigError(
                f'model.config.{key}: got {value!r}, expected {type(default).__name__} like the {cls.__name__} '
                f'default {default!r}; fix: write a plain {type(default).__name__}'
            )


def check_tokenizer_kwargs(tokenizer: Any, kwargs: dict[str, Any]) -> None:
    """Refuse a key of ``tokenizer.kwargs`` that neither ``AutoTokenizer.from_pretrained`` nor the loaded tokenizer's
    class (its ``__init__`` chain) reads."""
    if not kwargs:
        return
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    base = PreTrainedTokenizerBase
    known = _init_names(type(tokenizer)) | set(getattr(base, 'SPECIAL_TOKENS_ATTRIBUTES', ()))
    for fn in (AutoTokenizer.from_pretrained, base.from_pretrained, base._from_pretrained):
        fn = getattr(fn, '__func__', fn)
        known |= _signature_names(fn) | _popped_names(fn)
    _unknown('tokenizer.kwargs', kwargs, known - {'pretrained_model_name_or_path'}, type(tokenizer).__name__)


def fsdp_config_class() -> type:
    """The Composer dataclass that ``trainer.fsdp`` becomes (FSDP2: ``parallelism_config={'fsdp': FSDP2Config}``)."""
    from composer.utils.parallelism import FSDP2Config

    return FSDP2Config


def check_fsdp_keys(fsdp: dict[str, Any], cls: type | None = None) -> None:
    """Refuse a key of ``trainer.fsdp`` that is not a field of Composer's FSDP config dataclass ``cls``."""
    cls = cls or fsdp_config_class()
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else _init_names(cls)
    _unknown('trainer.fsdp', fsdp, known, cls.__name__)


def check_free_form(recipe: Any) -> None:
    """The checks of this module that need no tokenizer: ``model.config`` and ``trainer.fsdp``."""
    if recipe.model.config is not None:
        check_model_config(recipe.model.config)
    if recipe.trainer.fsdp is not None:
        check_fsdp_keys(recipe.trainer.fsdp)
