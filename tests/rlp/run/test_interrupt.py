"""Ctrl-C (SIGINT) during ``python -m rlp.train``: one line that says where the run stopped and how to resume,
exit code 130, no traceback; the checkpoint the line names exists (the resume itself is shown by the kill tests).

Before, the run exited 130 with no word (the issue's case: ``rlp-data`` said how to resume, training did not).
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.training import launch, local_run_recipe

pytestmark = pytest.mark.slow


def test_ctrl_c_in_training_says_how_to_resume(tmp_path):
    path = local_run_recipe(tmp_path, '400ba')
    proc = launch(path, nproc=None, cwd=tmp_path, popen=True)
    first = tmp_path / 'ckpt' / 'tiny' / 'ep0-ba2-rank0.pt'
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    text = out.decode()
    assert proc.returncode == 130, text[-3000:]
    lines = [x for x in text.splitlines() if x.startswith('rlp.train: interrupted at batch')]
    assert len(lines) == 1, text[-3000:]
    assert 'rerun the same command to resume from' in lines[0] and re.search(r'ep\d+-ba\d+-rank0\.pt', lines[0])
    assert 'Traceback' not in text, text[-3000:]
    named = lines[0].split('resume from ', 1)[1].split()[0]
    assert Path(named).is_file() and named.startswith(str(tmp_path / 'ckpt' / 'tiny')), lines[0]
