"""rlp.tools.jobs: lanes of real subprocesses.

Checked: commands of one lane run in order and lanes overlap in time, never more than ``jobs`` commands at once
(read from the start/end times each command writes); each command gets ``OMP_NUM_THREADS`` = the threads asked
for and its output lands in its log; a failing command raises JobFailed with its exit code and the end of its
log, terminates the command running beside it and keeps queued commands from starting.
"""

from __future__ import annotations

import sys
import time

import pytest

from rlp.tools.jobs import JobFailed, Lanes


def _sleeper(path, seconds: float) -> list[str]:
    code = (
        'import os, sys, time; a = time.time(); time.sleep(float(sys.argv[2])); '
        'open(sys.argv[1], "w").write(f"{a} {time.time()} {os.environ[\'OMP_NUM_THREADS\']}")'
    )
    return [sys.executable, '-c', code, str(path), str(seconds)]


def test_lanes_overlap_within_the_job_limit(tmp_path):
    lanes = Lanes(2, tmp_path / 'logs', tmp_path, every=0, threads=3)
    order = []

    def lane(name):
        def go():
            for i in range(2):
                lanes.run(f'{name}{i}', _sleeper(tmp_path / f'{name}{i}', 0.6))
                order.append(f'{name}{i}')

        return go

    lanes.lanes(lane('a'), lane('b'), lane('c'))
    spans = {}
    for name in ('a0', 'a1', 'b0', 'b1', 'c0', 'c1'):
        start, end, threads = (tmp_path / name).read_text().split()
        spans[name] = (float(start), float(end))
        assert threads == '3'
        assert (tmp_path / 'logs' / f'{name}.log').exists()
    for lane_name in 'abc':
        assert spans[f'{lane_name}0'][1] <= spans[f'{lane_name}1'][0]  # a lane runs in order
    points = sorted({t for span in spans.values() for t in span})
    most = max(sum(s <= t < e for s, e in spans.values()) for t in points)
    assert most == 2  # lanes overlapped, and never more than two at once


def test_a_failure_stops_the_others(tmp_path):
    lanes = Lanes(2, tmp_path / 'logs', tmp_path, every=0)
    fail = [sys.executable, '-c', 'import sys, time; time.sleep(0.3); print("bad input x"); sys.exit(3)']
    started = time.monotonic()
    with pytest.raises(JobFailed, match='bad input x') as err:
        lanes.lanes(
            lambda: lanes.run('bad', fail),
            lambda: lanes.run('long', _sleeper(tmp_path / 'long', 60)),
            lambda: (time.sleep(0.1), lanes.run('queued', _sleeper(tmp_path / 'queued', 0.1))),  # asks third
        )
    assert err.value.code == 3 and 'bad failed with exit code 3' in str(err.value)
    assert time.monotonic() - started < 30  # the 60 s command was terminated
    assert not (tmp_path / 'long').exists()
    assert not (tmp_path / 'queued').exists()  # queued behind the failure: never started


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match='jobs must be >= 1, got 0'):
        Lanes(0, tmp_path, tmp_path)
