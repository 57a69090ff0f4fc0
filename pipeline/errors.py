"""The one error type of ``rlp-data``: a user-facing message that names the value, the rule and the fix.

Every problem the user can fix (a missing input, a bad flag, an output holding another dataset, ...) is raised as
:class:`DataError` (exit code 1) or :class:`UsageError` (exit code 2, a bad command-line value). The CLI prints
``rlp-data: error: <message>`` on one line and exits with ``exit_code``; no traceback. Both classes take a single
string, so they pickle across the worker pool unchanged.
"""

from __future__ import annotations

__all__ = ['DataError', 'UsageError', 'one_line']


class DataError(Exception):
    """A problem with the inputs, the output or the environment; the message says what to do. Exit code 1."""

    exit_code = 1


class UsageError(DataError):
    """A command-line value that breaks a rule (e.g. ``--seq-len 1``). Exit code 2, as argparse uses."""

    exit_code = 2


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A short single-line rendering of a library exception, for embedding in a :class:`DataError` message."""
    text = ' '.join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + '...'
    return f'{type(exc).__name__}: {text}'
