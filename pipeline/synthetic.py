"""The embedded default corpus: small, deterministic, synthetic text in which thinking helps.

Each document is a short paragraph of everyday word problems written in prose: running totals, unit
conversions, products, comparisons chained into a conclusion, and bare equations. In every problem the answer
(the first digit of a total, the conclusion of a chain) is hard to predict in one forward pass and easy after a
few worked steps, which is the situation RLP rewards. A fraction of the problems (``think_fraction``, 25% by
default) carries its worked steps inline, between ``<think>`` and ``</think>`` right before the answer, so that a
small model trained on the corpus learns what a useful thought looks like; the other problems are plain text,
where RLP must produce the thought itself.

Documents are a pure function of ``(seed, index)``: ``generate_documents(n, seed)`` is a prefix of
``generate_documents(m, seed)`` for ``n < m``, on every platform (only :class:`random.Random` is used).

Example:
    >>> docs = generate_documents(3, seed=0)
    >>> len(docs)
    3
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

__all__ = ['THINK_OPEN', 'THINK_CLOSE', 'generate_document', 'generate_documents', 'write_jsonl']

THINK_OPEN = '<think>'
THINK_CLOSE = '</think>'

_NAMES = ['ann', 'bob', 'cy', 'dana', 'eve', 'finn', 'gus', 'hana', 'ivo', 'jo', 'kim', 'lea', 'max', 'nia']
_ITEMS = ['apples', 'books', 'coins', 'keys', 'pens', 'stamps', 'shells', 'cards', 'eggs', 'marbles']
_GAIN = ['buys {n} more', 'finds {n}', 'gets {n} as a gift', 'picks up {n}']
_LOSS = ['gives away {n}', 'sells {n}', 'loses {n}', 'uses {n}']
_UNITS = [  # (big unit, small unit, factor)
    ('meters', 'centimeters', 100),
    ('kilograms', 'grams', 1000),
    ('hours', 'minutes', 60),
    ('minutes', 'seconds', 60),
    ('feet', 'inches', 12),
    ('days', 'hours', 24),
    ('liters', 'milliliters', 1000),
]
_CONTAINERS = [
    ('boxes', 'eggs'),
    ('bags', 'apples'),
    ('shelves', 'books'),
    ('crates', 'bottles'),
    ('rows', 'chairs'),
    ('packs', 'cards'),
]
_RELATIONS = [('taller', 'shorter'), ('older', 'younger'), ('faster', 'slower'), ('heavier', 'lighter')]


def _think(steps: list[str]) -> str:
    return f'{THINK_OPEN}{" ".join(steps)}{THINK_CLOSE}'


def _running_total(rng: random.Random, think: bool) -> str:
    while True:
        start = rng.randint(20, 89)
        deltas = [rng.choice([-1, 1]) * rng.randint(1, 9) for _ in range(3)]
        values = [start]
        for d in deltas:
            values.append(values[-1] + d)
        if all(10 <= v <= 99 for v in values):
            break
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    moves = [rng.choice(_GAIN if d > 0 else _LOSS).format(n=abs(d)) for d in deltas]
    steps = [f'{values[i]}{"+" if d > 0 else "-"}{abs(d)}={values[i + 1]}' for i, d in enumerate(deltas)]
    if rng.random() < 0.5:
        head = f'{name} has {start} {item}, {moves[0]}, {moves[1]}, {moves[2]}. now {name} has '
        return head + (_think(steps) if think else '') + f'{values[-1]} {item}.'
    expr = f'{start}' + ''.join(f'{"+" if d > 0 else "-"}{abs(d)}' for d in deltas)
    return f'{expr}=' + (_think(steps) if think else '') + f'{values[-1]}.'


def _conversion(rng: random.Random, think: bool) -> str:
    big, small, factor = rng.choice(_UNITS)
    whole, extra = rng.randint(2, 9), rng.randint(1, factor - 1)
    total = whole * factor + extra
    steps = [f'{whole}*{factor}={whole * factor}', f'{whole * factor}+{extra}={total}']
    return f'{whole} {big} and {extra} {small} make ' + (_think(steps) if think else '') + f'{total} {small}.'


def _product(rng: random.Random, think: bool) -> str:
    (container, item), n, per = rng.choice(_CONTAINERS), rng.randint(3, 9), rng.randint(3, 12)
    steps = [f'{n}*{per}={n * per}']
    return (
        f'there are {n} {container} with {per} {item} each, so there are '
        + (_think(steps) if think else '')
        + f'{n * per} {item} in all.'
    )


def _chain(rng: random.Random, think: bool) -> str:
    a, b, c = rng.sample(_NAMES, 3)
    more, less = rng.choice(_RELATIONS)
    if rng.random() < 0.5:
        first, second = f'{a} is {more} than {b}', f'{b} is {more} than {c}'
    else:
        first, second = f'{b} is {less} than {a}', f'{c} is {less} than {b}'
    steps = [f'{a}>{b}', f'{b}>{c}', f'so {a}>{c}']
    if rng.random() < 0.5:
        return f'{first}. {second}. so {c} is ' + (_think(steps) if think else '') + f'{less} than {a}.'
    return f'{first}. {second}. so {a} is ' + (_think(steps) if think else '') + f'{more} than {c}.'


_KINDS = [_running_total, _running_total, _conversion, _product, _chain]


def generate_document(index: int, seed: int = 0, think_fraction: float = 0.25) -> str:
    """Return document ``index`` of the corpus for ``seed``: 2 to 6 problems joined into one paragraph.

    Args:
        index: the document's position in the corpus (>= 0).
        seed: corpus seed; different seeds give unrelated corpora.
        think_fraction: probability that a problem carries its worked steps inside ``<think>...</think>``.
            Default: 0.25.
    """
    rng = random.Random(f'rlp-synthetic/{seed}/{index}')
    problems = [rng.choice(_KINDS)(rng, rng.random() < think_fraction) for _ in range(rng.randint(2, 6))]
    return ' '.join(problems)


def generate_documents(n_docs: int, seed: int = 0, think_fraction: float = 0.25) -> list[str]:
    """Return the first ``n_docs`` documents of the corpus for ``seed`` (see :func:`generate_document`)."""
    if n_docs < 0:
        raise ValueError(f'n_docs must be >= 0, got {n_docs}')
    return [generate_document(i, seed, think_fraction) for i in range(n_docs)]


def write_jsonl(path: str | Path, n_docs: int, seed: int = 0, think_fraction: float = 0.25) -> Path:
    """Write the corpus as JSON lines ``{"id": i, "text": ...}`` to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('w', encoding='utf-8') as fh:
        for i, text in enumerate(generate_documents(n_docs, seed, think_fraction)):
            fh.write(json.dumps({'id': i, 'text': text}) + '\n')
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.synthetic --docs N --seed S --out corpus.jsonl``: write the corpus as JSON lines."""
    parser = argparse.ArgumentParser(
        prog='python -m pipeline.synthetic',
        description='Write the synthetic reasoning corpus as JSON lines {"id", "text"}.',
    )
    parser.add_argument('--docs', type=int, default=4000, help='number of documents (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='corpus seed (default: %(default)s)')
    parser.add_argument(
        '--think-fraction',
        type=float,
        default=0.25,
        help='share of problems with worked steps inside <think>...</think> (default: %(default)s)',
    )
    parser.add_argument('--out', required=True, help='output .jsonl path')
    args = parser.parse_args(argv)
    if args.docs < 1:
        parser.error(f'--docs {args.docs}: must be >= 1')
    if not 0.0 <= args.think_fraction <= 1.0:
        parser.error(f'--think-fraction {args.think_fraction}: must be in [0, 1]')
    path = write_jsonl(args.out, args.docs, args.seed, args.think_fraction)
    print(f'wrote {args.docs} documents to {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
