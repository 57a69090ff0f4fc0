"""Commands run side by side on a small machine: ``make demo``'s arms and ``bench/study.py``'s runs.

A *lane* is a sequence of commands that depend on each other (train, export, evaluate one arm); lanes run in
threads and at most ``jobs`` commands run at once. Each command gets ``OMP_NUM_THREADS = cores // jobs`` (at least
1): torch's default of one thread per core in every process oversubscribes the cores as soon as two processes
share them, and its spinning threads then slow every process down (measured on 2 cores with a third process
busy: 10 steps of ``recipes/demo-rlp.yaml`` took 368 s with 2 threads against 68 s with 1).

Each command's output goes to ``<logs>/<name>.log``; the console gets one line when a command starts and ends,
and every ``every`` seconds the newest progress line (``[batch ...``) of each running command. A failing command
stops the others and ends the run with its exit code and the last lines of its log.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

__all__ = ['JobFailed', 'Lanes']


class JobFailed(RuntimeError):
    """A command of a lane exited non-zero (``code``); the message names it and quotes the end of its log."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Lanes:
    """Run lanes of commands with at most ``jobs`` commands at once (see the module docstring).

    Args:
        jobs: commands running at the same time (>= 1).
        logs: the folder of the per-command logs (created).
        cwd: the working directory of every command.
        every: seconds between progress lines (0: none).
        threads: ``OMP_NUM_THREADS`` of each command; None = ``max(1, cores // jobs)``.
    """

    def __init__(self, jobs: int, logs: Path, cwd: Path, every: float = 30.0, threads: Optional[int] = None) -> None:
        if jobs < 1:
            raise ValueError(f'jobs must be >= 1, got {jobs}')
        self.jobs, self.logs, self.cwd, self.every = jobs, Path(logs), Path(cwd), every
        self.threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // jobs)
        self._slots = threading.Semaphore(jobs)
        self._lock = threading.Lock()
        self._running: dict[str, tuple[subprocess.Popen, Path]] = {}
        self._failed: list[JobFailed] = []
        self._stop = threading.Event()
        self.logs.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, cmd: list[str]) -> float:
        """Run ``cmd`` when a slot is free (log ``<logs>/<name>.log``); its wall time in seconds.

        Raises:
            JobFailed: it exited non-zero, or another lane failed before it started.
        """
        with self._slots:
            if self._stop.is_set():
                raise JobFailed(f'{name}: not started, another command failed', 1)
            log = self.logs / f'{name}.log'
            print(f'[{name}] $ {shlex.join(cmd)}   (log: {log})', flush=True)
            env = {**os.environ, 'OMP_NUM_THREADS': str(self.threads)}
            started = time.monotonic()
            with open(log, 'w') as out:
                proc = subprocess.Popen(cmd, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
                with self._lock:
                    self._running[name] = (proc, log)
                code = proc.wait()
                with self._lock:
                    del self._running[name]
            took = time.monotonic() - started
            if code != 0:
                self._stop.set()  # before the slot is free: nothing queued starts after a failure
                tail = '\n'.join(log.read_text(errors='replace').splitlines()[-15:])
                raise JobFailed(f'{name} failed with exit code {code}: {shlex.join(cmd)}\n{tail}', code)
        print(f'[{name}] done in {took:.0f}s', flush=True)
        return took

    def lanes(self, *lanes: Callable[[], None]) -> None:
        """Run each callable in its own thread (each calls :meth:`run` for its commands) and wait for all.

        Raises:
            JobFailed: the first failure, after the other running commands were terminated.
        """
        threads = [threading.Thread(target=self._guard, args=(lane,), daemon=True) for lane in lanes]
        for t in threads:
            t.start()
        last = time.monotonic()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=1.0)
            if self.every and time.monotonic() - last >= self.every:
                last = time.monotonic()
                self._progress()
        if self._failed:
            raise self._failed[0]

    def _guard(self, lane: Callable[[], None]) -> None:
        try:
            lane()
        except JobFailed as err:
            with self._lock:
                first = not self._failed
                self._failed.append(err)
                running = [proc for proc, _ in self._running.values()]
            self._stop.set()
            if first:
                for proc in running:
                    proc.terminate()

    def _progress(self) -> None:
        with self._lock:
            running = list(self._running.items())
        for name, (_, log) in running:
            lines = [ln for ln in log.read_text(errors='replace').splitlines() if ln.startswith('[batch')]
            if lines:
                print(f'[{name}] {lines[-1][:150]}', flush=True)
