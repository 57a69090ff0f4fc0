"""Raw torch.distributed tests on CPU: N gloo ranks spawned from a test, each saving its results for the test."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch


def run_ranks(worker: Callable[..., None], out_dir: Path, world: int = 2) -> list[dict[str, Any]]:
    """Spawn ``world`` processes running ``worker(rank, world, out_dir)`` after joining a gloo process group on a
    free loopback port; return what each saved with :func:`save_rank` (rank order)."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    mp.spawn(_entry, args=(world, port, worker, str(out_dir)), nprocs=world)
    return [torch.load(Path(out_dir) / f'rank{r}.pt') for r in range(world)]


def _entry(rank: int, world: int, port: int, worker: Callable[..., None], out_dir: str) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    # The rank's own launcher variables: Composer's import reads RANK/WORLD_SIZE and refuses values that disagree
    # with the process group, and an earlier test of the same pytest process may have left others in os.environ.
    os.environ.update(
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        NODE_RANK='0',
    )
    tdist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        worker(rank, world, out_dir)
    finally:
        tdist.destroy_process_group()


def save_rank(results: dict[str, Any], rank: int, out_dir: str) -> None:
    """Save one rank's results where :func:`run_ranks` reads them."""
    torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
