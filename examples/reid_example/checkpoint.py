"""Checkpoints: atomic writes, ``weights_only=True`` loads, RNG capture.

A checkpoint is a nested dict of tensors and plain Python containers (dict/list/tuple/str/int/
float/bool/None) so that :func:`torch.load` can read it with ``weights_only=True`` — loading a
checkpoint never executes pickled code.

:func:`save_checkpoint` writes to a temporary file in the destination directory, flushes and
fsyncs it, then :func:`os.replace` s it over the target: a crash mid-write leaves the previous
checkpoint intact, never a truncated one.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> save_checkpoint({"w": torch.ones(2), "step": 3}, d / "last.pt")
    >>> load_checkpoint(d / "last.pt")["step"]
    3
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``state`` to ``path`` (temp file in the same directory + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX; a no-op where directories cannot be opened).
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a trainer checkpoint (got {type(state).__name__})")
    return state


def capture_rng(numpy_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """RNG states the run owns: torch CPU/CUDA default generators, a NumPy Generator.

    The NumPy bit-generator state holds 128-bit integers; it is stored as a JSON string so the
    checkpoint stays loadable with ``weights_only=True``.
    """
    out: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        out["torch_cuda"] = torch.cuda.get_rng_state_all()
    if numpy_rng is not None:
        out["numpy"] = json.dumps(numpy_rng.bit_generator.state)
    return out


def restore_rng(state: dict[str, Any], numpy_rng: np.random.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if numpy_rng is not None and "numpy" in state:
        numpy_rng.bit_generator.state = json.loads(state["numpy"])
