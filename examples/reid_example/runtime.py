"""Where a run executes: process group, device, precision, threads and seeds.

The trainer talks to :mod:`torch.distributed` directly, through the few helpers here; every
helper gives the single-process answer when no process group is initialised, so the same code
runs under ``python`` and under ``torchrun``.

Example:
    >>> import torch
    >>> from reid_example.runtime import resolve_amp
    >>> resolve_amp("auto", torch.device("cpu")).name
    'off'
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reid_example.config import Config
from reid_example.model import EmbeddingNetwork

log = logging.getLogger("reid_example")

#: a ``torch.compile`` mode the trainer uses
CompileMode = Literal["default", "reduce-overhead"]

__all__ = [
    "AmpSetup",
    "Runtime",
    "all_gather_objects",
    "all_gather_rows",
    "all_reduce_mean",
    "finish_runtime",
    "init_runtime",
    "is_distributed",
    "place_model",
    "resolve_amp",
    "resolve_compile_mode",
    "resolve_device",
    "wrap_for_training",
]


@dataclass
class AmpSetup:
    """Autocast dtype (``None`` = full precision) and the fp16 GradScaler.

    Example:
        >>> AmpSetup(torch.bfloat16, None, "cpu").name
        'bfloat16'
    """

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    device_type: str

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of the forward passes (a no-op in full precision)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        """``off`` or the autocast dtype's name, as logged."""
        return "off" if self.dtype is None else str(self.dtype).replace("torch.", "")


@dataclass
class Runtime:
    """This process's place in the run.

    Example:
        >>> rt = Runtime(torch.device("cpu"), 0, 1, resolve_amp("off", torch.device("cpu")),
        ...              False, np.random.default_rng(0))
        >>> rt.is_main, rt.non_blocking
        (True, False)
    """

    device: torch.device
    rank: int
    world: int
    amp: AmpSetup
    #: channels_last images and stems (CUDA only: it slows convolutions down on CPU)
    channels_last: bool
    #: the run's NumPy generator (its state is checkpointed)
    np_rng: np.random.Generator
    #: host-to-device copies overlap compute (pinned memory on CUDA)
    non_blocking: bool = False
    #: the ``torch.compile`` mode of the training model and SDM (``None``: eager), settled by
    #: :func:`wrap_for_training`
    compile_mode: CompileMode | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` → the local CUDA device when available (LOCAL_RANK under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available")
    # torch's stubs type device.index as int, but it is None for a device named without one
    index = cast("int | None", dev.index)
    if dev.type == "cuda" and index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def resolve_amp(mode: str, device: torch.device) -> AmpSetup:
    """``auto``: bf16 on CUDA (when supported), off on CPU. ``fp16`` adds a GradScaler."""
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if mode == "off":
        return AmpSetup(None, None, device.type)
    if mode == "bf16":
        return AmpSetup(torch.bfloat16, None, device.type)
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA (use bf16 or off on CPU)")
        return AmpSetup(torch.float16, torch.amp.GradScaler("cuda"), device.type)
    raise ValueError(f"train.amp must be auto, bf16, fp16 or off; got {mode!r}")


def is_distributed() -> bool:
    """Whether a process group is initialised (under ``torchrun``)."""
    return bool(dist.is_available() and dist.is_initialized())


def _init_process_group(cfg: Config, device: torch.device) -> None:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return
    backend = cfg.dist.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))


def init_runtime(cfg: Config) -> Runtime:
    """Join the process group (under torchrun), pick the device and precision, seed the run.

    The torch default generators (model initialisation, dropout) and Python's ``random`` are
    seeded with ``train.seed + rank``; the returned runtime carries the run's NumPy generator.
    Checkpoints hold every rank's state of each
    (:func:`~reid_example.checkpoint.capture_rng`).
    """
    device = resolve_device(cfg.train.device)
    _init_process_group(cfg, device)
    rank = dist.get_rank() if is_distributed() else 0
    world = dist.get_world_size() if is_distributed() else 1
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.train.seed + rank)
    random.seed(cfg.train.seed + rank)
    return Runtime(
        device=device,
        rank=rank,
        world=world,
        amp=resolve_amp(cfg.train.amp, device),
        channels_last=cfg.train.channels_last and device.type == "cuda",
        np_rng=np.random.default_rng(cfg.train.seed + rank),
        non_blocking=cfg.data.pin_memory and device.type == "cuda",
    )


def place_model(model: EmbeddingNetwork, rt: Runtime) -> EmbeddingNetwork:
    """The model on the run's device (channels_last on CUDA)."""
    model = model.to(rt.device)
    if rt.channels_last:
        # torch's stubs omit Module.to's memory_format-only overload (accepted at runtime)
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def wrap_for_training(model: EmbeddingNetwork, cfg: Config, rt: Runtime) -> nn.Module:
    """What the training step calls: the model under DDP (torchrun) and/or ``torch.compile``
    (``train.compile``, in the mode :func:`resolve_compile_mode` settles and records in
    ``rt.compile_mode``). Evaluation and checkpoints use the unwrapped model."""
    wrapped: nn.Module = model
    if is_distributed():
        wrapped = DistributedDataParallel(
            model,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            find_unused_parameters=cfg.dist.find_unused_parameters,
        )
    rt.compile_mode = resolve_compile_mode(cfg, rt.device) if cfg.train.compile else None
    if rt.compile_mode is not None:
        # Default shape handling: the first batch compiles a static graph; when a batch's
        # split into images and captions differs, one graph with a dynamic batch size serves
        # every later batch (P×K and the caption length are fixed; the per-modality stems,
        # whose slices change with every batch's composition, run eagerly).
        wrapped = cast(nn.Module, torch.compile(wrapped, mode=rt.compile_mode))
    return wrapped


def resolve_compile_mode(cfg: Config, device: torch.device) -> CompileMode | None:
    """The ``torch.compile`` mode a run with ``train.compile`` uses, or ``None`` when compiling
    cannot work here (each case says so in one log line and the run trains eagerly).

    ``reduce-overhead`` (CUDA graphs) needs CUDA: elsewhere ``default`` is used. Whether
    ``torch.compile`` works at all (its inductor backend, a C++ compiler on CPU) is probed once
    by compiling a one-line function.
    """
    cudagraphs = cfg.train.compile_mode == "reduce-overhead"
    mode: CompileMode = "reduce-overhead" if cudagraphs else "default"
    if mode == "reduce-overhead" and device.type != "cuda":
        log.warning(
            "train.compile_mode=reduce-overhead needs CUDA (CUDA graphs); compiling with the "
            "default mode on %s",
            device.type,
        )
        mode = "default"
    problem = _compile_problem(device)
    if problem is not None:
        log.warning(
            "train.compile=true but torch.compile cannot run here (%s): training eagerly",
            problem,
        )
        return None
    return mode


def _compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` (``None`` if a probe compiles and runs)."""
    try:
        import torch._inductor  # the default backend
    except ImportError as err:  # pragma: no cover - depends on the torch build
        return f"no inductor backend: {err}"
    try:
        probe = torch.compile(lambda x: x * 2 + 1)
        out = probe(torch.ones(2, device=device))
    except Exception as err:  # any failure means the same fallback
        first = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {first}"
    if not torch.equal(out.cpu(), torch.full((2,), 3.0)):  # pragma: no cover
        return "the probe computed a wrong value"
    return None


def _comm_device(device: torch.device) -> torch.device:
    """NCCL reduces CUDA tensors; gloo, CPU ones."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """The mean of each value over the ranks (the values themselves when not distributed)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return [float(v) for v in (t / dist.get_world_size()).tolist()]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, indexed by rank (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble ``[total, d]`` rows that the ranks hold interleaved (rank ``r`` holds rows
    ``r, r + W, r + 2W, ...``), on the CPU. ``local`` itself when not distributed."""
    if not is_distributed():
        return local.cpu()
    world = dist.get_world_size()
    rows = -(-total // world)  # the largest shard; shorter ones are padded to it
    dev = _comm_device(local.device)
    padded = local.new_zeros((rows, local.shape[1]), device=dev)
    padded[: local.shape[0]] = local.to(dev)
    shards = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shards, padded)
    out = local.new_empty((total, local.shape[1]), device="cpu")
    for r, shard in enumerate(shards):
        out[r::world] = shard[: len(range(r, total, world))].cpu()
    return out


def finish_runtime() -> None:
    """Leave the process group (all ranks wait for each other first)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
