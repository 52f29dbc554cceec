"""Logging for the trainer: one logger, rank-aware, console + ``train.log`` in the run directory.

Only rank 0 writes to the console and the log file; other ranks log warnings and errors only.
Health lines (``[sdm] ...``, ``[dbg] pair_coverage_mavg=...``) are plain INFO messages, so they
appear verbatim in the console and in ``train.log`` where tools can grep them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["progress_enabled", "setup_logging"]

LOGGER_NAME = "reid_example"


def setup_logging(run_dir: Path | None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``reid_example`` logger (idempotent: previous handlers are replaced)."""
    log = logging.getLogger(LOGGER_NAME)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = False
    log.setLevel(level if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(message)s")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(
        fmt if rank == 0 else logging.Formatter(f"[rank{rank}] %(levelname)s %(message)s")
    )
    log.addHandler(console)
    if run_dir is not None and rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log", mode="a", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
    return log


def progress_enabled(mode: str, rank: int = 0) -> bool:
    """Whether tqdm bars are shown: ``auto`` = only on rank 0 with a TTY on stderr."""
    if rank != 0 or mode == "off":
        return False
    if mode == "on":
        return True
    return sys.stderr.isatty()
