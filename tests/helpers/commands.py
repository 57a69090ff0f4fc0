"""Helpers for the user-error tests: run a real command (``rlp-data``, ``python -m rlp.train``, ...) in a
subprocess and check that it failed the way a user error must: exactly one line on stderr, no traceback, the
expected exit code, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]


def run_command(argv: list, cwd: Path, env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python ARGV...`` (e.g. ``['-m', 'pipeline.cli', 'prepare', ...]``) in ``cwd`` with the repository on
    ``PYTHONPATH``, offline (``HF_HUB_OFFLINE=1``); return the finished process (text stdout/stderr)."""
    full_env = {
        **os.environ,
        'PYTHONPATH': str(REPO),
        'HF_HUB_OFFLINE': '1',
        'TOKENIZERS_PARALLELISM': 'false',
        'OMP_NUM_THREADS': '1',
        **(env or {}),
    }
    cmd = [sys.executable, *(str(a) for a in argv)]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single stderr line of a refused command; asserts the exit code, one line and no traceback."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert len(lines) == 1, proc.stderr[-4000:]
    assert 'Traceback' not in proc.stderr
    return lines[0]


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (files and folders, relative, sorted): to show that nothing was written."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob('*'))
