"""Small helpers over :mod:`torch.distributed`.

Every helper degrades to the single-process answer when ``torch.distributed`` is unavailable or not
initialised, so components can call them unconditionally.

* :func:`is_dist` / :func:`get_world_size` / :func:`get_rank`.
* :func:`all_gather_no_grad` — concatenate every rank's tensor along dim 0, in rank order; sizes
  along dim 0 may differ between ranks. The result is detached.
* :func:`all_gather_with_grad` — the same, but gradients flow back to the local slice (through
  :func:`torch.distributed.nn.functional.all_gather`): the gradient a rank receives for its own
  rows is the sum of the gradients every rank computed for those rows.
* :func:`agree_or_raise` — before a gather, every rank learns whether every rank can take part
  (its inputs passed validation, agree with the other ranks' shapes and dtypes, and are finite);
  if not, every rank raises the same error instead of one rank raising and the others waiting
  in the collective (or the backend aborting the process on mismatched buffers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "agree_or_raise",
    "all_gather_no_grad",
    "all_gather_sizes",
    "all_gather_with_grad",
    "all_reduce_sum",
    "get_rank",
    "get_world_size",
    "is_dist",
]

#: Floating dtypes by code, for comparing dtypes across ranks in an integer tensor.
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def agree_or_raise(
    caller: str,
    error: BaseException | None,
    *,
    sizes: Sequence[tuple[str, int | None]] = (),
    dtypes: Sequence[tuple[str, torch.dtype | None]] = (),
    nonfinite: torch.Tensor | None = None,
    nonfinite_message: Callable[[], str] | None = None,
) -> None:
    """Make every rank agree that it can take part in the collective ``caller`` is about to run.

    Each rank contributes one small ``int64`` status row (one all-gather, then one read of it
    on the host): whether its own validation failed (``error``), whether its inputs are not
    finite (``nonfinite``, a 0-dim bool tensor, read only through this gather), and the
    ``sizes`` and ``dtypes`` (e.g. the feature dimension and dtype), which must be equal on
    every rank that passed validation. If any rank fails any of these, every rank raises the
    same exception with the same message naming the ranks and the reasons (a second gather, of
    the failing ranks' messages, runs only then). Every rank must call this with the same names
    in ``sizes`` and ``dtypes``; pass ``None`` for a value this rank could not compute. Without
    a process group it raises ``error`` if there is one and otherwise does nothing.

    Args:
        caller: how the message names the call, e.g. ``"sdm_loss(gather=True)"``.
        error: this rank's validation error, or ``None``.
        sizes: ``(name, value)`` integers every rank must agree on.
        dtypes: ``(name, dtype)`` floating dtypes every rank must agree on.
        nonfinite: True when this rank's inputs hold NaN/Inf (``None``: not checked here).
        nonfinite_message: says where, on a rank whose ``nonfinite`` is True.

    Raises:
        ValueError: some rank failed (a ``TypeError`` when every reason is a rank's own
            ``TypeError``).

    Example:
        >>> from sdmreid.distributed import agree_or_raise
        >>> agree_or_raise("demo", None, sizes=[("dim", 8)])  # single process: nothing to do
    """
    if not is_dist():
        if error is not None:
            raise error
        return
    world = get_world_size()
    codes = [-1 if v is None else int(v) for _, v in sizes]
    codes += [-1 if t is None else _dtype_code(t) for _, t in dtypes]
    status = torch.tensor([int(error is not None), 0, *codes], dtype=torch.int64)
    dev = _comm_device(nonfinite if nonfinite is not None else status)
    status = status.to(dev)
    if nonfinite is not None and error is None:
        status[1:2] = nonfinite.reshape(1).to(device=dev, dtype=torch.int64)
    gathered = [torch.empty_like(status) for _ in range(world)]
    dist.all_gather(gathered, status)
    rows: list[list[int]] = torch.stack(gathered).tolist()  # the one host read
    refused = [r for r in range(world) if rows[r][0] or rows[r][1]]

    disagreements: list[str] = []
    names = [n for n, _ in sizes] + [n for n, _ in dtypes]
    for i, name in enumerate(names):
        seen = {r: rows[r][2 + i] for r in range(world) if not rows[r][0]}
        if len(set(seen.values())) > 1:
            show = str if i < len(sizes) else _dtype_name
            values = ", ".join(f"rank {r}: {show(v)}" for r, v in seen.items())
            disagreements.append(f"ranks disagree on the {name} ({values})")
    if not (refused or disagreements):
        return

    failures: list[tuple[str, str]] = []
    if refused:  # every rank takes this branch, since it follows from the gathered rows
        mine: tuple[str, str] | None = None
        if error is not None:
            mine = (type(error).__name__, str(error))
        elif rows[get_rank()][1]:
            mine = ("ValueError", nonfinite_message() if nonfinite_message else "not finite")
        messages: list[tuple[str, str] | None] = [None] * world
        dist.all_gather_object(messages, mine)
        failures = [messages[r] or ("ValueError", "refused its inputs") for r in refused]
    reasons = [
        f"rank {r}: {kind}: {text}" for r, (kind, text) in zip(refused, failures, strict=True)
    ]
    message = f"{caller} refused on every rank, before any data was exchanged: " + "; ".join(
        reasons + disagreements
    )
    only_type_errors = not disagreements and all(kind == "TypeError" for kind, _ in failures)
    raise (TypeError if only_type_errors else ValueError)(message) from error


def _dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else len(_DTYPES)


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]) if 0 <= code < len(_DTYPES) else "another dtype"
