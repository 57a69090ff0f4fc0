"""Environment for a child process that should load the hooks of ``sitecustomize.py`` in this folder."""

from __future__ import annotations

import os
from pathlib import Path

HOOKS_DIR = Path(__file__).resolve().parent
HANG_AFTER_BATCH = 'RLP_TEST_HANG_AFTER_BATCH'  # the names sitecustomize.py reads
SLEEP_AFTER_UNIT = 'RLP_DATA_TEST_SLEEP_AFTER_UNIT'
HANG_IN = 'RLP_TEST_HANG_IN'  # rollout:B, backward:B or upload:NAME
PAUSE_IN = 'RLP_TEST_PAUSE_IN'  # upload:NAME:FILE
KILL_AFTER_UPLOAD = 'RLP_DATA_TEST_KILL_AFTER_UPLOAD'  # PID:PORT
WAIT_AFTER_BATCH = 'RLP_TEST_WAIT_AFTER_BATCH'  # N:FILE


def hook_env(env: dict[str, str], **hooks: str) -> dict[str, str]:
    """A copy of ``env`` with this folder first on ``PYTHONPATH`` and the hook variables ``hooks`` set."""
    path = os.pathsep.join([str(HOOKS_DIR)] + [p for p in [env.get('PYTHONPATH', '')] if p])
    return {**env, 'PYTHONPATH': path, **hooks}
