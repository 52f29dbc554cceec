"""Cross-batch memory: the (detached) embeddings of the last steps, as one contiguous window.

:class:`CrossBatchMemory` keeps the rows of the most recent ``enqueue`` calls so a loss can use them
as extra gallery columns (the SDM trainer appends the RGB embeddings of the last 6 steps:
``sdm_loss(..., memory=memory.view())``).

Capacity
    * **Step mode** (default, ``max_steps=N``): the memory holds exactly the rows of the last ``N``
      ``enqueue`` calls, whatever their sizes; a call may contribute 0 rows and still counts as a
      step (it evicts the oldest step like any other). This is ``collections.deque(maxlen=N)`` of
      batches followed by concatenation.
    * **Item mode** (``max_items=N``): the memory holds exactly the last ``N`` rows, first in first
      out; a call with more than ``N`` selected rows keeps its last ``N``. Giving ``max_items``
      together with an explicit ``max_steps`` is a :class:`ValueError`.

Reading
    :meth:`~CrossBatchMemory.view` is the one read: a :class:`MemoryView` of the features, labels
    and modalities, oldest row first, each one contiguous slice of the storage returned **without
    a copy**. A view is valid until the next :meth:`~CrossBatchMemory.enqueue`,
    :meth:`~CrossBatchMemory.reset`, ``load_state_dict`` or ``.to()``: these may overwrite or
    replace the storage under it. ``view(copy=True)`` keeps the rows across an ``enqueue``. The
    storage is written in place, so autograd's version check raises (rather than computing with
    overwritten values) if a view saved for a backward pass is overwritten before ``backward()``.
    Do not modify a returned view in place.

Storage
    Rows live in preallocated buffers of ``capacity + slack`` rows, where the slack is 3 ×
    capacity while that keeps the storage under 64 MiB and at least 1 × capacity otherwise. New
    rows are appended after the live window; when the end of the buffer is reached, the surviving
    rows are moved to its front (at most once every ``slack`` appended rows, so at most
    ``capacity / slack`` — between 1/3 and 1 — extra row copies per stored row). That is what
    keeps every read a contiguous slice. In step mode the capacity grows (geometrically) while
    the windows seen get larger; once it covers the largest window an ``enqueue`` allocates no
    storage. In item mode the capacity is ``max_items`` from the start. A warmed-up ``enqueue``
    of a batch in the storage dtype without ``keep`` allocates nothing at all (the finiteness
    test reduces into a reused scalar); ``keep`` adds a ``[B]`` mask and index vector, never a
    feature copy (selected rows are gathered straight into the storage); a batch of another
    dtype is converted once, before the finiteness test.

Modalities
    ``enqueue(..., modalities=None)`` stores :data:`UNKNOWN_MODALITY` (``-1``) for each row; a
    single modality (member, code, alias or 0-dim tensor) applies to every row of the batch.
    ``keep=`` selects the rows to store: a modality, a collection of modalities, a boolean mask
    over the batch, or a callable that maps the batch's ``int64`` modality tensor to such a mask.
    Only the boolean mask works without ``modalities``; the other forms then raise
    :class:`ValueError`. A mask holds bools (a list of ``bool``, a ``bool`` tensor or array); a
    collection of plain integers that are all 0 or 1 (``[1, 0, 1, 0]``, an integer tensor of
    0s and 1s) could be either a mask or the codes of RGB and NIR, so it is refused with a
    :class:`ValueError`: write such modalities as members or names (``[Modality.RGB,
    Modality.NIR]``, ``["rgb", "nir"]``). A single integer is always a modality.

Numerics and devices
    ``enqueue`` runs under :func:`torch.no_grad` and stores detached copies. The features' dtype
    and device are those given to the constructor (or set by a later ``.to()`` before the first
    stored batch); otherwise the first stored batch's. Later batches are converted. The memory
    never holds NaN or Inf (unless built with ``on_nonfinite="ignore"``, which leaves that to the
    caller and never reads the device): the finiteness test runs on the rows *as stored*, after the
    conversion (a finite ``1e5`` becomes Inf in float16). The default ``on_nonfinite="raise"``
    raises :class:`ValueError` and leaves the memory unchanged; ``on_nonfinite="drop"`` stores the
    other rows and warns. The test is one reduction over the batch (an exact per-row test runs
    only when that reduction is not finite).

Checkpoints
    ``state_dict()`` holds the live window (``features``, ``labels``, ``modalities``,
    ``step_ids``) and ``counters``/``config``; ``load_state_dict`` restores it so the memory
    continues exactly as an uninterrupted one would. A checkpoint is checked completely before
    anything is assigned (shapes, integer labels and modalities, known modality codes, step ids,
    finite features in the storage dtype, no unexpected keys under ``strict``): a refused one
    raises :class:`RuntimeError` and leaves the memory unchanged.

Distributed
    ``enqueue(..., gather=True)`` gathers, in rank order, the rows every rank selected (after
    ``keep``), and stores them as one step on every rank, so all ranks hold identical memories.
    Every rank must make the same sequence of ``gather=True`` calls. Before the gather, one small
    all-gather of each rank's status makes the ranks agree that every rank's batch passed
    validation and that they share the feature dimension and the storage dtype; otherwise every
    rank raises the same :class:`ValueError` (naming the ranks and the reasons) and no memory
    changes. The finiteness test runs on the gathered rows, so all ranks raise (or drop)
    together. Without an initialised process group ``gather=True`` does nothing extra.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Union

import numpy as np
import torch
from torch import nn

from sdmreid._validation import check_bool, check_has_data, check_int, int64_array
from sdmreid.distributed import agree_or_raise, all_gather_no_grad, is_dist
from sdmreid.modality import Modality, ModalityLike, as_modality_tensor, parse_modality

__all__ = ["UNKNOWN_MODALITY", "CrossBatchMemory", "KeepLike", "MemoryView"]

#: Modality code stored for rows enqueued without ``modalities``.
UNKNOWN_MODALITY = -1

#: What ``keep=`` accepts (see :meth:`CrossBatchMemory.enqueue`).
KeepLike = Union[  # noqa: UP007
    ModalityLike,
    Collection[ModalityLike],
    torch.Tensor,
    np.ndarray,
    Callable[[torch.Tensor], torch.Tensor],
    None,
]


class MemoryView(NamedTuple):
    """The stored rows, oldest first: what :meth:`CrossBatchMemory.view` returns.

    :func:`sdmreid.sdm_loss` and :class:`sdmreid.SDMLoss` take it as ``memory=``.

    Attributes:
        features: ``[M, dim]`` features.
        labels: ``[M]`` ``int64`` labels.
        modalities: ``[M]`` ``int64`` modality codes (``-1`` where unknown).
    """

    features: torch.Tensor
    labels: torch.Tensor
    modalities: torch.Tensor


class _DefaultSteps(int):
    """``6``, but distinguishable (by identity) from an explicit ``max_steps=6``."""

    def __repr__(self) -> str:
        return "6"


_DEFAULT_MAX_STEPS = _DefaultSteps(6)
_NONFINITE_POLICIES = ("raise", "drop", "ignore")
_SLACK_BYTES = 64 << 20  # storage beyond 2 x capacity only while under this size
_STATE_KEYS = ("features", "labels", "modalities", "step_ids", "counters", "config")


class _Ring:
    """Plain mutable state of a :class:`CrossBatchMemory` (kept off ``nn.Module.__setattr__``).

    The storage tensors are deliberately not registered buffers: their shapes differ between
    memories that saw different batches, which would break ``DistributedDataParallel``'s buffer
    broadcast if a memory sits inside a wrapped model. ``CrossBatchMemory._apply`` moves them and
    ``state_dict`` stores the live window explicitly.
    """

    __slots__ = (
        "capacity",
        "device_fixed",
        "dtype_fixed",
        "end",
        "feats",
        "labels",
        "materialised",
        "mods",
        "rows",
        "scratch",
        "segments",
        "start",
        "steps_seen",
    )

    def __init__(self, feats: torch.Tensor, *, dtype_fixed: bool, device_fixed: bool) -> None:
        self.feats = feats  # [rows, dim]; placeholder [0, dim] until the first enqueue
        self.labels = torch.zeros(0, dtype=torch.int64, device=feats.device)
        self.mods = torch.zeros(0, dtype=torch.int64, device=feats.device)
        self.dtype_fixed = dtype_fixed
        self.device_fixed = device_fixed
        self.materialised = False
        self.capacity = 0
        self.rows = 0  # storage rows: capacity + slack, slack >= capacity
        self.start = 0
        self.end = 0
        self.steps_seen = 0
        # [step id, rows] of the steps covering the window, oldest first. In step mode: the last
        # min(max_steps, steps_seen) steps, empty ones included; in item mode: non-empty ones.
        self.segments: deque[list[int]] = deque()
        self.scratch: torch.Tensor | None = None  # reused 0-dim result of the finiteness test


class CrossBatchMemory(nn.Module):
    """A FIFO memory of detached embeddings, labels and modalities of the last steps.

    See the module documentation for the exact semantics of step and item mode, views, ``keep``
    and checkpoints. :meth:`view` reads the stored rows.

    Args:
        dim: feature dimension ``d``.
        max_steps: step mode, hold the rows of the last ``max_steps`` ``enqueue`` calls
            (default 6).
        max_items: item mode, hold the last ``max_items`` rows instead. Giving it together with
            an explicit ``max_steps`` is an error.
        device: storage device (default: a later ``.to()``, else the first stored batch's).
        dtype: floating storage dtype for the features (default: a later ``.to()``, else the
            first stored batch's). Labels and modalities are stored as ``int64``.
        on_nonfinite: ``"raise"`` (default) rejects a batch whose selected rows hold NaN/Inf
            once converted to the storage dtype, with a :class:`ValueError`; ``"drop"`` stores
            the other rows and warns; ``"ignore"`` runs no test, so ``enqueue`` never reads the
            device: the caller vouches that the rows are finite (a trainer that checks a
            finiteness flag of the step at its logging step). Anything else is refused
            (:class:`TypeError` for a non-str).

    Raises:
        ValueError: a non-positive size, ``max_items`` together with an explicit ``max_steps``,
            or an unknown ``on_nonfinite``.
        TypeError: a non-integer size or a non-floating ``dtype``.

    Example:
        >>> import torch
        >>> from sdmreid.memory import CrossBatchMemory
        >>> from sdmreid.modality import Modality
        >>> mem = CrossBatchMemory(dim=2, max_steps=2)
        >>> rgb, nir = int(Modality.RGB), int(Modality.NIR)
        >>> for step in range(3):
        ...     feats = torch.full((2, 2), float(step))
        ...     n = mem.enqueue(feats, torch.tensor([step, 10 + step]),
        ...                     modalities=torch.tensor([rgb, nir]), keep=Modality.RGB)
        >>> view = mem.view()
        >>> view.labels.tolist()  # the RGB rows of the last 2 steps, oldest first
        [1, 2]
        >>> view.features.shape, len(mem)
        (torch.Size([2, 2]), 2)
        >>> CrossBatchMemory(dim=2, max_items=3).view().features.shape  # empty memory
        torch.Size([0, 2])
    """

    def __init__(
        self,
        dim: int,
        max_steps: int = _DEFAULT_MAX_STEPS,
        max_items: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        on_nonfinite: Literal["raise", "drop", "ignore"] = "raise",
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, 1)
        if max_items is not None:
            if max_steps is not _DEFAULT_MAX_STEPS:
                raise ValueError(
                    "give either max_steps (step mode) or max_items (item mode), not both; "
                    f"got max_steps={max_steps!r} and max_items={max_items!r}"
                )
            self.max_items: int | None = check_int("max_items", max_items, 1)
            self.max_steps: int | None = None
        else:
            self.max_steps = check_int("max_steps", max_steps, 1)
            self.max_items = None
        if not isinstance(on_nonfinite, str):
            raise TypeError(
                f"on_nonfinite must be one of {_NONFINITE_POLICIES} (a str), got "
                f"{type(on_nonfinite).__name__}"
            )
        if on_nonfinite not in _NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite must be one of {_NONFINITE_POLICIES}, got {on_nonfinite!r}"
            )
        self.on_nonfinite = on_nonfinite
        if dtype is not None and (
            not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
        ):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self._r = _Ring(
            torch.zeros(0, self.dim, dtype=dtype or torch.float32, device=dev),
            dtype_fixed=dtype is not None,
            device_fixed=device is not None,
        )

    # ------------------------------------------------------------------ properties and reads
    @property
    def capacity(self) -> int:
        """Rows the window can hold without reallocating (the storage holds 2-4 times as many)."""
        return self._r.capacity

    @property
    def steps_seen(self) -> int:
        """Number of ``enqueue`` calls since construction or the last :meth:`reset`."""
        return self._r.steps_seen

    def __len__(self) -> int:
        return self._r.end - self._r.start

    def view(self, *, copy: bool = False) -> MemoryView:
        """The stored features, labels and modalities, oldest row first.

        Args:
            copy: return copies instead of views of the storage. A view is valid only until the
                next ``enqueue``/``reset``/``load_state_dict``/``.to()``.

        Example:
            >>> import torch
            >>> from sdmreid.memory import CrossBatchMemory
            >>> mem = CrossBatchMemory(dim=3, max_items=4)
            >>> _ = mem.enqueue(torch.ones(5, 3), torch.arange(5))
            >>> view = mem.view(copy=True)
            >>> view.labels.tolist(), view.modalities.tolist()
            ([1, 2, 3, 4], [-1, -1, -1, -1])
        """
        check_bool("copy", copy)
        r = self._r
        s, e = r.start, r.end
        if copy:
            return MemoryView(r.feats[s:e].clone(), r.labels[s:e].clone(), r.mods[s:e].clone())
        return MemoryView(r.feats[s:e], r.labels[s:e], r.mods[s:e])

    def reset(self) -> None:
        """Forget every stored row and the step count (the storage is kept for reuse)."""
        self._r.start = self._r.end = 0
        self._r.steps_seen = 0
        self._r.segments.clear()

    def extra_repr(self) -> str:
        mode = (
            f"max_steps={self.max_steps}"
            if self.max_items is None
            else f"max_items={self.max_items}"
        )
        return (
            f"dim={self.dim}, {mode}, rows={len(self)}, steps_seen={self._r.steps_seen}, "
            f"dtype={self._r.feats.dtype}, device={self._r.feats.device}"
        )

    # ------------------------------------------------------------------ enqueue
    def enqueue(
        self,
        feats: torch.Tensor,
        labels: torch.Tensor | Sequence[int] | np.ndarray,
        modalities: Any = None,
        keep: KeepLike = None,
        gather: bool = False,
    ) -> int:
        """Store the selected rows of one batch as the newest step.

        Args:
            feats: ``[B, dim]`` floating features (any device; detached on storage).
            labels: ``[B]`` integer labels (tensor, sequence or NumPy array).
            modalities: ``[B]`` modalities in any form :mod:`sdmreid.modality` accepts, one
                modality for every row, or ``None`` (stored as ``-1``, unknown).
            keep: which rows to store (default all): a modality, a collection of modalities, a
                ``[B]`` boolean mask (tensor, NumPy array or sequence of ``bool``), or a callable
                mapping the ``[B]`` ``int64`` modality tensor to such a mask. All forms but the
                mask need ``modalities``. Plain integers that are all 0 or 1 are ambiguous (mask
                or RGB/NIR codes) and refused.
            gather: a bool; under an initialised process group, store the selected rows of
                every rank (rank order) on every rank, after the ranks agree that every batch is
                valid and that they share the feature dimension and storage dtype. Ignored
                without one.

        Returns:
            The number of rows stored by this call (before item-mode truncation).

        Raises:
            ValueError: wrong shape or dim, label/feature length mismatch, non-integer labels or
                Python integers beyond int64, an unknown modality, a tensor on the ``meta``
                device, ``keep`` that needs ``modalities`` without them or is ambiguous, or
                (with ``on_nonfinite="raise"``) NaN/Inf in a selected row as stored (after the
                conversion to the storage dtype); under ``gather=True`` any of these on any
                rank, or ranks that disagree on the dimension or storage dtype (raised on every
                rank). The memory is unchanged.
            TypeError: ``feats`` is not a floating tensor, ``keep`` is of an unusable type, or
                ``gather`` is not a bool.

        Example:
            >>> import torch
            >>> from sdmreid.memory import CrossBatchMemory
            >>> mem = CrossBatchMemory(dim=2, max_steps=2)
            >>> mem.enqueue(torch.zeros(3, 2), [7, 8, 9], keep=torch.tensor([True, False, True]))
            2
            >>> mem.enqueue(torch.zeros(0, 2), [])  # an empty step still counts
            0
            >>> mem.view().labels.tolist(), mem.steps_seen
            ([7, 9], 2)
            >>> _ = mem.enqueue(torch.ones(2, 2), [5, 6], modalities="nir")  # one for all rows
            >>> mem.view().modalities.tolist()
            [1, 1]
        """
        distributed = check_bool("gather", gather) and is_dist()
        with torch.no_grad():
            try:
                feats, label_t, mods = self._check_batch(feats, labels, modalities)
                idx = self._selection(keep, mods, feats.shape[0], feats.device)
                dtype = self._storage_dtype(feats)
            except Exception as exc:
                if distributed:  # every rank raises, rather than the others waiting in the gather
                    agree_or_raise(
                        "CrossBatchMemory.enqueue(gather=True)",
                        exc,
                        sizes=[("feature dimension", None)],
                        dtypes=[("storage dtype", None)],
                    )
                raise
            if distributed:
                # Buffers that differ in width or dtype must not reach the backend (it aborts
                # the process); the rows' finiteness is tested after the gather, on every rank.
                agree_or_raise(
                    "CrossBatchMemory.enqueue(gather=True)",
                    None,
                    sizes=[("feature dimension", self.dim)],
                    dtypes=[("storage dtype", dtype)],
                )
                feats, label_t, mods = self._gather(feats, label_t, mods, idx)
                idx = None
            # Convert before the finiteness test, so that it sees the values that would be
            # stored: a float16 storage turns a finite 1e5 into Inf.
            if feats.dtype != dtype:
                feats = feats.to(dtype)
            idx = self._finite_selection(feats, idx)
            if not self._r.materialised:
                self._materialise(feats)
            n = feats.shape[0] if idx is None else int(idx.numel())
            self._store(feats, label_t, mods, idx, n)
            return n

    def _check_batch(
        self, feats: torch.Tensor, labels: Any, modalities: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        check_has_data(feats, "feats")
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(
                f"feats must have shape [B, {self.dim}] (dim={self.dim}), got {tuple(feats.shape)}"
            )
        if not feats.is_floating_point():
            raise TypeError(f"feats must have a floating dtype, got {feats.dtype}")
        b = feats.shape[0]
        if isinstance(labels, torch.Tensor):
            check_has_data(labels, "labels")
        else:
            arr = int64_array(labels, "labels")  # refuses integers beyond int64 by name
            if arr.dtype.kind not in "iufcb":
                raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
            labels = torch.as_tensor(arr)
            if labels.numel() == 0:
                labels = labels.to(torch.int64)
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.shape != (b,):
            raise ValueError(
                f"labels must have shape [{b}] to match feats {tuple(feats.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        mods: torch.Tensor | None = None
        if modalities is None:
            pass
        elif isinstance(modalities, (Modality, str, int, np.integer)) or (
            isinstance(modalities, torch.Tensor) and modalities.ndim == 0
        ):
            code = int(parse_modality(modalities))
            mods = torch.full((b,), code, dtype=torch.int64, device=feats.device)
        else:
            if isinstance(modalities, torch.Tensor):
                check_has_data(modalities, "modalities")
            mods = _modality_codes(modalities)
            if mods.shape != (b,):
                raise ValueError(
                    f"modalities must have length {b} to match feats {tuple(feats.shape)}, "
                    f"got {tuple(mods.shape)}"
                )
        return feats, labels, mods

    def _selection(
        self, keep: KeepLike, mods: torch.Tensor | None, b: int, device: torch.device
    ) -> torch.Tensor | None:
        """Indices (on ``device``) of the rows ``keep`` selects, or ``None`` for all rows."""
        if keep is None:
            return None
        if isinstance(keep, torch.Tensor):
            check_has_data(keep, "keep")
        mask: torch.Tensor
        if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
            mask = keep
        elif isinstance(keep, np.ndarray) and keep.dtype == np.bool_:
            mask = torch.from_numpy(keep)
        elif (
            isinstance(keep, (list, tuple))
            and len(keep) > 0
            and all(isinstance(k, (bool, np.bool_)) for k in keep)
        ):
            mask = torch.tensor(keep, dtype=torch.bool)
        elif _zeros_and_ones(keep):
            raise ValueError(
                "keep holds only the integers 0 and 1, which is ambiguous: a mask over the batch "
                "or the modality codes RGB=0 / NIR=1. Write a mask with bools ([True, False, "
                "...], a bool tensor or array) and modalities by member or name "
                "(Modality.RGB, [Modality.RGB, Modality.NIR], 'nir')"
            )
        else:
            if mods is None:
                raise ValueError(
                    f"keep={keep!r} selects rows by modality, but enqueue got modalities=None; "
                    "pass modalities, or a boolean mask as keep"
                )
            if callable(keep) and not isinstance(keep, (torch.Tensor, Modality)):
                mask = keep(mods.to(torch.int64))
                if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                    raise TypeError(
                        "a keep callable must return a boolean tensor, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}"
                    )
            elif isinstance(keep, (Modality, int, str, np.integer)) or (
                isinstance(keep, torch.Tensor) and keep.ndim == 0  # a 0-dim integer tensor
            ):
                mask = mods == int(parse_modality(keep))
            elif isinstance(keep, (Collection, torch.Tensor, np.ndarray)):
                codes = as_modality_tensor(keep, name="keep")
                mask = torch.isin(mods, codes.to(mods.device, mods.dtype))
            else:
                raise TypeError(
                    "keep must be a modality, a collection of modalities, a boolean mask or a "
                    f"callable, got {type(keep).__name__}"
                )
        if mask.shape != (b,):
            raise ValueError(
                f"keep must select over the batch: a boolean mask of shape [{b}], "
                f"got shape {tuple(mask.shape)}"
            )
        idx = mask.nonzero().flatten()
        if idx.numel() == b:
            return None
        return idx.to(device)

    def _gather(
        self,
        feats: torch.Tensor,
        labels: torch.Tensor,
        mods: torch.Tensor | None,
        idx: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if mods is None:
            mods = torch.full((feats.shape[0],), UNKNOWN_MODALITY, dtype=torch.int64)
        if idx is not None:
            feats = feats.index_select(0, idx)
            labels = labels.index_select(0, idx.to(labels.device))
            mods = mods.index_select(0, idx.to(mods.device))
        return (
            all_gather_no_grad(feats.to(self._storage_dtype(feats))),
            all_gather_no_grad(labels.to(torch.int64)),
            all_gather_no_grad(mods.to(torch.int64)),
        )

    def _storage_dtype(self, feats: torch.Tensor) -> torch.dtype:
        """The dtype ``feats`` is stored in: fixed by then, or else the batch's own."""
        r = self._r
        return r.feats.dtype if (r.materialised or r.dtype_fixed) else feats.dtype

    def _finite_selection(
        self, feats: torch.Tensor, idx: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Apply the NaN/Inf policy to the selected rows; return the (new) selection."""
        if feats.numel() == 0 or self.on_nonfinite == "ignore":
            return idx
        acc = torch.float32 if feats.dtype in (torch.float16, torch.bfloat16) else feats.dtype
        scratch = self._r.scratch
        if scratch is None or scratch.dtype != acc or scratch.device != feats.device:
            scratch = self._r.scratch = torch.zeros((), dtype=acc, device=feats.device)
        # One reduction (into a reused scalar, so nothing is allocated): NaN/Inf anywhere make the
        # sum non-finite. A non-finite sum of finite values (overflow) is resolved by the exact
        # per-row test below.
        if math.isfinite(torch.sum(feats, dim=(0, 1), dtype=acc, out=scratch).item()):
            return idx
        bad = ~torch.isfinite(feats).all(dim=1)
        selected = (
            torch.ones_like(bad) if idx is None else torch.zeros_like(bad).index_fill_(0, idx, True)
        )
        bad &= selected
        n_bad = int(bad.sum().item())
        if n_bad == 0:
            return idx
        if self.on_nonfinite == "raise":
            first = int(bad.nonzero()[0, 0].item())
            raise ValueError(
                f"feats has {n_bad} row(s) with NaN or Inf values among the rows to store "
                f"(first: row {first}); nothing was stored. Use on_nonfinite='drop' to store "
                "the finite rows instead"
            )
        warnings.warn(
            f"CrossBatchMemory dropped {n_bad} row(s) with NaN or Inf features",
            RuntimeWarning,
            stacklevel=3,
        )
        return (selected & ~bad).nonzero().flatten()

    # ------------------------------------------------------------------ storage
    def _materialise(self, feats: torch.Tensor) -> None:
        dtype = self._r.feats.dtype if self._r.dtype_fixed else feats.dtype
        device = self._r.feats.device if self._r.device_fixed else feats.device
        if self.max_items is not None:
            capacity = self.max_items
        else:  # a first guess; grows geometrically while the windows get larger
            capacity = max(1, (self.max_steps or 1) * feats.shape[0])
        self._allocate(capacity, dtype, device)
        self._r.materialised = True

    def _allocate(self, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        row_bytes = self.dim * torch.empty((), dtype=dtype).element_size() + 16
        slack = max(capacity, min(3 * capacity, _SLACK_BYTES // row_bytes))
        rows = capacity + slack
        self._r.rows = rows
        self._r.feats = torch.zeros(rows, self.dim, dtype=dtype, device=device)
        self._r.labels = torch.zeros(rows, dtype=torch.int64, device=device)
        self._r.mods = torch.zeros(rows, dtype=torch.int64, device=device)
        self._r.capacity = capacity

    def _grow(self, needed: int) -> None:
        """Reallocate for a window of ``needed`` rows, moving the live window to the front."""
        old_f, old_l, old_m = self._r.feats, self._r.labels, self._r.mods
        s, e = self._r.start, self._r.end
        new_cap = max(needed, self._r.capacity + self._r.capacity // 2)
        if self.max_items is not None:
            new_cap = max(needed, self.max_items)
        self._allocate(new_cap, old_f.dtype, old_f.device)
        r = e - s
        if r:
            self._r.feats[:r].copy_(old_f[s:e])
            self._r.labels[:r].copy_(old_l[s:e])
            self._r.mods[:r].copy_(old_m[s:e])
        self._r.start, self._r.end = 0, r

    def _compact(self) -> None:
        """Move the live window to the front of the storage (source and target never overlap)."""
        s, e = self._r.start, self._r.end
        r = e - s
        if r:
            self._r.feats[:r].copy_(self._r.feats[s:e])
            self._r.labels[:r].copy_(self._r.labels[s:e])
            self._r.mods[:r].copy_(self._r.mods[s:e])
        self._r.start, self._r.end = 0, r

    def _store(
        self,
        feats: torch.Tensor,
        labels: torch.Tensor,
        mods: torch.Tensor | None,
        idx: torch.Tensor | None,
        n: int,
    ) -> None:
        r = self._r
        segments = r.segments
        cap_items = self.max_items
        if cap_items is None:
            if len(segments) == self.max_steps:
                r.start += segments.popleft()[1]
        else:
            if n > cap_items:  # keep the last max_items selected rows
                if idx is None:
                    off = feats.shape[0] - cap_items
                    feats, labels = feats[off:], labels[off:]
                    mods = mods[off:] if mods is not None else None
                else:
                    idx = idx[n - cap_items :]
                n = cap_items
            drop = max(0, r.end - r.start + n - cap_items)
            r.start += drop
            while drop:
                seg = segments[0]
                if seg[1] <= drop:
                    drop -= seg[1]
                    segments.popleft()
                else:
                    seg[1] -= drop
                    drop = 0
        needed = r.end - r.start + n
        if needed > r.capacity:
            self._grow(needed)
        elif r.end + n > r.rows:
            self._compact()
        if n:
            e = r.end
            f_dst = r.feats[e : e + n]
            l_dst = r.labels[e : e + n]
            m_dst = r.mods[e : e + n]
            if idx is None:
                f_dst.copy_(feats)
                l_dst.copy_(labels)
                if mods is None:
                    m_dst.fill_(UNKNOWN_MODALITY)
                else:
                    m_dst.copy_(mods)
            else:
                _select_into(feats, idx, f_dst)
                _select_into(labels, idx, l_dst)
                if mods is None:
                    m_dst.fill_(UNKNOWN_MODALITY)
                else:
                    _select_into(mods, idx, m_dst)
            r.end = e + n
        if n or cap_items is None:
            segments.append([r.steps_seen, n])
        r.steps_seen += 1

    # ------------------------------------------------------------------ nn.Module plumbing
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        r = self._r
        device, dtype = r.feats.device, r.feats.dtype
        out = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        r.feats, r.labels, r.mods = fn(r.feats), fn(r.labels), fn(r.mods)
        r.scratch = None
        if r.feats.device != device:
            r.device_fixed = True
        if r.feats.dtype != dtype:
            r.dtype_fixed = True
        return out

    def _step_ids(self) -> torch.Tensor:
        counts = torch.tensor([s[1] for s in self._r.segments], dtype=torch.int64)
        ids = torch.tensor([s[0] for s in self._r.segments], dtype=torch.int64)
        return torch.repeat_interleave(ids, counts).to(self._r.feats.device)

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        view = self.view(copy=True)
        destination[prefix + "features"] = view.features
        destination[prefix + "labels"] = view.labels
        destination[prefix + "modalities"] = view.modalities
        destination[prefix + "step_ids"] = self._step_ids()
        destination[prefix + "counters"] = torch.tensor(
            [self._r.steps_seen, int(self._r.materialised), self._r.capacity], dtype=torch.int64
        )
        destination[prefix + "config"] = torch.tensor(
            [self.dim, self.max_steps or 0, self.max_items or 0], dtype=torch.int64
        )

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Everything is checked before anything is assigned: a refused checkpoint leaves the
        # memory as it was.
        missing = [prefix + k for k in _STATE_KEYS if prefix + k not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        if strict:
            unexpected = [
                key
                for key in state_dict
                if key.startswith(prefix)
                and "." not in key[len(prefix) :]
                and key[len(prefix) :] not in _STATE_KEYS
            ]
            if unexpected:
                unexpected_keys.extend(unexpected)
                return
        try:
            saved = self._checked_state({k: state_dict[prefix + k] for k in _STATE_KEYS})
        except ValueError as exc:
            error_msgs.append(f"{prefix}{exc}")
            return
        r = self._r
        self.reset()
        m = saved.features.shape[0]
        if saved.materialised or r.materialised:
            dtype, device = saved.features.dtype, saved.features.device
            self._allocate(max(saved.capacity, m, self.max_items or 0), dtype, device)
            r.materialised = True
            r.feats[:m].copy_(saved.features)
            r.labels[:m].copy_(saved.labels)
            r.mods[:m].copy_(saved.modalities)
            r.start, r.end = 0, m
        r.steps_seen = saved.steps_seen
        step_ids = saved.step_ids
        if self.max_items is None:
            first = max(0, saved.steps_seen - (self.max_steps or 0))
            counts = torch.bincount(step_ids - first, minlength=saved.steps_seen - first).tolist()
            r.segments.extend([first + i, int(c)] for i, c in enumerate(counts))
        else:
            uniq, counts_t = torch.unique_consecutive(step_ids, return_counts=True)
            r.segments.extend(
                [int(s), int(c)] for s, c in zip(uniq.tolist(), counts_t.tolist(), strict=True)
            )

    def _checked_state(self, state: Mapping[str, Any]) -> _SavedState:
        """The checkpoint's window, validated and converted to this memory's storage dtype."""
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{key} must be a tensor, got {type(value).__name__}")
        for key in ("labels", "modalities", "step_ids", "counters", "config"):
            t = state[key]
            if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
                raise ValueError(f"{key} must hold integers, got dtype {t.dtype}")
        if state["config"].shape != (3,) or state["counters"].shape != (3,):
            raise ValueError(
                "config and counters must have 3 entries each, got shapes "
                f"{tuple(state['config'].shape)} and {tuple(state['counters'].shape)}"
            )
        config = [int(v) for v in state["config"].tolist()]
        mine = [self.dim, self.max_steps or 0, self.max_items or 0]
        if config != mine:
            raise ValueError(
                f"config: checkpoint has (dim, max_steps, max_items)={tuple(config)}, "
                f"this memory has {tuple(mine)}"
            )
        steps_seen, materialised, capacity = (int(v) for v in state["counters"].tolist())
        if steps_seen < 0 or materialised not in (0, 1) or capacity < 0:
            raise ValueError(
                "counters must be (steps_seen >= 0, materialised 0 or 1, capacity >= 0), got "
                f"{(steps_seen, materialised, capacity)}"
            )
        feats, labels, mods = state["features"], state["labels"], state["modalities"]
        step_ids = state["step_ids"].to("cpu", torch.int64)
        if not feats.is_floating_point() or feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(
                f"features must be a floating [M, {self.dim}] tensor, got dtype {feats.dtype} "
                f"shape {tuple(feats.shape)}"
            )
        m = feats.shape[0]
        if labels.shape != (m,) or mods.shape != (m,) or step_ids.shape != (m,):
            raise ValueError(
                f"labels, modalities and step_ids must have shape [{m}] like features, got "
                f"{tuple(labels.shape)}, {tuple(mods.shape)}, {tuple(step_ids.shape)}"
            )
        if self.max_items is not None and m > self.max_items:
            raise ValueError(f"features has {m} rows, more than max_items={self.max_items}")
        if m and not materialised:
            raise ValueError(f"counters say the memory never stored a row, but it holds {m}")
        if m and (int(mods.min()) < UNKNOWN_MODALITY or int(mods.max()) >= len(Modality)):
            raise ValueError(
                f"modalities must be codes in {UNKNOWN_MODALITY}..{len(Modality) - 1}, got "
                f"values in {int(mods.min())}..{int(mods.max())}"
            )
        # Rows are grouped by step, oldest first, and only steps the window can hold appear.
        lowest = max(0, steps_seen - (self.max_steps or steps_seen))
        if m and (
            int(step_ids.min()) < lowest
            or int(step_ids.max()) >= steps_seen
            or bool((step_ids[1:] < step_ids[:-1]).any())
        ):
            raise ValueError(
                f"step_ids must be non-decreasing and lie in [{lowest}, {steps_seen}) for "
                f"steps_seen={steps_seen}"
            )
        r = self._r
        dtype = r.feats.dtype if (r.materialised or r.dtype_fixed) else feats.dtype
        device = r.feats.device if (r.materialised or r.device_fixed) else feats.device
        feats = feats.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(feats).all()):
            raise ValueError(
                f"features holds NaN or Inf values as {dtype} (the storage dtype); nothing was "
                "loaded"
            )
        return _SavedState(
            feats,
            labels.to(torch.int64),
            mods.to(torch.int64),
            step_ids,
            steps_seen,
            bool(materialised),
            capacity,
        )


class _SavedState(NamedTuple):
    """A validated checkpoint window (see :meth:`CrossBatchMemory._checked_state`)."""

    features: torch.Tensor
    labels: torch.Tensor
    modalities: torch.Tensor
    step_ids: torch.Tensor
    steps_seen: int
    materialised: bool
    capacity: int


def _modality_codes(modalities: Any) -> torch.Tensor:
    """Validated modality codes; an integer tensor is checked with one reduction, not copied."""
    if (
        isinstance(modalities, torch.Tensor)
        and modalities.ndim == 1
        and modalities.dtype not in (torch.bool, torch.uint16, torch.uint32, torch.uint64)
        and not modalities.is_floating_point()
        and not modalities.is_complex()
    ):
        if modalities.numel():
            lo, hi = torch.aminmax(modalities)
            if int(lo) < 0 or int(hi) >= len(Modality):
                return as_modality_tensor(modalities, name="modalities")  # raises, naming the code
        return modalities
    return as_modality_tensor(modalities, name="modalities")


def _zeros_and_ones(keep: object) -> bool:
    """Whether ``keep`` is a non-empty collection of plain integers that are all 0 or 1 (bools and
    :class:`Modality` members are not plain integers; a single integer is a modality)."""
    if isinstance(keep, torch.Tensor):
        if keep.ndim != 1 or keep.numel() == 0 or keep.dtype == torch.bool:
            return False
        if keep.is_floating_point() or keep.is_complex():
            return False
        return bool(((keep == 0) | (keep == 1)).all())
    if isinstance(keep, np.ndarray):
        return (
            keep.ndim == 1
            and keep.size > 0
            and keep.dtype.kind in "iu"
            and bool(np.isin(keep, (0, 1)).all())
        )
    if not isinstance(keep, (list, tuple, set, frozenset)) or not keep:
        return False
    return all(
        isinstance(k, (int, np.integer))
        and not isinstance(k, (bool, np.bool_, Modality))
        and int(k) in (0, 1)
        for k in keep
    )


def _select_into(src: torch.Tensor, idx: torch.Tensor, dst: torch.Tensor) -> None:
    """``dst.copy_(src[idx])`` without a temporary when dtypes and devices agree."""
    if src.dtype == dst.dtype and src.device == dst.device:
        torch.index_select(src, 0, idx.to(src.device), out=dst)
    else:
        dst.copy_(src.index_select(0, idx.to(src.device)))
