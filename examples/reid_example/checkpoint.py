"""Checkpoints: atomic writes, ``weights_only=True`` loads, RNG capture.

A checkpoint is a nested dict of tensors and plain Python containers (dict/list/tuple/str/int/
float/bool/None) so that :func:`torch.load` can read it with ``weights_only=True`` — loading a
checkpoint never executes pickled code: a file that holds anything else is refused. A file that
cannot be read as a checkpoint (empty, truncated, not a checkpoint at all) is refused with a
``ValueError`` that names it.

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
import pickle
import random
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
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is empty, truncated or not a checkpoint, holds objects other than
            tensors and plain containers (never unpickled), or is not a dict; the message
            names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(
            f"checkpoint {path} is empty (0 bytes): not a checkpoint this trainer wrote"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a bad file surfaces as one of many types, most without its name
        raise ValueError(f"{path} is not a readable checkpoint: {_load_error(err)}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a trainer checkpoint (got {type(state).__name__})")
    return state


def _load_error(err: Exception) -> str:
    """The informative part of a :func:`torch.load` error."""
    text = str(err).strip()
    if isinstance(err, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        # torch's advice to allowlist the object is left out: that would let it run
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        detail = detail.split(". Please use", 1)[0]
        return (
            f"{detail} (checkpoints are loaded with weights_only=True: tensors and plain "
            "containers only; nothing in the file was run)"
        )
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no details'}"


def capture_rng(numpy_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """This process's RNG states: the torch CPU and CUDA default generators, Python's ``random``
    and the run's NumPy Generator.

    The Python and NumPy states hold large integers; they are stored as JSON strings so the
    checkpoint stays loadable with ``weights_only=True``.
    """
    out: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        out["torch_cuda"] = torch.cuda.get_rng_state_all()
    if numpy_rng is not None:
        out["numpy"] = json.dumps(numpy_rng.bit_generator.state)
    return out


def restore_rng(state: dict[str, Any], numpy_rng: np.random.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only onto as many devices as were saved)."""
    torch.set_rng_state(state["torch_cpu"])
    if "python" in state:
        version, internal, gauss = json.loads(state["python"])
        random.setstate((version, tuple(internal), gauss))
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if numpy_rng is not None and "numpy" in state:
        numpy_rng.bit_generator.state = json.loads(state["numpy"])
