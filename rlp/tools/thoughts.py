"""``rlp thoughts``: print the sampled thoughts of a run's ``thoughts.jsonl`` for people to read.

Each row (format in :mod:`rlp.run.thought_log`) is shown with its batch, sample id, rollout and target position,
the reward, the gain against the EMA teacher (``s_pred - s_ema``; equal to the reward when the teacher kind is
``ema``), the advantage, the thought's length (closing tag included) and whether it was truncated, then the
context tail, the thought and the target. Which rows: ``--batch A:B`` keeps batches A <= batch < B (either side
may be empty; ``N`` alone is ``N:N+1``); without ``--batch``, ``--top``/``--worst`` rank all logged rows, and with
neither the last logged batch is shown in file order. ``--top K`` shows the K highest rewards, ``--worst K`` the K
lowest (both: two sections).
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any, Optional

from rlp.tools.cli import CliError

__all__ = ['add_parser', 'format_row', 'parse_batches', 'read_thoughts', 'run', 'select']

_FIELDS = ('batch', 'sample_id', 'rollout', 'context', 'thought', 'target', 'reward', 's_pred', 's_ema', 'length')


def read_thoughts(path: str) -> list[dict[str, Any]]:
    """The rows of ``path`` in file order; a line that is not a JSON object with the logged fields is an error
    naming its line number (blank lines are skipped)."""
    rows = []
    with open(path, encoding='utf-8') as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise CliError(
                    f'{path}:{number}: not valid JSON ({err}); the line is damaged (a killed run can cut its last '
                    f'line): delete it'
                ) from err
            missing = [f for f in _FIELDS if not isinstance(row, dict) or f not in row]
            if missing:
                raise CliError(
                    f'{path}:{number}: a thought row needs the fields {", ".join(_FIELDS)}; missing '
                    f'{", ".join(missing)}; is this a thoughts.jsonl written by training?'
                )
            rows.append(row)
    return rows


def parse_batches(text: str) -> tuple[Optional[int], Optional[int]]:
    """``'A:B'`` -> (A, B) with None for an empty side; ``'N'`` -> (N, N + 1)."""
    rule = (
        f'--batch {text!r}: expected A:B (batches A <= batch < B, either side may be empty, e.g. 10:20, 40:, :5) or N'
    )
    parts = text.split(':')
    if len(parts) == 1:
        parts = [text, str(int(text) + 1)] if text.strip().isdigit() else ['x', '']
    if len(parts) != 2 or not all(p.strip().isdigit() or not p.strip() for p in parts):
        raise CliError(rule)
    lo, hi = (int(p) if p.strip() else None for p in parts)
    if lo is not None and hi is not None and hi <= lo:
        raise CliError(f'--batch {text!r}: the range is empty (B must be greater than A)')
    return lo, hi


def select(
    rows: list[dict[str, Any]],
    batches: Optional[tuple[Optional[int], Optional[int]]] = None,
    top: Optional[int] = None,
    worst: Optional[int] = None,
) -> list[tuple[str, list[dict[str, Any]]]]:
    """``[(section title, rows)]``: the batch filter (default: the last batch unless ``top``/``worst``), then the
    ``top`` highest and ``worst`` lowest rewards (ties keep file order)."""
    if batches is None and top is None and worst is None:
        last = max(r['batch'] for r in rows)
        batches, scope = (last, last + 1), f'batch {last} (the last logged)'
    elif batches is None:
        scope = 'all batches'
    else:
        lo, hi = batches
        scope = f'batches {"" if lo is None else lo}:{"" if hi is None else hi}'
    if batches is not None:
        lo, hi = batches
        rows = [r for r in rows if (lo is None or r['batch'] >= lo) and (hi is None or r['batch'] < hi)]
    if top is None and worst is None:
        return [(scope, rows)]
    sections = []
    if top is not None:
        sections.append((f'top {top} by reward, {scope}', sorted(rows, key=lambda r: -r['reward'])[:top]))
    if worst is not None:
        sections.append((f'worst {worst} by reward, {scope}', sorted(rows, key=lambda r: r['reward'])[:worst]))
    return sections


def _block(label: str, text: str, width: int) -> list[str]:
    """``label`` then ``text`` wrapped to ``width`` columns, continuation lines indented under the text."""
    indent = ' ' * (len(label) + 1)
    lines: list[str] = []
    for piece in text.split('\n'):
        lines.extend(textwrap.wrap(piece, width=width - len(indent)) or [''])
    return [((f'{label} ' if i == 0 else indent) + line).rstrip() for i, line in enumerate(lines)]


def format_row(row: dict[str, Any], width: int = 100) -> str:
    """One row as a few readable lines (see the module docstring)."""
    gain = float(row['s_pred']) - float(row['s_ema'])
    advantage = f'  advantage {float(row["advantage"]):+.3f}' if 'advantage' in row else ''
    where = f'  target@{row["target_index"]}' if 'target_index' in row else ''
    lines = [
        f'batch {row["batch"]}  sample {row["sample_id"]}  rollout {row["rollout"]}{where}',
        f'  reward {float(row["reward"]):+.3f}  gain(s_pred-s_ema) {gain:+.3f}{advantage}  length {row["length"]}'
        f'  truncated {"yes" if row.get("truncated") else "no"}',
        *_block('  context:', str(row['context']), width),
        *_block('  thought:', str(row['thought']), width),
        f'  target:  {row["target"]!r}',
    ]
    return '\n'.join(lines)


def _count(n: int) -> str:
    return f'{n} thought' if n == 1 else f'{n} thoughts'


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        'thoughts',
        help="print a run's sampled thoughts (context tail, thought, target, reward, gain)",
        description=__doc__.split('\n\n')[0].replace('``', ''),
        epilog=__doc__.split('\n\n', 1)[1].replace('``', ''),
    )
    p.add_argument('run_dir', metavar='RUN_DIR', help='run folder holding thoughts.jsonl (or the file itself)')
    p.add_argument('--top', type=int, metavar='K', help='the K highest rewards')
    p.add_argument('--worst', type=int, metavar='K', help='the K lowest rewards')
    p.add_argument('--batch', metavar='A:B', help='batches A <= batch < B (default: the last logged batch)')
    p.add_argument('--width', type=int, default=100, metavar='W', help='wrap at W columns (default: %(default)s)')


def run(args: Any) -> int:
    for flag in ('top', 'worst'):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise CliError(f'--{flag} {value}: K must be >= 1')
    if args.width < 40:
        raise CliError(f'--width {args.width}: must be >= 40 columns')
    batches = parse_batches(args.batch) if args.batch is not None else None
    path = args.run_dir if os.path.isfile(args.run_dir) else os.path.join(args.run_dir, 'thoughts.jsonl')
    if not os.path.isfile(path):
        raise CliError(
            f'RUN_DIR {args.run_dir!r} has no thoughts.jsonl; give the trainer.output_dir of an RLP run (training '
            f'writes thoughts.jsonl there unless rlp.log.path names another file: give that file)'
        )
    rows = read_thoughts(path)
    if not rows:
        raise CliError(f'{path!r} holds no thought yet; the first rows are written at the end of a logged batch')
    logged = sorted({r['batch'] for r in rows})
    sections = select(rows, batches, args.top, args.worst)
    if not any(chosen for _, chosen in sections):
        raise CliError(
            f'--batch {args.batch}: no thought logged in that range; logged batches are {logged[0]}..{logged[-1]} '
            f'({len(logged)} of them)'
        )
    print(f'{path}: {_count(len(rows))} from {len(logged)} batches ({logged[0]}..{logged[-1]})')
    for title, chosen in sections:
        print(f'\n== {title}: {_count(len(chosen))}')
        for row in chosen:
            print()
            print(format_row(row, args.width))
    return 0
