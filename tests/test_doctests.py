"""The docstring examples (``>>>``) of every module of ``rlp`` and ``pipeline`` run and give what they show.

Checked against the examples themselves: each module whose source holds an example is imported and its doctests
run (``doctest`` with ELLIPSIS); an example that fails, raises or prints something else fails the test. Examples
marked ``# doctest: +SKIP`` (they need a model, a Trainer or a recipe file) are not run. The modules of the pure
core that carry examples are listed, so an example cannot silently stop being found.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('rlp', 'pipeline')


def _modules_with_examples() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob('*.py')):
            if '>>>' in path.read_text(encoding='utf-8'):
                parts = path.relative_to(ROOT).with_suffix('').parts
                found.append('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))
    return found


MODULES = _modules_with_examples()


def test_the_pure_modules_examples_are_found():
    """The core modules known to carry runnable examples are among those the doctest run below covers."""
    assert {'rlp.step', 'rlp.strictcfg', 'rlp.run.recipe', 'pipeline.synthetic'} <= set(MODULES)


@pytest.mark.parametrize('name', MODULES)
def test_module_examples_pass(name):
    """Every ``>>>`` example of the module gives the output its docstring shows."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    for test in finder.find(module, name):
        runner.run(test, out=out.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, ''.join(out)
    if name != 'rlp.run.algorithm':  # its one example needs a model and a Trainer: skipped
        assert result.attempted > 0, f'{name}: no example ran'
