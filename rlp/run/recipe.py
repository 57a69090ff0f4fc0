"""Recipe files: read a YAML recipe and its base chain, merge, apply overrides, resolve variables, validate.

The typed sections a recipe is validated into are :mod:`rlp.run.recipe_schema`; this module turns files and
``key.sub=value`` overrides into the one mapping validated there, and prints it (``python -m rlp.run.recipe``).

Values may reference ``${variables.NAME}``: a string that is exactly one reference takes the variable's value
and type, a reference inside a longer string is substituted as text. Command-line overrides ``key.sub=value``
are applied after loading and before resolution; values are parsed as YAML (``rlp=null``, ``trainer.lr=1e-5``).
An override assigns: ``data.streams={...}`` replaces the whole mapping; ``KEY=$delete`` removes KEY.

Base recipes. A recipe may start from another one with the top-level key ``base: FILE`` (a path relative to the
recipe's own folder, or absolute); the base may itself have a ``base`` (a chain; a cycle or a missing file is a
one-line error). The child is deep-merged onto its base:

* mapping onto mapping merges key by key, recursively; any other value (a scalar, a list, ``null``) replaces the
  base's value whole. So lists replace, and ``rlp: null`` turns off a base's ``rlp`` section.
* ``KEY: $delete`` removes the base's KEY, so the schema's default applies (use it for keys of free-form
  mappings such as ``trainer.fsdp``, or where ``null`` is not the default); deleting a key the base does not
  have is an error (a typo).
* a mapping holding ``$replace: true`` replaces the base's mapping instead of merging into it (e.g. a mixture
  child's ``data.streams``, so the base's streams are dropped, not kept beside the child's).

The directives ``$delete`` and ``$replace`` are recognised in mappings only (not inside lists). The order is: read
the base chain, merge, apply command-line overrides, resolve variables, build the typed objects; strict validation
sees only the merged result (an unknown key a child adds is refused as in any recipe), and the written
``resolved_config.yaml`` holds that merged result, without ``base``.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from rlp.run.recipe_checks import load_yaml_file, parse_override, refuse_uri_queries
from rlp.run.recipe_schema import ConfigError, Recipe, recipe_to_dict
from rlp.strictcfg import build

__all__ = [
    'DELETE',
    'REPLACE',
    'apply_overrides',
    'load_recipe',
    'main',
    'merge_recipe_data',
    'parse_recipe',
    'read_recipe_data',
    'resolve_variables',
]

DELETE = '$delete'  # value that removes a key of the base recipe (in an override: of the recipe)
REPLACE = '$replace'  # key of a mapping (`$replace: true`) that replaces the base's mapping instead of merging


_REF = re.compile(r'\$\{variables\.([A-Za-z0-9_.]+)\}')


def _lookup(variables: dict[str, Any], dotted: str) -> Any:
    node: Any = variables
    for part in dotted.split('.'):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(
                f'${{variables.{dotted}}} is not defined; defined variables: '
                f'{", ".join(sorted(variables)) or "(none)"}'
            )
        node = node[part]
    return node


def resolve_variables(data: dict[str, Any]) -> dict[str, Any]:
    """Replace ``${variables.x}`` references everywhere outside ``variables`` (variables may use each other)."""
    variables = copy.deepcopy(data.get('variables') or {})

    def resolve(node: Any, depth: int = 0) -> Any:
        if depth > 20:
            raise ConfigError('variables reference each other in a cycle')
        if isinstance(node, dict):
            return {k: resolve(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, depth) for v in node]
        if isinstance(node, str):
            whole = _REF.fullmatch(node)
            if whole:
                return resolve(_lookup(variables, whole.group(1)), depth + 1)
            return _REF.sub(lambda m: str(resolve(_lookup(variables, m.group(1)), depth + 1)), node)
        return node

    variables = resolve(variables)
    out = resolve({k: v for k, v in data.items() if k != 'variables'})
    out['variables'] = variables
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; ``$delete`` removes the key) to a copy of ``data``."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)  # one-line errors: no '=', bad YAML
        parts = key.split('.')
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f'override {item!r}: {part!r} is not a mapping in the recipe')
            node = node[part]
        if value == DELETE:
            if parts[-1] not in node:
                raise ConfigError(f'override {item!r}: the recipe has no {key.strip()!r} to delete; drop the override')
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return data


def _join(where: str, key: Any) -> str:
    return f'{where}.{key}' if where else str(key)


def merge_recipe_data(base: dict[str, Any], child: dict[str, Any], where: str = '') -> dict[str, Any]:
    """Deep-merge recipe mapping ``child`` onto ``base`` (new mapping; neither argument changes).

    Mapping onto mapping merges key by key; any other child value (scalar, list, null) replaces the base's.
    ``KEY: $delete`` removes the base's KEY; a child mapping with ``$replace: true`` replaces the base's mapping.

    Args:
        base: the base recipe's (merged) mapping.
        child: the child's mapping, without its ``base`` key.
        where: key path of the two mappings, for error messages.

    Raises:
        ConfigError: ``$delete`` of a key the base does not have, or ``$replace`` with a value other than true.

    Example:
        >>> merge_recipe_data({'a': {'x': 1, 'y': 2}, 'b': [1]}, {'a': {'y': '$delete', 'z': 3}, 'b': [2]})
        {'a': {'x': 1, 'z': 3}, 'b': [2]}
    """
    out = copy.deepcopy(base)
    for key, value in child.items():
        path = _join(where, key)
        if key == REPLACE:
            raise ConfigError(  # inside mappings it was taken out by the caller: this is a file's top level
                f'{REPLACE} at the top level of a recipe would drop its whole base; remove the base key instead, '
                f'or put {REPLACE}: true inside the mapping to replace, e.g. data.streams'
            )
        if value == DELETE:
            if key not in out:
                raise ConfigError(
                    f'{path}: {DELETE} removes a key of the base recipe, but the base has no {path!r}; '
                    f'drop the line (or fix the key name)'
                )
            del out[key]
        elif isinstance(value, dict):
            replace = value.get(REPLACE, False)
            if replace is not True and REPLACE in value:
                raise ConfigError(
                    f'{_join(path, REPLACE)}={replace!r}: {REPLACE} takes only true; drop it to merge with the base'
                )
            inner = {k: v for k, v in value.items() if k != REPLACE}
            below = out.get(key) if not replace else None
            out[key] = merge_recipe_data(below if isinstance(below, dict) else {}, inner, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'recipe {str(path)!r}: a recipe is a YAML mapping of sections, got {type(data).__name__}')
    return data


def read_recipe_data(path: str | Path) -> dict[str, Any]:
    """The recipe at ``path`` as one plain mapping: its base chain read and merged, no ``base`` key left.

    Raises:
        ConfigError: the file or a base in its chain does not exist, the chain has a cycle, a ``base`` is not a
            file name, or a merge directive is misused (see :func:`merge_recipe_data`).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'recipe {str(path)!r} does not exist; pass a YAML file such as recipes/smoke-cpu.yaml')
    chain: list[Path] = []
    datas: list[dict[str, Any]] = []
    current = path
    while True:
        resolved = current.resolve()
        if resolved in chain:
            names = ' -> '.join(str(p) for p in [*chain, resolved])
            raise ConfigError(f'recipe {str(path)!r}: the base chain {names} is a cycle; remove one of the base keys')
        chain.append(resolved)
        data = _read_yaml_mapping(current)
        base = data.pop('base', None)
        datas.append(data)
        if base is None:
            break
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(
                f'recipe {str(current)!r}: base={base!r} is not a file name; write e.g. base: qwen3-1.7b-rlp.yaml '
                f"(relative to the recipe's folder)"
            )
        nxt = current.parent / base
        if not nxt.is_file():
            raise ConfigError(
                f'recipe {str(current)!r}: base {base!r} does not exist (looked for {str(nxt)!r}); base is a path '
                f"relative to the recipe's own folder, e.g. base: qwen3-1.7b-rlp.yaml"
            )
        current = nxt
    merged: dict[str, Any] = {}
    for data in reversed(datas):  # the root of the chain first, the named recipe last
        merged = merge_recipe_data(merged, data)
    return merged


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """Validate a recipe mapping (base chain merged, variables resolved) into a :class:`Recipe`; remote folders
    with a query string are refused (:func:`rlp.run.recipe_checks.refuse_uri_queries`)."""
    if not isinstance(data, dict):
        raise ConfigError(f'a recipe is a YAML mapping of sections, got {type(data).__name__}')
    recipe = build(Recipe, data)
    refuse_uri_queries(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe and its base chain, merge, apply ``key=value`` overrides, resolve variables, validate.

    Example:
        >>> recipe = load_recipe('recipes/smoke-cpu.yaml', ['trainer.max_duration=4ba'])  # doctest: +SKIP
    """
    return parse_recipe(resolve_variables(apply_overrides(read_recipe_data(path), overrides or [])))


def main(argv: list[str] | None = None) -> int:
    """``python -m rlp.run.recipe RECIPE [key.sub=value ...]``: print the merged, resolved recipe as YAML."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ('-h', '--help'):
        print('usage: python -m rlp.run.recipe RECIPE [key.sub=value ...]  (prints the merged, validated recipe)')
        return 0 if args else 2
    try:
        recipe = load_recipe(args[0], args[1:])
    except ConfigError as err:
        print(f'rlp.run.recipe: invalid recipe {args[0]}: {err}', file=sys.stderr)
        return 2
    print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
