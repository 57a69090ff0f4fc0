"""Property-style check of every leaf of a recipe: wrong types and out-of-range values never give a traceback.

Every leaf of ``recipes/smoke-cpu.yaml`` as loaded (defaults included; the RLP section, the stream, the free-form
``model.config`` fields) is overridden in turn with each value of ``BAD`` (wrong types, a list, a mapping, null,
NaN, +/-inf, a negative, zero, a huge number). Loading (``load_recipe``, then the free-form checks that
``build_trainer`` makes before anything is written) must either accept the value or raise ``ConfigError`` with one
line naming the leaf (its last key; for a stream leaf the stream too); any other exception fails. On top:
non-finite numbers are refused at every numeric leaf, and negative numbers at every numeric leaf but
``trainer.save_num_checkpoints_to_keep`` (-1 keeps all).
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from rlp.run.recipe import load_recipe
from rlp.run.recipe_freeform import check_free_form
from rlp.run.recipe_schema import ConfigError
from tests.helpers.training import REPO

RECIPE = REPO / 'recipes' / 'smoke-cpu.yaml'
BAD = [
    'zz',
    '[1, 2]',
    '{a: 1}',
    'null',
    'true',
    '.nan',
    '.inf',
    '-.inf',
    'nan',
    '-1',
    '-0.5',
    '0',
    '1e300',
    '99999999999',
]
NEGATIVE_OK = {'trainer.save_num_checkpoints_to_keep'}
FREE_FORM = ('model.config', 'tokenizer.kwargs', 'trainer.fsdp', 'model.config_overrides', 'variables')


def _numeric_type(tp) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) else [tp]
    return any(a in (int, float) for a in args)


def _leaves(obj, path=(), numeric=False):
    """(key path, whether the leaf holds a number) of every leaf; dataclass fields by their annotation, the free-form
    model.config by its value."""
    if dataclasses.is_dataclass(obj):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            yield from _leaves(getattr(obj, f.name), (*path, f.name), _numeric_type(hints[f.name]))
    elif isinstance(obj, dict) and (path[-1:] == ('streams',) or '.'.join(path) == 'model.config'):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k), isinstance(v, int | float) and not isinstance(v, bool))
    elif '.'.join(path) not in FREE_FORM:
        yield '.'.join(path), numeric


LEAVES = dict(_leaves(load_recipe(RECIPE)))


def _load(key: str, value: str):
    recipe = load_recipe(RECIPE, [f'{key}={value}'])
    check_free_form(recipe)
    return recipe


@pytest.mark.parametrize('key', sorted(LEAVES))
def test_every_leaf_refuses_bad_values_in_one_line(key):
    assert len(LEAVES) > 80
    failures = []
    for value in BAD:
        try:
            _load(key, value)
        except ConfigError as err:
            text = str(err)
            parts = key.split('.')
            named = parts[-1] in text and (parts[:2] != ['data', 'streams'] or parts[2] in text)
            if '\n' in text or not named:
                failures.append(f'{key}={value}: {text!r}')
            continue
        except Exception as err:  # the property: nothing but ConfigError
            failures.append(f'{key}={value}: {type(err).__name__}: {err}')
            continue
        if not LEAVES[key]:
            continue
        parsed = float(value) if value.lstrip('-').replace('.', '', 1).replace('e', '', 1).isdigit() else None
        if value in ('.nan', '.inf', '-.inf', 'nan'):
            failures.append(f'{key}={value}: a non-finite number was accepted')
        elif parsed is not None and parsed < 0 and key not in NEGATIVE_OK:
            failures.append(f'{key}={value}: a negative number was accepted')
    assert not failures, '\n'.join(failures)


def test_the_leaves_are_found():
    """The walk reaches the numeric leaves of every section, the stream's and the model config's."""
    numeric = {k for k, v in LEAVES.items() if v}
    for key in (
        'seed',
        'trainer.optimizer.lr',
        'rlp.rollouts.temperature',
        'data.streams.synthetic.proportion',
        'model.config.hidden_size',
        'trainer.save_num_checkpoints_to_keep',
        'data.seq_len',
    ):
        assert key in numeric, sorted(numeric)


@pytest.mark.parametrize(
    'overrides, expected',
    [
        (['trainer.optimizer.lr=.nan'], 'trainer.optimizer.lr: got nan, expected a finite number'),
        (['trainer.optimizer.lr=.inf'], 'trainer.optimizer.lr: got inf, expected a finite number'),
        (['trainer.max_duration=0ba'], "trainer.max_duration='0ba' is a run of zero length"),
        (['data.streams.synthetic.proportion=0.0'], 'data.streams.synthetic: proportion=0.0 must be > 0'),
        (['data.streams.synthetic.token_dtype=int8'], "data.streams.synthetic: token_dtype 'int8' is not supported"),
        (['run_name=rün'], "run_name='rün' may only hold ASCII letters (a-z, A-Z), digits"),
        (['seed=-1'], 'seed: got -1, which is negative'),
        (['trainer.optimizer.betas=[0.9, -0.1]'], 'trainer.optimizer.betas[1]: got -0.1, which is negative'),
        (
            ['data.streams.b={local: ./demo/data}'],
            "data.streams.synthetic and data.streams.b share the local folder './demo/data'",
        ),
    ],
)
def test_messages_name_the_key(overrides, expected):
    """The cases the reliability review found unclear or crashing later: each refused at load with its key."""
    with pytest.raises(ConfigError) as err:
        load_recipe(RECIPE, overrides)
    assert str(err.value).startswith(expected), str(err.value)
    assert '\n' not in str(err.value)
