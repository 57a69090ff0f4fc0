"""The layering of the code base, read from the source with ``ast`` (every import, inside functions and
``if TYPE_CHECKING:`` blocks too), checked against the rules below; the cycle finder is checked on a known graph.

Rules:
  1. ``pipeline`` (data preparation) never imports ``rlp`` (training).
  2. The core (``rlp`` outside ``rlp.run`` and ``rlp.tools``) never imports Composer or streaming.
  3. Nothing in the core imports the run layer ``rlp.run`` or the tools ``rlp.tools``; the only exceptions are the
     two entry-point shims ``rlp.train`` (``composer -m rlp.train``, to ``rlp.run.train``) and ``rlp.demo`` (to
     ``rlp.tools.demo``), which import nothing else.
  4. The tools (``rlp.tools``: what reads a run's output) may import the run layer; the run layer (``rlp.run``: what
     a training run needs) never imports the tools.
  5. No import cycle between the project's modules.
  6. No test module imports another test module; what tests share lives in ``tests/helpers``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY_SHIMS = {'rlp.train', 'rlp.demo'}


def _modules() -> dict[str, Path]:
    out = {}
    for package in ('pipeline', 'rlp'):
        for path in sorted((REPO / package).rglob('*.py')):
            parts = list(path.relative_to(REPO).with_suffix('').parts)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            out['.'.join(parts)] = path
    return out


def _imports(path: Path, module: str, is_package: bool) -> set[str]:
    """Every absolute module name imported anywhere in the file (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = module.split('.')[: len(module.split('.')) - node.level + (1 if is_package else 0)]
                base = '.'.join(parent + ([base] if base else []))
            names.add(base)
            names.update(f'{base}.{a.name}' for a in node.names)  # `from pkg import module`
    return names


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        imported = _imports(path, name, path.name == '__init__.py')
        graph[name] = {m for m in imported if m in mods and m != name}
        graph[name] |= {'<external>:' + m.split('.')[0] for m in imported if m.split('.')[0] not in ('rlp', 'pipeline')}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + '.')


def _core(name: str) -> bool:
    return _in(name, 'rlp') and not _in(name, 'rlp.run') and not _in(name, 'rlp.tools') and name not in ENTRY_SHIMS


def test_pipeline_never_imports_rlp():
    bad = {
        m: sorted(d for d in deps if d.startswith('rlp')) for m, deps in _graph().items() if m.startswith('pipeline')
    }
    assert not {m: d for m, d in bad.items() if d}


def test_core_imports_neither_composer_nor_streaming_nor_the_run_layer():
    graph = _graph()
    core = [m for m in graph if _core(m)]
    assert {'rlp.objective', 'rlp.step', 'rlp.teacher', 'rlp.rollouts', 'rlp.config'} <= set(core)
    forbidden = ('<external>:composer', '<external>:streaming')
    bad = {m: sorted(d for d in graph[m] if d in forbidden or _in(d, 'rlp.run') or _in(d, 'rlp.tools')) for m in core}
    assert not {m: d for m, d in bad.items() if d}


def test_the_run_layer_never_imports_the_tools():
    graph = _graph()
    run = [m for m in graph if _in(m, 'rlp.run')]
    tools = [m for m in graph if _in(m, 'rlp.tools')]
    assert {'rlp.run.train', 'rlp.run.trainer', 'rlp.run.recipe', 'rlp.run.checkpoint_load'} <= set(run)
    assert {'rlp.tools.cli', 'rlp.tools.export', 'rlp.tools.evaluate', 'rlp.tools.demo'} <= set(tools)
    bad = {m: sorted(d for d in graph[m] if _in(d, 'rlp.tools')) for m in run}
    assert not {m: d for m, d in bad.items() if d}
    # the tools do read the run layer (export -> checkpoint reading): the rule above is not vacuous
    assert any(_in(d, 'rlp.run') for m in tools for d in graph[m])


def test_entry_shims_only_reach_the_run_layer():
    graph = _graph()
    for shim in ENTRY_SHIMS:
        assert {d for d in graph[shim] if not d.startswith('<external>')} <= {
            'rlp.run',
            'rlp.run.train',
            'rlp.tools',
            'rlp.tools.demo',
        }


def test_no_import_cycles():
    graph = {m: {d for d in deps if not d.startswith('<external>')} for m, deps in _graph().items()}
    assert find_cycle(graph) is None, find_cycle(graph)


def test_cycle_finder_finds_a_known_cycle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def test_test_modules_import_no_other_test_module():
    bad = {}
    for path in sorted((REPO / 'tests').rglob('test_*.py')):
        module = '.'.join(path.relative_to(REPO).with_suffix('').parts)
        imported = _imports(path, module, False)
        others = sorted(m for m in imported if m.startswith('tests.') and m.split('.')[-1].startswith('test_'))
        if others:
            bad[module] = others
    assert not bad
