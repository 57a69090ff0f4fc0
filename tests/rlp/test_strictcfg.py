"""Checks `rlp.strictcfg.build` against hand-written expectations: nested construction, unknown keys at every
depth (message names the path and the allowed keys), type errors, Literal/Optional/list/dict handling, and that
`__post_init__` errors surface as ConfigError."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from rlp.strictcfg import ConfigError, build, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    kind: Literal['a', 'b'] = 'a'

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f'lr must be > 0, got {self.lr}')


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    streams: dict[str, Inner] = field(default_factory=dict)
    tags: list[int] = field(default_factory=list)
    limit: Optional[int] = None
    flag: bool = False


def test_builds_nested_values_and_defaults():
    cfg = build(Outer, {'name': 'x', 'inner': {'lr': 2}, 'streams': {'web': {'kind': 'b'}}, 'tags': [1, 2]})
    assert cfg.inner.lr == 2.0 and isinstance(cfg.inner.lr, float)
    assert cfg.streams['web'].kind == 'b' and cfg.streams['web'].lr == 1e-3
    assert cfg.tags == [1, 2] and cfg.limit is None and cfg.flag is False
    assert to_dict(cfg)['streams'] == {'web': {'lr': 1e-3, 'kind': 'b'}}


def test_yaml_style_float_strings_are_numbers():
    assert build(Inner, {'lr': '1e-6'}).lr == 1e-6


@pytest.mark.parametrize(
    'data, match',
    [
        ({'name': 'x', 'typo': 1}, r"unknown key 'typo'; allowed keys at the top level: flag, inner, limit, name"),
        ({'name': 'x', 'inner': {'lrr': 1}}, r"unknown key 'inner.lrr'; allowed keys at inner: kind, lr"),
        ({'name': 'x', 'streams': {'web': {'bad': 1}}}, r"unknown key 'streams.web.bad'"),
        ({}, r"missing required key 'name'"),
        ({'name': 3}, r'name: got 3, expected a string'),
        ({'name': 'x', 'flag': 'yes'}, r"flag: got 'yes', expected true or false"),
        ({'name': 'x', 'limit': True}, r'limit: got True, expected'),
        ({'name': 'x', 'tags': [1, 'a']}, r"tags\[1\]: got 'a', expected an integer"),
        ({'name': 'x', 'inner': {'kind': 'c'}}, r"inner.kind: got 'c', allowed values: 'a', 'b'"),
        ({'name': 'x', 'inner': {'lr': -1}}, r'inner: lr must be > 0, got -1.0'),
        ({'name': 'x', 'inner': 5}, r'inner: got 5, expected a mapping'),
    ],
)
def test_errors_name_path_rule_and_allowed(data, match):
    with pytest.raises(ConfigError, match=match):
        build(Outer, data)
