"""Strict construction of typed config dataclasses from plain mappings (YAML, JSON, dicts).

Every recipe section is a dataclass; :func:`build` turns a mapping into it and refuses anything it does not
know. Unlike llm-foundry, which checks unknown keys at the top level only, an unknown key at *any* depth is an
error that names the full key path and the keys allowed there, so a typo never passes silently.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``Optional[X]``, ``list[X]``,
``dict[str, X]``, ``Any`` and nested dataclasses (also inside lists and dicts). Ints are accepted where floats
are expected; bools are never accepted as numbers.

Ranges every number obeys, so that no value reaches the trainer to fail there with a traceback: a float is finite
(NaN and infinities are refused), and a number is not negative unless its field says so with
``field(metadata={NEGATIVE: 'what a negative value means'})``. Tighter bounds (``>= 1``) live in each section's
``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

__all__ = ['NEGATIVE', 'ConfigError', 'build', 'one_line', 'to_dict']

NEGATIVE = 'negative'
"""Field metadata key: negative numbers are allowed there (the value says what they mean)."""

T = TypeVar('T')


class ConfigError(ValueError):
    """A recipe or config value is invalid; the message names the key path, the rule and the fix."""


def one_line(err: BaseException) -> str:
    """An error's message on one line (runs of whitespace, newlines included, become one space), as printed to users."""
    return ' '.join(str(err).split())


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f'{where}[{key}]'
    return f'{where}.{key}' if where else str(key)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return ' | '.join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return ' | '.join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return 'null'
    if dataclasses.is_dataclass(tp):
        return 'a mapping'
    if origin is not None:
        return str(tp).replace('typing.', '')
    return getattr(tp, '__name__', str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f'{where}: got {value!r}, expected {_type_name(tp)}')
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise ConfigError(f'{where}: got {value!r}, allowed values: {", ".join(repr(a) for a in args)}')
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f'{where}: got {value!r}, expected a list')
        inner = args[0] if args else Any
        return [_convert(v, inner, _join(where, i)) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f'{where}: got {value!r}, expected a mapping')
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, inner, _join(where, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f'{where}: got {value!r}, expected true or false')
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f'{where}: got {value!r}, expected an integer')
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:  # YAML 1.1 reads "1e-6" as a string; accept it as the float it clearly is
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f'{where}: got {value!r}, expected a number')
        if not math.isfinite(number):
            raise ConfigError(f'{where}: got {value!r}, expected a finite number')
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f'{where}: got {value!r}, expected a string')
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f'{where}: got {value!r}, expected {_type_name(tp)}')


def _not_negative(value: Any, where: str) -> None:
    """Refuse a negative number (also inside a list, e.g. Adam's betas); nested dataclasses checked themselves."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _not_negative(item, _join(where, i))
    elif isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f'{where}: got {value!r}, which is negative; rule: it must be >= 0; fix: give a value >= 0')


def build(cls: type[T], data: Mapping[str, Any] | None, where: str = '') -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrongly typed values at any depth.

    Args:
        cls: a dataclass type; its field annotations drive the conversion.
        data: the mapping to convert (``None`` means "all defaults").
        where: the key path of ``data`` inside the whole config, used in error messages.

    Returns:
        An instance of ``cls``. Its ``__post_init__`` runs as usual (put cross-field checks there).

    Raises:
        ConfigError: an unknown key (the message lists the allowed keys), a missing required key, or a value
            of the wrong type.

    Example:
        >>> @dataclasses.dataclass
        ... class Opt:
        ...     lr: float = 1e-3
        >>> build(Opt, {'lr': 2e-4}).lr
        0.0002
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f'{where or "config"}: got {data!r}, expected a mapping with keys '
            f'{", ".join(f.name for f in dataclasses.fields(cls))}'
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f'unknown key {_join(where, unknown[0])!r}; allowed keys at '
            f'{where or "the top level"}: {", ".join(sorted(fields))}'
        )
    kwargs = {}
    for name, field in fields.items():
        path = _join(where, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f'missing required key {path!r} ({_type_name(hints[name])})')
    try:
        obj = cls(**kwargs)
    except ConfigError as err:  # a __post_init__ check: make sure the line says where (which stream, ...)
        last = where.rpartition('.')[2]
        if last and last not in str(err):
            raise ConfigError(f'{where}: {err}') from None
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f'{where or "config"}: {err}') from err
    for name in kwargs:  # after the section's own checks, whose messages say more
        if NEGATIVE not in fields[name].metadata:
            _not_negative(kwargs[name], _join(where, name))
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a (nested) config dataclass, for logging the resolved config and checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
