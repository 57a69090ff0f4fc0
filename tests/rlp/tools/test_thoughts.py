"""``rlp thoughts`` on a thoughts.jsonl written here in the format of rlp.run.thought_log.

Checked: the exact printed text for a tiny file (the default shows the last logged batch in file order; wrapping
at --width, newlines in the context kept, the target shown with repr, gain = s_pred - s_ema); --top/--worst rank
by reward over all batches or within --batch; --batch A:B is inclusive-exclusive with either side empty and N
alone meaning N:N+1; and the bad inputs (no thoughts.jsonl, an empty one, a malformed line named by its number, a
row without the logged fields, bad --batch syntax, an empty range, a range with nothing logged, bad K/width):
one line naming the value, exit code 2, nothing on stdout.
"""

from __future__ import annotations

import json

import pytest

from rlp.tools.thoughts import parse_batches, read_thoughts, select
from tests.helpers.runs import run_cli


def _row(batch, sample_id, rollout, reward, thought='x</think>', **extra):
    row = {
        'batch': batch,
        'sample_id': sample_id,
        'target_index': 11,
        'rollout': rollout,
        'context': 'line one\nline two',
        'thought': thought,
        'target': '\n',
        'reward': reward,
        's_pred': reward - 1.0,
        's_ema': -1.0,
        'advantage': reward / 2,
        'length': 2,
        'truncated': False,
    }
    row.update(extra)
    return row


ROWS = [
    _row(0, 7, 0, 0.5, context='the sum of 3 and 4 is', thought=' 3 plus 4</think>', target=' 7', length=5),
    _row(2, 9, 1, -2.0, thought='aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj</think>', length=8, truncated=True),
    _row(2, 9, 0, 1.0, s_pred=0.25, s_ema=-1.0),
]


def _write(folder, rows=ROWS, extra_lines=()):
    folder.mkdir(exist_ok=True)
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    (folder / 'thoughts.jsonl').write_text(''.join(line + '\n' for line in lines))
    return folder


def test_default_shows_last_batch_exactly(tmp_path, capsys):
    """Default selection = the last logged batch (2), in file order, wrapped at 40 columns."""
    run = _write(tmp_path / 'run')
    rc, out, err = run_cli(capsys, 'thoughts', run, '--width', 40)
    assert rc == 0, err
    path = run / 'thoughts.jsonl'
    assert out == (
        f'{path}: 3 thoughts from 2 batches (0..2)\n'
        '\n'
        '== batch 2 (the last logged): 2 thoughts\n'
        '\n'
        'batch 2  sample 9  rollout 1  target@11\n'
        '  reward -2.000  gain(s_pred-s_ema) -2.000  advantage -1.000  length 8  truncated yes\n'
        '  context: line one\n'
        '           line two\n'
        '  thought: aaaa bbbb cccc dddd eeee ffff\n'
        '           gggg hhhh iiii jjjj</think>\n'
        "  target:  '\\n'\n"
        '\n'
        'batch 2  sample 9  rollout 0  target@11\n'
        '  reward +1.000  gain(s_pred-s_ema) +1.250  advantage +0.500  length 2  truncated no\n'
        '  context: line one\n'
        '           line two\n'
        '  thought: x</think>\n'
        "  target:  '\\n'\n"
    )


def test_top_and_worst(tmp_path, capsys):
    """--top 1 --worst 1 without --batch rank all rows (1.0 highest, -2.0 lowest); with --batch :2 only batch 0."""
    run = _write(tmp_path / 'run')
    rc, out, _ = run_cli(capsys, 'thoughts', run, '--top', 1, '--worst', 1)
    assert rc == 0
    top, worst = out.split('== worst')
    assert '== top 1 by reward, all batches: 1 thought' in top and 'reward +1.000' in top and 'reward -' not in top
    assert ' 1 by reward, all batches: 1 thought' in worst and 'reward -2.000' in worst
    rc, out, _ = run_cli(capsys, 'thoughts', run, '--top', 5, '--batch', ':2')
    assert rc == 0
    assert '== top 5 by reward, batches :2: 1 thought\n' in out and "target:  ' 7'" in out
    assert '  thought:  3 plus 4</think>' in out and 'batch 2 ' not in out


def test_batch_ranges():
    """A:B keeps A <= batch < B; empty sides are open; N is N:N+1; top/worst sort by reward, ties in file order."""
    rows = [_row(b, b, 0, float(b % 3)) for b in range(6)]
    batches = lambda sel: [r['batch'] for _, chosen in sel for r in chosen]
    assert parse_batches('2:4') == (2, 4) and parse_batches(':3') == (None, 3) and parse_batches('4:') == (4, None)
    assert parse_batches(':') == (None, None) and parse_batches('3') == (3, 4)
    assert batches(select(rows, (2, 4))) == [2, 3]
    assert batches(select(rows, (None, 2))) == [0, 1]
    assert batches(select(rows, (4, None))) == [4, 5]
    assert batches(select(rows)) == [5]
    assert batches(select(rows, None, top=3)) == [2, 5, 1]
    assert batches(select(rows, (0, 5), worst=2)) == [0, 3]


@pytest.mark.parametrize('text', ['a:b', '1:2:3', '-1:4', '1.5:', 'x', '3-5'])
def test_bad_batch_syntax(tmp_path, capsys, text):
    """Malformed --batch values name the value and the A:B rule."""
    rc, out, err = run_cli(capsys, 'thoughts', _write(tmp_path / 'run'), f'--batch={text}')
    assert rc == 2 and out == '' and err.count('\n') == 1
    assert err.startswith(f'rlp thoughts: --batch {text!r}: expected A:B')


def test_bad_inputs(tmp_path, capsys):
    """No thoughts.jsonl, an empty one, a malformed line 3, a row lacking fields, an empty or unlogged range, and
    K/width out of range: one line each, naming the value, exit code 2."""
    (tmp_path / 'none').mkdir()
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'thoughts.jsonl').write_text('')
    bad = _write(tmp_path / 'bad', ROWS[:2], ['{"batch": 3, "sample_id"'])
    foreign = _write(tmp_path / 'foreign', ROWS[:1], ['{"batch": 1}'])
    good = _write(tmp_path / 'good')
    cases = [
        ([tmp_path / 'none'], f"RUN_DIR '{tmp_path / 'none'}' has no thoughts.jsonl"),
        ([tmp_path / 'empty'], 'holds no thought yet'),
        ([bad], f'{bad / "thoughts.jsonl"}:3: not valid JSON'),
        ([foreign], f'{foreign / "thoughts.jsonl"}:2: a thought row needs the fields'),
        ([good, '--batch', '5:3'], "--batch '5:3': the range is empty"),
        ([good, '--batch', '10:'], '--batch 10:: no thought logged in that range; logged batches are 0..2'),
        ([good, '--top', 0], '--top 0'),
        ([good, '--worst', -1], '--worst -1'),
        ([good, '--width', 10], '--width 10'),
    ]
    for argv, message in cases:
        rc, out, err = run_cli(capsys, 'thoughts', *argv)
        assert rc == 2 and out == '' and err.count('\n') == 1, (argv, err)
        assert err.startswith('rlp thoughts: ') and message in err, (argv, err)


def test_read_thoughts_keeps_file_order(tmp_path):
    """Rows come back as written; blank lines are skipped."""
    path = _write(tmp_path / 'run', ROWS, ['', '   ']) / 'thoughts.jsonl'
    assert read_thoughts(str(path)) == ROWS
