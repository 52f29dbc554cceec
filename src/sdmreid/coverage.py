"""Pair coverage: the share of SDM rows that had a same-identity item on the other side.

:class:`PairCoverageMeter` is a moving *ratio of sums* over the last ``window`` updates::

    coverage = 1 - sum(rows_without_positive) / sum(rows)

so a step with many rows weighs more than a step with few. It is ``nan`` until the first update
(and while the window holds no rows at all): ``1.0`` would claim perfect coverage before anything
was seen.

Per query modality
    A per-modality SDM result (anything with ``rows``, ``rows_without_positive`` and
    ``per_modality``, a mapping from each query :class:`~sdmreid.Modality` to a result with
    ``query_rows`` and ``query_rows_without_positive``) is **one** update: the window counts
    steps, not SDM calls. Its aggregate counts feed :meth:`~PairCoverageMeter.compute` and the
    ``[dbg] pair_coverage_mavg=…`` line as before; each query modality's counts feed its own ratio
    of sums over the same window, ``1 - Σ query_rows_without_positive / Σ query_rows``, read by
    :meth:`~PairCoverageMeter.compute_per_modality` (a dict keyed by modality name) and
    :meth:`~PairCoverageMeter.per_modality_log_line`
    (``[dbg] pair_coverage_mavg_by_modality NIR=0.950 SKETCH=0.900 ...``).

    A modality is reported once it has been a query modality of an update since the last
    :meth:`~PairCoverageMeter.reset`; while the window holds none of its query rows its value is
    ``nan`` ("no data"), never ``0``. An update with a plain result (no ``per_modality``) or by
    keyword counts in the aggregate only: its step adds no query rows to any modality.

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
    ``compute(gather=True)`` (and ``below_target`` / ``log_line`` / ``compute_per_modality`` /
    ``per_modality_log_line`` with ``gather=True``) sums the window's counts over all ranks of
    :mod:`torch.distributed` for that reading, without changing the meter: it equals one meter
    with a ``world_size``-times longer window fed the ranks' updates interleaved step by step (a
    modality seen on any rank is reported). It is a collective: call it on every rank. Without an
    initialised process group it reads the local window.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from sdmreid._validation import check_bool, check_has_data, check_int
from sdmreid.distributed import all_reduce_sum
from sdmreid.modality import Modality, parse_modality

__all__ = [
    "Count",
    "PairCoverageMeter",
    "SupportsCounts",
    "SupportsPerModalityCounts",
    "SupportsQueryCounts",
]

_STATE_KEYS = ("rows", "rows_without_positive", "num_updates")
# Per-modality windows, added after the first checkpoints: a state without them loads as empty.
_MODALITY_KEYS = ("modality_rows", "modality_rows_without_positive")
_NUM_MODALITIES = len(Modality)

#: A count: a Python int or a 0-dim integer tensor on any device.
Count = int | torch.Tensor


class SupportsCounts(Protocol):
    """Anything with ``rows`` and ``rows_without_positive`` (an SDM result, a coverage report)."""

    @property
    def rows(self) -> Count: ...

    @property
    def rows_without_positive(self) -> Count: ...


class SupportsQueryCounts(Protocol):
    """Anything with ``query_rows`` and ``query_rows_without_positive`` (an SDM result)."""

    @property
    def query_rows(self) -> Count: ...

    @property
    def query_rows_without_positive(self) -> Count: ...


class SupportsPerModalityCounts(SupportsCounts, Protocol):
    """A per-modality SDM result: aggregate counts and one result per query modality.

    ``rows`` / ``rows_without_positive`` count each row once over the whole step;
    ``per_modality`` maps each query :class:`~sdmreid.Modality` of the step to its own result.
    """

    @property
    def per_modality(self) -> Mapping[Modality, SupportsQueryCounts]: ...


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


def _check_counts(
    rows: int, without: int, rows_name: str = "rows", without_name: str = "rows_without_positive"
) -> None:
    if rows < 0:
        raise ValueError(f"{rows_name} must be >= 0, got {rows}")
    if without < 0:
        raise ValueError(f"{without_name} must be >= 0, got {without}")
    if without > rows:
        raise ValueError(f"{without_name} must be <= {rows_name}, got {without} > {rows}")


def _query_names(code: int) -> tuple[str, str]:
    entry = f"result.per_modality[{Modality(code).name}]"
    return f"{entry}.query_rows", f"{entry}.query_rows_without_positive"


def _per_modality_counts(per_modality: object) -> dict[int, tuple[Count, Count]]:
    """``{modality code: (query_rows, query_rows_without_positive)}`` of a result's mapping."""
    if not isinstance(per_modality, Mapping):
        raise TypeError(
            "result.per_modality must be a mapping from a query Modality to a result with "
            f"'query_rows' and 'query_rows_without_positive', got {type(per_modality).__name__}"
        )
    out: dict[int, tuple[Count, Count]] = {}
    for key, entry in per_modality.items():
        code = int(parse_modality(key))
        if code in out:
            raise ValueError(f"result.per_modality names {Modality(code).name} twice")
        rows_name, without_name = _query_names(code)
        try:
            rows, without = entry.query_rows, entry.query_rows_without_positive
        except AttributeError:
            raise TypeError(
                f"result.per_modality[{Modality(code).name}] must have 'query_rows' and "
                f"'query_rows_without_positive' attributes, got {type(entry).__name__}"
            ) from None
        out[code] = (_as_count(rows_name, rows), _as_count(without_name, without))
    return out


def _ratio(rows: int, without: int) -> float:
    return math.nan if rows == 0 else 1.0 - without / rows


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

        A per-modality result is one update; each query modality gets its own ratio:

        >>> from types import SimpleNamespace as Result
        >>> from sdmreid import Modality
        >>> step = Result(rows=20, rows_without_positive=3, per_modality={
        ...     Modality.NIR: Result(query_rows=6, query_rows_without_positive=0),
        ...     Modality.TEXT: Result(query_rows=4, query_rows_without_positive=2)})
        >>> m = PairCoverageMeter()
        >>> m.update(step)
        >>> m.num_updates, m.compute_per_modality()
        (1, {'NIR': 1.0, 'TEXT': 0.5})
        >>> m.log_line()
        '[dbg] pair_coverage_mavg=0.850'
        >>> m.per_modality_log_line()
        '[dbg] pair_coverage_mavg_by_modality NIR=1.000 TEXT=0.500'
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
        dev = torch.device(device or "cpu")
        # One row per update, [rows, rows_without_positive], written round-robin at _pos.
        self._buf = torch.zeros((self._window, 2), dtype=torch.int64, device=dev)
        # The same updates per query modality (indexed by Modality code):
        # [query_rows, query_rows_without_positive], zeros for a modality absent from the step.
        self._mbuf = torch.zeros((self._window, _NUM_MODALITIES, 2), dtype=torch.int64, device=dev)
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

    @property
    def query_modalities(self) -> tuple[Modality, ...]:
        """Query modalities of the updates since the last :meth:`reset` (the reported ones)."""
        return tuple(Modality(c) for c in sorted(self._seen))

    def reset(self) -> None:
        """Forget every update (the window's device is kept)."""
        self._buf.zero_()
        self._mbuf.zero_()
        self._seen: set[int] = set()
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
                sampler's coverage report). If it also has a ``per_modality`` mapping (a
                per-modality SDM result), each query modality's ``query_rows`` and
                ``query_rows_without_positive`` feed that modality's window; the whole result
                is still one update.
            rows: Number of SDM rows in the step (int or 0-dim integer tensor).
            rows_without_positive: How many of them had no positive (``<= rows``).

        Raises:
            TypeError: Neither or both of ``result`` and the keywords, a ``result`` without the
                two attributes, a ``per_modality`` that is not a mapping or holds an entry
                without the two query counts, or a count that is not an integer.
            ValueError: A negative count or ``rows_without_positive > rows`` (also per
                modality; for counts on an accelerator: at the next read), an unknown modality,
                or a modality named twice. A refused update changes nothing.

        Example:
            >>> from types import SimpleNamespace
            >>> m = PairCoverageMeter()
            >>> m.update(SimpleNamespace(rows=10, rows_without_positive=1))
            >>> float(m.compute())
            0.9
        """
        per_modality: dict[int, tuple[Count, Count]] = {}
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
            mapping = getattr(result, "per_modality", None)
            if mapping is not None:
                per_modality = _per_modality_counts(mapping)
        elif rows is None and rows_without_positive is None:
            raise TypeError("update needs a result, or rows= and rows_without_positive=")
        elif rows is None or rows_without_positive is None:
            missing = "rows" if rows is None else "rows_without_positive"
            raise TypeError(f"update got one count by keyword; give {missing}= too")
        self._add(
            _as_count("rows", rows),
            _as_count("rows_without_positive", rows_without_positive),
            per_modality,
        )

    def _add(self, r: Count, w: Count, per_modality: Mapping[int, tuple[Count, Count]]) -> None:
        # Everything is checked before anything is written: a refused update changes nothing.
        counts = [r, w, *(x for pair in per_modality.values() for x in pair)]
        if all(isinstance(x, int) for x in counts):
            _check_counts(int(r), int(w))
            for code, (qr, qw) in per_modality.items():
                _check_counts(int(qr), int(qw), *_query_names(code))
            if self._buf.device.type == "cpu":  # one write per window, not one per count
                table = [[0, 0] for _ in range(_NUM_MODALITIES)]
                for code, (qr, qw) in per_modality.items():
                    table[code] = [int(qr), int(qw)]
                self._buf[self._pos] = torch.tensor([int(r), int(w)], dtype=torch.int64)
                self._mbuf[self._pos] = torch.tensor(table, dtype=torch.int64)
            else:
                slot, mslot = self._buf[self._pos], self._mbuf[self._pos]
                slot[0], slot[1] = r, w  # on an accelerator: fills, no host-to-device copy
                mslot.zero_()
                for code, (qr, qw) in per_modality.items():
                    mslot[code, 0], mslot[code, 1] = qr, qw
        else:
            # The window follows the first tensor count (moved once per meter).
            dev = self._buf.device
            if not self._device_fixed:
                dev = next(x.device for x in counts if isinstance(x, torch.Tensor))

            def on_dev(x: Count) -> torch.Tensor:
                if isinstance(x, torch.Tensor):
                    return x.to(device=dev, dtype=torch.int64, non_blocking=dev.type != "cpu")
                return torch.full((), x, dtype=torch.int64, device=dev)

            pair = torch.stack([on_dev(r), on_dev(w)])
            zero = torch.zeros((), dtype=torch.int64, device=dev)
            mat = torch.stack(
                [
                    torch.stack([on_dev(c[0]), on_dev(c[1])]) if c is not None else zero.expand(2)
                    for c in (per_modality.get(code) for code in range(_NUM_MODALITIES))
                ]
            )
            if dev.type == "cpu":  # no device to wait for
                _check_counts(*pair.tolist())
                for code, (qr, qw) in zip(range(_NUM_MODALITIES), mat.tolist(), strict=True):
                    _check_counts(qr, qw, *_query_names(code))
            if dev != self._buf.device:
                self._buf, self._mbuf = self._buf.to(dev), self._mbuf.to(dev)
                if self._invalid is not None:
                    self._invalid = self._invalid.to(dev)
            self._device_fixed = True
            if dev.type != "cpu":
                bad = (
                    (pair < 0).any()
                    | (pair[1] > pair[0])
                    | (mat < 0).any()
                    | (mat[:, 1] > mat[:, 0]).any()
                )
                self._invalid = bad if self._invalid is None else self._invalid | bad
            self._buf[self._pos].copy_(pair)
            self._mbuf[self._pos].copy_(mat)
        self._seen.update(per_modality)
        self._pos = (self._pos + 1) % self._window
        self._filled = min(self._filled + 1, self._window)
        self._num_updates += 1

    def _flag(self) -> torch.Tensor:
        if self._invalid is not None:
            return self._invalid.to(torch.int64).reshape(1)
        return torch.zeros(1, dtype=torch.int64, device=self._buf.device)

    @staticmethod
    def _raise_invalid() -> None:
        raise ValueError(
            "an update had a negative count or rows_without_positive > rows "
            "(counts on an accelerator are checked when the meter is read); "
            "call reset() to start over"
        )

    def _totals(self, gather: bool) -> torch.Tensor:
        """``[Σ rows, Σ rows_without_positive, invalid]`` as int64, checked for validity."""
        check_bool("gather", gather)
        totals = torch.cat([self._buf.sum(dim=0), self._flag()])
        if gather:
            totals = all_reduce_sum(totals)  # every rank sees every rank's flag: all raise
        if (gather or self._invalid is not None) and int(totals[2]) > 0:
            self._raise_invalid()
        return totals

    def _modality_totals(self, gather: bool) -> dict[int, tuple[int, int]]:
        """``{code: (Σ query_rows, Σ without)}`` of the reported modalities, in one host read."""
        check_bool("gather", gather)
        seen = torch.zeros(_NUM_MODALITIES, dtype=torch.int64, device=self._buf.device)
        if self._seen:
            seen[sorted(self._seen)] = 1
        totals = torch.cat([self._flag(), self._mbuf.sum(dim=0).flatten(), seen])
        if gather:
            totals = all_reduce_sum(totals)  # the union of the ranks' modalities, and flags
        values = totals.tolist()
        if values[0] > 0:
            self._raise_invalid()
        sums, flags = values[1 : 1 + 2 * _NUM_MODALITIES], values[1 + 2 * _NUM_MODALITIES :]
        return {c: (sums[2 * c], sums[2 * c + 1]) for c in range(_NUM_MODALITIES) if flags[c]}

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

    def compute_per_modality(self, *, gather: bool = False) -> dict[str, float]:
        """Coverage per query modality, ``{name: 1 - Σ without / Σ query_rows}``, in one read.

        Keys are the :class:`~sdmreid.Modality` names of :attr:`query_modalities` (under
        ``gather``, of any rank), in code order; a value is ``nan`` while the window holds none of
        that modality's query rows. Empty before the first per-modality update.

        Args:
            gather: Sum the windows of all ranks for this reading (a collective, as in
                :meth:`compute`). A bool.

        Raises:
            ValueError: An accelerator update since the last :meth:`reset` had invalid counts.
            TypeError: ``gather`` is not a bool.

        Example:
            >>> from types import SimpleNamespace as Result
            >>> m = PairCoverageMeter(window=2)
            >>> for nir, sketch in [((8, 2), (4, 4)), ((8, 0), None)]:
            ...     per = {"nir": Result(query_rows=nir[0], query_rows_without_positive=nir[1])}
            ...     if sketch:
            ...         per["sketch"] = Result(query_rows=4, query_rows_without_positive=4)
            ...     m.update(Result(rows=20, rows_without_positive=6, per_modality=per))
            >>> m.compute_per_modality()  # NIR: 1 - 2/16; SKETCH: 1 - 4/4
            {'NIR': 0.875, 'SKETCH': 0.0}
        """
        totals = self._modality_totals(gather)
        return {Modality(c).name: _ratio(r, w) for c, (r, w) in totals.items()}

    def per_modality_log_line(self, *, gather: bool = False) -> str:
        """``[dbg] pair_coverage_mavg_by_modality NIR=0.950 SKETCH=0.900`` (3 decimals).

        One ``NAME=value`` per reported modality, as in :meth:`compute_per_modality` (``nan``
        while the window holds none of its rows); just the prefix before any per-modality update.
        ``gather`` as in :meth:`compute`.
        """
        values = self.compute_per_modality(gather=gather)
        return " ".join(
            ["[dbg] pair_coverage_mavg_by_modality", *(f"{k}={v:.3f}" for k, v in values.items())]
        )

    def _entries(self, buf: torch.Tensor) -> list[Any]:
        """The window's updates of ``buf``, oldest first, as nested lists."""
        if self._filled < self._window:
            return buf[: self._filled].tolist()
        return torch.roll(buf, shifts=-self._pos, dims=0).tolist()

    def state_dict(self) -> dict[str, Any]:
        """The local window as plain lists, oldest update first.

        Per query modality (``modality_rows``, ``modality_rows_without_positive``): a list per
        reported modality name, aligned with ``rows``.

        Example:
            >>> m = PairCoverageMeter(window=3)
            >>> m.update(rows=4, rows_without_positive=1)
            >>> m.state_dict()["rows"], m.state_dict()["rows_without_positive"]
            ([4], [1])
        """
        self._totals(gather=False)  # refuses to save invalid device counts
        entries = self._entries(self._buf)
        per = self._entries(self._mbuf)
        names = {c: Modality(c).name for c in sorted(self._seen)}
        return {
            "window": self._window,
            "target": self._target,
            "rows": [int(e[0]) for e in entries],
            "rows_without_positive": [int(e[1]) for e in entries],
            "num_updates": self._num_updates,
            "modality_rows": {n: [int(e[c][0]) for e in per] for c, n in names.items()},
            "modality_rows_without_positive": {
                n: [int(e[c][1]) for e in per] for c, n in names.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the window from :meth:`state_dict`; a refused state changes nothing.

        Keeps this meter's ``window``/``target``/device (the saved ones, if present, must be
        well-formed); when the saved window was longer, only its most recent ``window`` updates
        are kept. A state without the per-modality keys (saved before they existed) loads with
        no per-modality history.

        Raises:
            ValueError: ``state`` is not a valid :meth:`state_dict` (missing or unknown keys,
                lists of different lengths, counts that are not non-negative ints, more rows
                without a positive than rows, only one of the two per-modality keys, an unknown
                modality name, or a malformed ``window``/``target``).

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
            unknown = set(state) - {*_STATE_KEYS, *_MODALITY_KEYS, "window", "target"}
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
            per_modality = self._check_modality_state(state, len(rows))
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"state must be a PairCoverageMeter.state_dict() mapping: {exc}"
            ) from None
        keep = min(len(rows), self._window)
        start = len(rows) - keep
        rows, without = rows[start:], without[start:]
        self.reset()
        if keep:
            self._buf[:keep] = torch.tensor(
                [rows, without], dtype=torch.int64, device=self._buf.device
            ).T
            for code, (r_list, w_list) in per_modality.items():
                self._mbuf[:keep, code] = torch.tensor(
                    [r_list[start:], w_list[start:]], dtype=torch.int64, device=self._buf.device
                ).T
        self._seen = set(per_modality)
        self._filled = keep
        self._pos = keep % self._window
        self._num_updates = num_updates

    @staticmethod
    def _check_modality_state(
        state: Mapping[str, Any], length: int
    ) -> dict[int, tuple[list[int], list[int]]]:
        """The per-modality lists of a state, checked (empty for a state saved without them)."""
        present = [k for k in _MODALITY_KEYS if k in state]
        if not present:
            return {}
        if len(present) == 1:
            missing = next(k for k in _MODALITY_KEYS if k not in state)
            raise ValueError(f"{present[0]!r} without {missing!r}")
        rows_by, without_by = state["modality_rows"], state["modality_rows_without_positive"]
        if not isinstance(rows_by, Mapping) or not isinstance(without_by, Mapping):
            raise ValueError("per-modality counts must be mappings from modality names to lists")
        if set(rows_by) != set(without_by):
            raise ValueError(
                "'modality_rows' and 'modality_rows_without_positive' name different modalities"
            )
        out: dict[int, tuple[list[int], list[int]]] = {}
        for name in rows_by:
            if not isinstance(name, str) or name not in Modality.__members__:
                raise ValueError(
                    f"unknown modality {name!r} (expected one of {list(Modality.__members__)})"
                )
            r_list, w_list = rows_by[name], without_by[name]
            for values in (r_list, w_list):
                if not isinstance(values, (list, tuple)) or any(
                    isinstance(v, bool) or not isinstance(v, int) for v in values
                ):
                    raise ValueError("counts must be lists of ints")
                if len(values) != length:
                    raise ValueError(
                        f"{name}'s per-modality counts hold {len(values)} updates, 'rows' {length}"
                    )
            for r, w in zip(r_list, w_list, strict=True):
                _check_counts(r, w, f"{name} query_rows", f"{name} query_rows_without_positive")
            out[int(Modality[name])] = ([int(v) for v in r_list], [int(v) for v in w_list])
        return out

    def __repr__(self) -> str:
        return (
            f"PairCoverageMeter(window={self._window}, target={self._target}, "
            f"num_updates={self._num_updates}, query_modalities="
            f"{[m.name for m in self.query_modalities]}, device={self._buf.device})"
        )
