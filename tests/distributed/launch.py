"""Run a function on several CPU processes joined in a gloo group (shared by the ddp tests)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(
    rank: int,
    fn: Callable[[int], Any],
    world: int,
    init_file: str,
    out_dir: str,
    group_timeout: float | None,
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=None if group_timeout is None else timedelta(seconds=group_timeout),
    )
    try:
        result = fn(rank)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        # all ranks finish their collectives before any tears the group down (gloo otherwise
        # can abort a rank at exit with 'terminate called without an active exception')
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_on_ranks(
    fn: Callable[[int], Any],
    world: int,
    *,
    timeout: float = 60.0,
    group_timeout: float | None = None,
) -> list[Any]:
    """Call ``fn(rank)`` in ``world`` spawned processes (one gloo group); return their results.

    ``fn`` must be a module-level function (it is pickled by reference) returning something
    ``torch.save`` / ``torch.load(weights_only=True)`` round-trips. Fails the test, killing the
    workers, if they do not finish within ``timeout`` seconds. ``group_timeout`` (seconds) bounds
    each collective: a rank left waiting for another then fails with a timeout error instead of
    waiting for the backend's default (minutes).
    """
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        ctx = mp.spawn(
            _entry,
            args=(fn, world, init_file, tmp, group_timeout),
            nprocs=world,
            join=False,
        )
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"distributed workers did not finish within {timeout:.0f} s")
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(world)]
