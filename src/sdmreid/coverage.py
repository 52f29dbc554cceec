"""Pair coverage: the share of SDM rows that had a same-identity item on the other side.

:class:`PairCoverageMeter` is a moving *ratio of sums* over the last ``window`` updates::

    coverage = 1 - sum(rows_without_positive) / sum(rows)

so a step with many rows weighs more than a step with few. It is ``nan`` until the first update
(and while the window holds no rows at all): ``1.0`` would claim perfect coverage before anything
was seen.

The meter follows torchmetrics' verbs. :meth:`~PairCoverageMeter.update` takes an SDM result
(anything with ``.rows`` and ``.rows_without_positive``, e.g. :class:`sdmreid.SDMResult` or a
sampler's :class:`sdmreid.CoverageReport`) or the two counts by keyword, as Python ints or 0-dim
integer tensors. :meth:`~PairCoverageMeter.compute` returns the coverage as a 0-dim tensor;
:meth:`~PairCoverageMeter.below_target` and :meth:`~PairCoverageMeter.log_line` read it on the
host; :meth:`~PairCoverageMeter.reset` forgets.

No host synchronisation on update
    Tensor counts stay on their device: the window lives on the device of the first tensor update
    (or the ``device`` argument) and ``update`` only launches device work. Invalid counts
    (negative, or more rows without a positive than rows) raise :class:`ValueError` at the update
    for ints and CPU tensors; for accelerator tensors the check is folded into a flag on the
    device and raised at the next read (``compute``, ``below_target``, ``log_line``,
    ``state_dict``), so a bad count is never silently averaged in.

Across ranks
    ``compute(gather=True)`` (and ``below_target`` / ``log_line`` with ``gather=True``) sums the
    window's counts over all ranks of :mod:`torch.distributed` for that reading, without
    changing the meter: it equals one meter with a ``world_size``-times longer window fed the
    ranks' updates interleaved step by step. It is a collective: call it on every rank. Without
    an initialised process group it reads the local window.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from sdmreid._validation import check_bool, check_has_data, check_int
from sdmreid.distributed import all_reduce_sum

__all__ = ["Count", "PairCoverageMeter", "SupportsCounts"]

_STATE_KEYS = ("rows", "rows_without_positive", "num_updates")

#: A count: a Python int or a 0-dim integer tensor on any device.
Count = int | torch.Tensor


class SupportsCounts(Protocol):
    """Anything with ``rows`` and ``rows_without_positive`` (an SDM result, a coverage report)."""

    @property
    def rows(self) -> Count: ...

    @property
    def rows_without_positive(self) -> Count: ...


def _as_count(name: str, x: object) -> Count:
    if isinstance(x, torch.Tensor):
        check_has_data(x, name)
        if x.numel() != 1 or x.dim() > 1:
            raise ValueError(f"{name} must be a 0-dim tensor, got shape {tuple(x.shape)}")
        if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
        return x.reshape(())
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an int or a 0-dim integer tensor, got bool")
    try:
        return operator.index(x)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be an int or a 0-dim integer tensor, got {type(x).__name__}"
        ) from None


def _check_counts(rows: int, without: int) -> None:
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if without < 0:
        raise ValueError(f"rows_without_positive must be >= 0, got {without}")
    if without > rows:
        raise ValueError(f"rows_without_positive must be <= rows, got {without} > {rows}")


class PairCoverageMeter:
    """Moving pair coverage: ``1 - Σ rows_without_positive / Σ rows`` over the last updates.

    Args:
        window: Number of most recent updates summed (``>= 1``).
        target: Coverage the run aims for, in ``[0, 1]``; see :meth:`below_target`.
        device: Device of the window. Default: the device of the first tensor update (CPU while
            only ints have been given).

    Raises:
        ValueError: ``window < 1`` or ``target`` outside ``[0, 1]``.
        TypeError: a non-integer ``window`` or a non-real ``target``.

    Example:
        >>> from sdmreid.coverage import PairCoverageMeter
        >>> m = PairCoverageMeter(window=2)
        >>> m.log_line()
        '[dbg] pair_coverage_mavg=nan'
        >>> m.update(rows=64, rows_without_positive=8)
        >>> m.update(rows=64, rows_without_positive=0)
        >>> m.update(rows=32, rows_without_positive=16)
        >>> m.compute()  # the last two updates: 1 - 16 / 96
        tensor(0.8333, dtype=torch.float64)
        >>> m.log_line(), m.below_target()
        ('[dbg] pair_coverage_mavg=0.833', True)
    """

    def __init__(
        self,
        window: int = 100,
        target: float = 0.85,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        self._window = check_int("window", window, 1)
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise TypeError(f"target must be a float, got {type(target).__name__}")
        if not 0.0 <= target <= 1.0:  # also refuses nan
            raise ValueError(f"target must be in [0, 1], got {target!r}")
        self._target = float(target)
        self._device_fixed = device is not None
        # One row per update, [rows, rows_without_positive], written round-robin at _pos.
        self._buf = torch.zeros(
            (self._window, 2), dtype=torch.int64, device=torch.device(device or "cpu")
        )
        self.reset()

    @property
    def window(self) -> int:
        """Number of updates summed."""
        return self._window

    @property
    def target(self) -> float:
        """Target coverage."""
        return self._target

    @property
    def device(self) -> torch.device:
        """Device of the window."""
        return self._buf.device

    @property
    def num_updates(self) -> int:
        """Updates since construction or the last :meth:`reset` (not only those in the window)."""
        return self._num_updates

    def reset(self) -> None:
        """Forget every update (the window's device is kept)."""
        self._buf.zero_()
        self._pos = 0
        self._filled = 0
        self._num_updates = 0
        # OR of every device-side validity check since the last reset; None while none ran.
        self._invalid: torch.Tensor | None = None

    def update(
        self,
        result: SupportsCounts | None = None,
        *,
        rows: Count | None = None,
        rows_without_positive: Count | None = None,
    ) -> None:
        """Add one step's counts, from a result or by keyword.

        Args:
            result: Anything with ``rows`` and ``rows_without_positive`` (an SDM result, a
                sampler's coverage report).
            rows: Number of SDM rows in the step (int or 0-dim integer tensor).
            rows_without_positive: How many of them had no positive (``<= rows``).

        Raises:
            TypeError: Neither or both of ``result`` and the keywords, a ``result`` without the
                two attributes, or a count that is not an integer.
            ValueError: A negative count or ``rows_without_positive > rows`` (for counts on an
                accelerator: at the next read). A refused update changes nothing.

        Example:
            >>> from types import SimpleNamespace
            >>> m = PairCoverageMeter()
            >>> m.update(SimpleNamespace(rows=10, rows_without_positive=1))
            >>> float(m.compute())
            0.9
        """
        if result is not None:
            if rows is not None or rows_without_positive is not None:
                raise TypeError("give either result or rows= and rows_without_positive=, not both")
            try:
                rows, rows_without_positive = result.rows, result.rows_without_positive
            except AttributeError:
                raise TypeError(
                    "result must have 'rows' and 'rows_without_positive' attributes, got "
                    f"{type(result).__name__}"
                ) from None
        elif rows is None and rows_without_positive is None:
            raise TypeError("update needs a result, or rows= and rows_without_positive=")
        elif rows is None or rows_without_positive is None:
            missing = "rows" if rows is None else "rows_without_positive"
            raise TypeError(f"update got one count by keyword; give {missing}= too")
        self._add(
            _as_count("rows", rows),
            _as_count("rows_without_positive", rows_without_positive),
        )

    def _add(self, r: Count, w: Count) -> None:
        slot = self._buf[self._pos]
        if isinstance(r, int) and isinstance(w, int):
            _check_counts(r, w)
            slot[0], slot[1] = r, w  # on an accelerator: fills, no host-to-device copy
        else:
            # The window follows the first tensor count (moved once per meter).
            dev = self._buf.device
            if not self._device_fixed:
                dev = next(x.device for x in (r, w) if isinstance(x, torch.Tensor))
            pair = torch.stack(
                [
                    x.to(device=dev, dtype=torch.int64, non_blocking=dev.type != "cpu")
                    if isinstance(x, torch.Tensor)
                    else torch.full((), x, dtype=torch.int64, device=dev)
                    for x in (r, w)
                ]
            )
            if dev.type == "cpu":
                _check_counts(*pair.tolist())  # no device to wait for
            if dev != self._buf.device:
                self._buf = self._buf.to(dev)
                if self._invalid is not None:
                    self._invalid = self._invalid.to(dev)
                slot = self._buf[self._pos]
            self._device_fixed = True
            if dev.type != "cpu":
                bad = (pair < 0).any() | (pair[1] > pair[0])
                self._invalid = bad if self._invalid is None else self._invalid | bad
            slot.copy_(pair)
        self._pos = (self._pos + 1) % self._window
        self._filled = min(self._filled + 1, self._window)
        self._num_updates += 1

    def _totals(self, gather: bool) -> torch.Tensor:
        """``[Σ rows, Σ rows_without_positive, invalid]`` as int64, checked for validity."""
        check_bool("gather", gather)
        flag = (
            self._invalid.to(torch.int64).reshape(1)
            if self._invalid is not None
            else torch.zeros(1, dtype=torch.int64, device=self._buf.device)
        )
        totals = torch.cat([self._buf.sum(dim=0), flag])
        if gather:
            totals = all_reduce_sum(totals)  # every rank sees every rank's flag: all raise
        if (gather or self._invalid is not None) and int(totals[2]) > 0:
            raise ValueError(
                "an update had a negative count or rows_without_positive > rows "
                "(counts on an accelerator are checked when the meter is read); "
                "call reset() to start over"
            )
        return totals

    def compute(self, *, gather: bool = False) -> torch.Tensor:
        """The coverage as a 0-dim float64 tensor on the window's device (``nan`` if no rows).

        Args:
            gather: Sum the windows of all ranks for this reading (a collective; the meter's
                state is unchanged). Without a process group it reads the local window. A bool.

        Raises:
            ValueError: An accelerator update since the last :meth:`reset` had invalid counts
                (under ``gather``: on any rank; every rank raises).
            TypeError: ``gather`` is not a bool.

        Example:
            >>> m = PairCoverageMeter()
            >>> m.compute()
            tensor(nan, dtype=torch.float64)
        """
        totals = self._totals(gather).to(torch.float64)
        rows, without = totals[0], totals[1]
        return torch.where(rows > 0, 1.0 - without / rows.clamp_min(1.0), math.nan)

    def below_target(self, *, gather: bool = False) -> bool:
        """Whether the coverage is below ``target`` (False while it is ``nan``; a host read).

        ``gather`` as in :meth:`compute`.
        """
        return float(self.compute(gather=gather)) < self._target

    def log_line(self, *, gather: bool = False) -> str:
        """``[dbg] pair_coverage_mavg=0.912`` (3 decimals, ``nan`` before the first update).

        ``gather`` as in :meth:`compute`.
        """
        return f"[dbg] pair_coverage_mavg={float(self.compute(gather=gather)):.3f}"

    def state_dict(self) -> dict[str, Any]:
        """The local window as plain lists, oldest update first.

        Example:
            >>> m = PairCoverageMeter(window=3)
            >>> m.update(rows=4, rows_without_positive=1)
            >>> m.state_dict()["rows"], m.state_dict()["rows_without_positive"]
            ([4], [1])
        """
        self._totals(gather=False)  # refuses to save invalid device counts
        if self._filled < self._window:
            entries = self._buf[: self._filled].tolist()
        else:
            entries = torch.roll(self._buf, shifts=-self._pos, dims=0).tolist()
        return {
            "window": self._window,
            "target": self._target,
            "rows": [int(e[0]) for e in entries],
            "rows_without_positive": [int(e[1]) for e in entries],
            "num_updates": self._num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the window from :meth:`state_dict`; a refused state changes nothing.

        Keeps this meter's ``window``/``target``/device (the saved ones, if present, must be
        well-formed); when the saved window was longer, only its most recent ``window`` updates
        are kept.

        Raises:
            ValueError: ``state`` is not a valid :meth:`state_dict` (missing or unknown keys,
                lists of different lengths, counts that are not non-negative ints, more rows
                without a positive than rows, or a malformed ``window``/``target``).

        Example:
            >>> a = PairCoverageMeter()
            >>> a.update(rows=10, rows_without_positive=3)
            >>> b = PairCoverageMeter()
            >>> b.load_state_dict(a.state_dict())
            >>> float(b.compute())
            0.7
        """

        def ints(values: object) -> list[int]:
            if not isinstance(values, (list, tuple)) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in values
            ):
                raise ValueError("counts must be lists of ints")
            return [int(v) for v in values]

        try:
            if not isinstance(state, Mapping):
                raise ValueError(f"got {type(state).__name__}, not a mapping")
            unknown = set(state) - {*_STATE_KEYS, "window", "target"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(map(str, unknown))}")
            if "window" in state:  # informational (this meter keeps its own), but well-formed
                (saved_window,) = ints([state["window"]])
                if saved_window < 1:
                    raise ValueError(f"window must be >= 1, got {saved_window}")
            if "target" in state:
                target = state["target"]
                if isinstance(target, bool) or not isinstance(target, (int, float)):
                    raise ValueError(f"target must be a float, got {target!r}")
                if not 0.0 <= target <= 1.0:
                    raise ValueError(f"target must be in [0, 1], got {target!r}")
            rows = ints(state["rows"])
            without = ints(state["rows_without_positive"])
            (num_updates,) = ints([state["num_updates"]])
            if len(rows) != len(without):
                raise ValueError("'rows' and 'rows_without_positive' differ in length")
            if num_updates < len(rows):
                raise ValueError(f"num_updates {num_updates} < {len(rows)} saved updates")
            for r, w in zip(rows, without, strict=True):
                _check_counts(r, w)
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"state must be a PairCoverageMeter.state_dict() mapping: {exc}"
            ) from None
        keep = min(len(rows), self._window)
        rows, without = rows[len(rows) - keep :], without[len(without) - keep :]
        self.reset()
        if keep:
            self._buf[:keep] = torch.tensor(
                [rows, without], dtype=torch.int64, device=self._buf.device
            ).T
        self._filled = keep
        self._pos = keep % self._window
        self._num_updates = num_updates

    def __repr__(self) -> str:
        return (
            f"PairCoverageMeter(window={self._window}, target={self._target}, "
            f"num_updates={self._num_updates}, device={self._buf.device})"
        )
