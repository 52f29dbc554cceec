"""Small helpers over :mod:`torch.distributed`.

Every helper degrades to the single-process answer when ``torch.distributed`` is unavailable or not
initialised, so components can call them unconditionally.

* :func:`is_dist` / :func:`get_world_size` / :func:`get_rank`.
* :func:`all_gather_no_grad` — concatenate every rank's tensor along dim 0, in rank order; sizes
  along dim 0 may differ between ranks. The result is detached.
* :func:`all_gather_with_grad` — the same, but gradients flow back to the local slice (through
  :func:`torch.distributed.nn.functional.all_gather`): the gradient a rank receives for its own
  rows is the sum of the gradients every rank computed for those rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_no_grad",
    "all_gather_sizes",
    "all_gather_with_grad",
    "all_reduce_sum",
    "get_rank",
    "get_world_size",
    "is_dist",
]


def is_dist() -> bool:
    """True when ``torch.distributed`` is available and initialised.

    Example:
        >>> from sdmreid.distributed import is_dist
        >>> is_dist()
        False
    """
    return bool(dist.is_available() and dist.is_initialized())


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """Device the collective must run on for the current backend."""
    backend = dist.get_backend()
    if backend == "nccl":
        return (
            tensor.device if tensor.is_cuda else torch.device("cuda", torch.cuda.current_device())
        )
    return torch.device("cpu") if not tensor.is_cuda or backend == "gloo" else tensor.device


def all_gather_sizes(n: int, device: torch.device) -> list[int]:
    """Gather one integer (e.g. a local row count) from every rank, in rank order."""
    if not is_dist():
        return [n]
    t = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(t) for _ in range(get_world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    pad = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad], dim=0)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (rank order), without gradient.

    Ranks may hold different numbers of rows; trailing dimensions and dtype must agree.

    Example:
        >>> import torch
        >>> from sdmreid.distributed import all_gather_no_grad
        >>> all_gather_no_grad(torch.arange(3)).tolist()  # single process: unchanged
        [0, 1, 2]
    """
    if not is_dist():
        return tensor.detach()
    dev = _comm_device(tensor)
    local = tensor.detach().to(dev)
    sizes = all_gather_sizes(local.shape[0], dev)
    rows = max(sizes)
    padded = _pad_rows(local, rows).contiguous()
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)], dim=0).to(tensor.device)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (rank order), keeping the local gradient.

    The rows that came from this rank are connected to ``tensor``'s graph; the backward pass
    sums, for each rank's rows, the gradients computed on every rank (the usual semantics of
    :func:`torch.distributed.nn.functional.all_gather`).

    Example:
        >>> import torch
        >>> from sdmreid.distributed import all_gather_with_grad
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> all_gather_with_grad(x).requires_grad
        True
    """
    if not is_dist():
        return tensor
    from torch.distributed.nn.functional import all_gather as _ag

    dev = _comm_device(tensor)
    local = tensor.to(dev)
    sizes = all_gather_sizes(local.shape[0], dev)
    rows = max(sizes)
    gathered = _ag(  # type: ignore[no-untyped-call]
        _pad_rows(local, rows).contiguous()
    )
    return torch.cat([g[:s] for g, s in zip(gathered, sizes, strict=True)], dim=0).to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (returns a new tensor; identity when not distributed)."""
    if not is_dist():
        return tensor.clone()
    dev = _comm_device(tensor)
    out = tensor.detach().to(dev).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)
