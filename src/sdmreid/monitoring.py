"""Training-health instruments: the pair-coverage meter and the health rules as code.

:class:`PairCoverageMeter` tracks how many SDM rows had a same-identity item on the other side.
Its value is a *ratio of sums* over the last ``window`` updates::

    value = 1 - sum(rows_without_positive) / sum(rows)

It is ``nan`` until the first update (and while the window holds no rows at all): ``1.0`` would
claim perfect coverage before anything was seen. Updates take Python ints or 0-dim integer
tensors (the ``rows`` / ``rows_without_positive`` of an SDM loss result or a sampler's coverage
report, via :meth:`PairCoverageMeter.update_from`). Counts given as tensors stay on their device —
the ring buffer lives on the device of the first tensor update (or the ``device`` argument) —
and nothing waits for the device until the value is read (:attr:`~PairCoverageMeter.value`,
:meth:`~PairCoverageMeter.compute`, :meth:`~PairCoverageMeter.log_line`, ``state_dict``).
Invalid counts (negative, or more rows without a positive than rows) raise ``ValueError``
at the update for ints and CPU tensors; for accelerator tensors the check is folded into a flag
on the device and raised at the next read, so a bad count is never silently averaged in.

:meth:`PairCoverageMeter.sync` sums the window's counts over all ranks of
:mod:`torch.distributed` (a collective: call it on every rank); until the next update every rank
then reports the global coverage, which equals one meter with a ``world_size``-times longer
window fed the ranks' updates interleaved step by step.

:class:`HealthMonitor` encodes the training rules of the original recipe. Each rule is a
:class:`Rule` in :data:`RULES` (data) checked by the monitor (code); a rule that fires yields a
typed, frozen :class:`Finding` instead of only printing:

============================= ======== ===================================================
rule id                       severity trigger (defaults) → action
============================= ======== ===================================================
``ce_near_chance``            critical SDM on and epoch CE ≥ 90 % of ln(num_classes),
                                       having been lower before or not falling
                                       → ``rollback_sdm`` (one scheduler stage lower)
``ce_not_recovering``         warning  SDM on, CE > 2.5 for 3 epochs and not lower than
                                       2 epochs ago → ``watch``
``coverage_floor``            critical pair coverage < 0.70 at every reading over a whole window
                                       (100 steps) → ``reduce_pk_or_raise_fallback``
``coverage_below_target``     warning  pair coverage < 0.85 over a whole window → ``watch``
``overfitting``               warning  train−val score gap grew at each of the last 3 scored
                                       epochs (epochs given both scores; others are skipped),
                                       by ≥ 0.02 in total → ``regularize`` (label smoothing 0.15,
                                       head LR 1e-3, weight decay 5e-4)
``head_weight_norm_growth``   warning  classifier weight norm ≥ 3× its value at the epoch's start
                                       → ``drop_head_lr`` (head LR 3e-3)
============================= ======== ===================================================

Callers pass the epoch (from 1) and the *global* step explicitly; the monitor keeps only the
recorded history it needs (epoch-level curves, the start step of a low-coverage streak, the
weight norm at the epoch's start), all of it in ``state_dict()``.

**De-duplication.** Each rule fires at most once per epoch (a persistent condition fires again in
the next epoch). At one step reading, ``coverage_below_target`` is not reported once
``coverage_floor`` has fired in the same epoch.
"""

from __future__ import annotations

import enum
import itertools
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import torch

from sdmreid._validation import check_int
from sdmreid.distributed import all_reduce_sum

__all__ = [
    "RULES",
    "Action",
    "Finding",
    "HealthMonitor",
    "PairCoverageMeter",
    "Rule",
    "Severity",
]


def _check_float(
    name: str, value: object, lo: float = -math.inf, hi: float = math.inf, allow_nan: bool = False
) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got bool")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}") from None
    if math.isnan(v):
        if allow_nan:
            return v
        raise ValueError(f"{name} must not be nan")
    if not (lo <= v <= hi) or math.isinf(v):
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")
    return v


# =================================================================================================
# PairCoverageMeter
# =================================================================================================

_Count = int | torch.Tensor


class PairCoverageMeter:
    """Moving pair coverage: ``1 - Σ rows_without_positive / Σ rows`` over the last updates.

    Args:
        window: Number of most recent updates averaged (``>= 1``).
        target: Coverage the recipe aims for (``[0, 1]``); see :attr:`below_target`.
        device: Device of the ring buffer. Default: the device of the first tensor update
            (CPU while only ints have been given).

    Example:
        >>> m = PairCoverageMeter(window=2)
        >>> m.log_line()
        '[dbg] pair_coverage_mavg=nan'
        >>> m.update(64, 8); m.update(64, 0); m.update(32, 16)
        >>> m.value  # last two updates: 1 - 16 / 96
        0.8333333333333334
        >>> m.log_line(), m.below_target
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
        self._target = _check_float("target", target, 0.0, 1.0)
        self._device_fixed = device is not None
        self._buf = torch.zeros(
            (self._window, 2), dtype=torch.int64, device=torch.device(device or "cpu")
        )
        self.reset()

    # -- configuration / introspection ----------------------------------------------------------
    @property
    def window(self) -> int:
        """Number of updates averaged."""
        return self._window

    @property
    def target(self) -> float:
        """Target coverage."""
        return self._target

    @property
    def device(self) -> torch.device:
        """Device of the ring buffer."""
        return self._buf.device

    @property
    def num_updates(self) -> int:
        """Updates since construction or the last :meth:`reset` (not only those in the window)."""
        return self._num_updates

    @property
    def synced(self) -> bool:
        """True when the value reflects all ranks (after :meth:`sync`, before the next update)."""
        return self._synced is not None and self._synced_at == self._num_updates

    # -- torchmetrics-style API -------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every update (the buffer's device is kept)."""
        self._buf.zero_()
        self._pos = 0
        self._filled = 0
        self._num_updates = 0
        self._invalid: torch.Tensor | None = None
        self._synced: torch.Tensor | None = None
        self._synced_at = -1

    @staticmethod
    def _as_count(name: str, x: object) -> _Count:
        if isinstance(x, torch.Tensor):
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

    @staticmethod
    def _validate(rows: int, without: int) -> None:
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        if without < 0:
            raise ValueError(f"rows_without_positive must be >= 0, got {without}")
        if without > rows:
            raise ValueError(f"rows_without_positive must be <= rows, got {without} > {rows}")

    def update(self, rows: _Count, rows_without_positive: _Count) -> None:
        """Add one step's counts.

        Args:
            rows: Number of SDM rows in the step (int or 0-dim integer tensor).
            rows_without_positive: How many of them had no positive (``<= rows``).

        Raises:
            ValueError: On a negative count or ``rows_without_positive > rows`` (for counts on an
                accelerator: at the next read of the value).
            TypeError: On a non-integer count.
        """
        r = self._as_count("rows", rows)
        w = self._as_count("rows_without_positive", rows_without_positive)
        tensors = [x for x in (r, w) if isinstance(x, torch.Tensor)]
        if tensors and not self._device_fixed:
            dev = tensors[0].device
            if dev != self._buf.device:
                self._buf = self._buf.to(dev)
                if self._invalid is not None:
                    self._invalid = self._invalid.to(dev)
            self._device_fixed = True
        slot = self._buf[self._pos]
        if isinstance(r, int) and isinstance(w, int):
            self._validate(r, w)
            slot[0] = r
            slot[1] = w
        else:
            dev = self._buf.device
            pair = torch.stack(
                [
                    x.to(device=dev, dtype=torch.int64, non_blocking=dev.type != "cpu")
                    if isinstance(x, torch.Tensor)
                    else torch.full((), x, dtype=torch.int64, device=dev)  # a fill, no copy
                    for x in (r, w)
                ]
            )
            if dev.type == "cpu":
                rv, wv = pair.tolist()
                self._validate(rv, wv)
            else:
                bad = (pair < 0).any() | (pair[1] > pair[0])
                self._invalid = bad if self._invalid is None else self._invalid | bad
            slot.copy_(pair)
        self._pos = (self._pos + 1) % self._window
        self._filled = min(self._filled + 1, self._window)
        self._num_updates += 1

    def update_from(self, result: object) -> None:
        """Add the ``rows`` / ``rows_without_positive`` of an SDM result or coverage report.

        Example:
            >>> from types import SimpleNamespace
            >>> m = PairCoverageMeter()
            >>> m.update_from(SimpleNamespace(rows=10, rows_without_positive=1))
            >>> m.value
            0.9
        """
        try:
            rows = result.rows  # type: ignore[attr-defined]
            without = result.rows_without_positive  # type: ignore[attr-defined]
        except AttributeError:
            raise TypeError(
                "result must have 'rows' and 'rows_without_positive' attributes, got "
                f"{type(result).__name__}"
            ) from None
        self.update(rows, without)

    def _local_totals(self) -> torch.Tensor:
        """[Σ rows, Σ without, invalid flag] as int64 on the buffer's device."""
        sums = self._buf.sum(dim=0)
        inv = (
            self._invalid.to(torch.int64).reshape(1)
            if self._invalid is not None
            else torch.zeros(1, dtype=torch.int64, device=self._buf.device)
        )
        return torch.cat([sums, inv])

    def _totals(self) -> torch.Tensor:
        if self._synced is not None and self._synced_at == self._num_updates:
            return self._synced
        return self._local_totals()

    def _raise_if_invalid(self, totals: torch.Tensor) -> None:
        if self._invalid is None and not self.synced:
            return
        if int(totals[2].item()) > 0:
            raise ValueError(
                "an update had a negative count or rows_without_positive > rows "
                "(tensor counts on an accelerator are checked when the value is read); "
                "call reset() to start over"
            )

    def compute(self) -> torch.Tensor:
        """The coverage as a 0-dim float64 tensor on the buffer's device (``nan`` if no rows).

        Example:
            >>> m = PairCoverageMeter()
            >>> m.compute()
            tensor(nan, dtype=torch.float64)
        """
        totals = self._totals()
        self._raise_if_invalid(totals)
        rows = totals[0].to(torch.float64)
        without = totals[1].to(torch.float64)
        nan = torch.full((), math.nan, dtype=torch.float64, device=totals.device)
        return torch.where(rows > 0, 1.0 - without / rows.clamp_min(1.0), nan)

    @property
    def value(self) -> float:
        """The coverage as a Python float (``nan`` before the first update)."""
        return float(self.compute().item())

    @property
    def below_target(self) -> bool:
        """``value < target`` (False while the value is ``nan``)."""
        return self.value < self._target

    def log_line(self) -> str:
        """``[dbg] pair_coverage_mavg=0.912`` (3 decimals; ``nan`` before the first update)."""
        return f"[dbg] pair_coverage_mavg={self.value:.3f}"

    def sync(self) -> PairCoverageMeter:
        """Sum the window's counts over all ranks; a collective, call it on every rank.

        Until the next :meth:`update` the meter reports the global coverage; the local window
        itself is left unchanged, so syncing again later never double-counts. Without
        :mod:`torch.distributed` initialised this is a no-op. Returns ``self`` for chaining.

        Example:
            >>> m = PairCoverageMeter(); m.update(10, 2)
            >>> m.sync().value
            0.8
        """
        self._synced = all_reduce_sum(self._local_totals())
        self._synced_at = self._num_updates
        return self

    # -- checkpointing ------------------------------------------------------------------------
    def _chronological(self) -> torch.Tensor:
        if self._filled < self._window:
            return self._buf[: self._filled]
        return torch.roll(self._buf, shifts=-self._pos, dims=0)

    def state_dict(self) -> dict[str, Any]:
        """The local window as plain lists, oldest update first.

        Example:
            >>> m = PairCoverageMeter(window=3); m.update(4, 1)
            >>> m.state_dict()["rows"], m.state_dict()["rows_without_positive"]
            ([4], [1])
        """
        if self._invalid is not None:
            self._raise_if_invalid(self._local_totals())
        entries = self._chronological().tolist()
        return {
            "window": self._window,
            "target": self._target,
            "rows": [int(e[0]) for e in entries],
            "rows_without_positive": [int(e[1]) for e in entries],
            "num_updates": self._num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the window from :meth:`state_dict`.

        Keeps this meter's ``window``/``target``/device; when the saved window was longer,
        only its most recent ``window`` updates are kept.

        Example:
            >>> a = PairCoverageMeter(); a.update(10, 3)
            >>> b = PairCoverageMeter(); b.load_state_dict(a.state_dict()); b.value
            0.7
        """
        try:
            rows = [int(x) for x in state["rows"]]
            without = [int(x) for x in state["rows_without_positive"]]
            num_updates = int(state["num_updates"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                "state must be a mapping from PairCoverageMeter.state_dict()"
            ) from None
        if len(rows) != len(without):
            raise ValueError("state['rows'] and state['rows_without_positive'] differ in length")
        for r, w in zip(rows, without, strict=True):
            self._validate(r, w)
        keep = min(len(rows), self._window)
        rows, without = rows[len(rows) - keep :], without[len(without) - keep :]
        self.reset()
        if keep:
            self._buf[:keep] = torch.tensor(
                [rows, without], dtype=torch.int64, device=self._buf.device
            ).T
        self._filled = keep
        self._pos = keep % self._window
        self._num_updates = max(num_updates, keep)

    def __repr__(self) -> str:
        return (
            f"PairCoverageMeter(window={self._window}, target={self._target}, "
            f"num_updates={self._num_updates}, device={self._buf.device})"
        )


# =================================================================================================
# HealthMonitor
# =================================================================================================


class Severity(str, enum.Enum):
    """How urgent a :class:`Finding` is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Action(str, enum.Enum):
    """Machine-readable suggested action of a :class:`Finding` (compares equal to its string)."""

    ROLLBACK_SDM = "rollback_sdm"
    WATCH = "watch"
    REDUCE_PK_OR_RAISE_FALLBACK = "reduce_pk_or_raise_fallback"
    REGULARIZE = "regularize"
    DROP_HEAD_LR = "drop_head_lr"


@dataclass(frozen=True)
class Rule:
    """One health rule of the recipe (data; the checks live in :class:`HealthMonitor`)."""

    id: str
    severity: Severity
    action: Action
    summary: str


#: The recipe's rules, by id.
RULES: Mapping[str, Rule] = MappingProxyType(
    {
        r.id: r
        for r in (
            Rule(
                "ce_near_chance",
                Severity.CRITICAL,
                Action.ROLLBACK_SDM,
                "CE back near chance (ln #classes) after SDM was switched on: roll the SDM "
                "weight back one stage and check that the sampler really builds pairs",
            ),
            Rule(
                "ce_not_recovering",
                Severity.WARNING,
                Action.WATCH,
                "CE above its ceiling after SDM was switched on and not falling again",
            ),
            Rule(
                "coverage_floor",
                Severity.CRITICAL,
                Action.REDUCE_PK_OR_RAISE_FALLBACK,
                "rows without a positive persistently above 30 %: reduce P/K or raise "
                "fallback_ratio",
            ),
            Rule(
                "coverage_below_target",
                Severity.WARNING,
                Action.WATCH,
                "pair coverage below its target over a whole window",
            ),
            Rule(
                "overfitting",
                Severity.WARNING,
                Action.REGULARIZE,
                "train/val gap growing: raise label smoothing, lower the head LR, add weight decay",
            ),
            Rule(
                "head_weight_norm_growth",
                Severity.WARNING,
                Action.DROP_HEAD_LR,
                "classifier weight norm grew several-fold within an epoch: lower the head LR",
            ),
        )
    }
)


@dataclass(frozen=True)
class Finding:
    """A fired health rule.

    Attributes:
        rule: Rule id (a key of :data:`RULES`).
        severity: :class:`Severity` of the rule.
        message: Human-readable explanation with the observed numbers.
        action: Suggested :class:`Action`.
        epoch: Epoch (from 1) of the observation that fired it.
        step: Global step of that observation (``None`` for epoch-level rules).
        suggested: Suggested settings as ``(name, value)`` pairs, e.g. ``(("head_lr", 3e-3),)``.

    Example:
        >>> f = Finding("ce_near_chance", Severity.CRITICAL, "CE 5.8", Action.ROLLBACK_SDM, 3)
        >>> f.action == "rollback_sdm", f.severity == "critical"
        (True, True)
    """

    rule: str
    severity: Severity
    message: str
    action: Action
    epoch: int
    step: int | None = None
    suggested: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-value form (for logs and ``state_dict``)."""
        return {
            "rule": self.rule,
            "severity": self.severity.value,
            "message": self.message,
            "action": self.action.value,
            "epoch": self.epoch,
            "step": self.step,
            "suggested": [[k, v] for k, v in self.suggested],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        return cls(
            rule=str(d["rule"]),
            severity=Severity(d["severity"]),
            message=str(d["message"]),
            action=Action(d["action"]),
            epoch=int(d["epoch"]),
            step=None if d["step"] is None else int(d["step"]),
            suggested=tuple((str(k), float(v)) for k, v in d["suggested"]),
        )

    def __str__(self) -> str:
        where = f"epoch={self.epoch}" + ("" if self.step is None else f" step={self.step}")
        return f"[health] {self.severity.value} {self.rule} {where}: {self.message}"


class SupportsRollback(Protocol):
    """Anything with ``rollback(epoch)`` (e.g. :class:`sdmreid.SDMWeightScheduler`)."""

    def rollback(self, epoch: int) -> object: ...


class HealthMonitor:
    """The recipe's health rules, checked on explicitly passed observations.

    Args:
        num_classes: Number of identity classes (chance CE is ``ln(num_classes)``).
        chance_tolerance: ``ce_near_chance`` fires when CE ≥ ``(1 - tol)·ln(num_classes)``
            (and CE was lower at an earlier epoch, or did not fall since the previous one).
        ce_ceiling: ``ce_not_recovering`` needs CE above this.
        ce_recovery_epochs: Epochs CE may take to fall again after SDM is on.
        coverage_floor: ``coverage_floor`` threshold (1 − 30 % rows without positive).
        coverage_target: ``coverage_below_target`` threshold.
        coverage_window: Steps a low coverage must persist (a whole meter window).
        gap_epochs: Consecutive scored epochs (epochs given ``train_score`` and ``val_score``)
            over which the train−val gap must grow.
        gap_min_growth: Minimum total growth of the gap over those epochs (score units).
        norm_growth: Weight-norm factor within an epoch that fires ``head_weight_norm_growth``.
        head_lr: Head LR suggested by ``head_weight_norm_growth``.
        overfit_label_smoothing: Label smoothing suggested by ``overfitting``.
        overfit_head_lr: Head LR suggested by ``overfitting``.
        overfit_weight_decay: Weight decay suggested by ``overfitting``.

    Example:
        >>> mon = HealthMonitor(num_classes=365)
        >>> mon.observe_epoch(1, train_ce=5.2, sdm_on=False)
        []
        >>> [f.rule for f in mon.observe_epoch(2, train_ce=5.8, sdm_on=True)]
        ['ce_near_chance']
        >>> mon.findings[0].action
        <Action.ROLLBACK_SDM: 'rollback_sdm'>
    """

    def __init__(
        self,
        num_classes: int,
        *,
        chance_tolerance: float = 0.10,
        ce_ceiling: float = 2.5,
        ce_recovery_epochs: int = 2,
        coverage_floor: float = 0.70,
        coverage_target: float = 0.85,
        coverage_window: int = 100,
        gap_epochs: int = 3,
        gap_min_growth: float = 0.02,
        norm_growth: float = 3.0,
        head_lr: float = 3e-3,
        overfit_label_smoothing: float = 0.15,
        overfit_head_lr: float = 1e-3,
        overfit_weight_decay: float = 5e-4,
    ) -> None:
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.chance_tolerance = _check_float("chance_tolerance", chance_tolerance, 0.0, 1.0)
        self.ce_ceiling = _check_float("ce_ceiling", ce_ceiling, 0.0)
        self.ce_recovery_epochs = check_int("ce_recovery_epochs", ce_recovery_epochs, 1)
        self.coverage_floor = _check_float("coverage_floor", coverage_floor, 0.0, 1.0)
        self.coverage_target = _check_float("coverage_target", coverage_target, 0.0, 1.0)
        if self.coverage_floor > self.coverage_target:
            raise ValueError(
                f"coverage_floor must be <= coverage_target, got {coverage_floor} > "
                f"{coverage_target}"
            )
        self.coverage_window = check_int("coverage_window", coverage_window, 1)
        self.gap_epochs = check_int("gap_epochs", gap_epochs, 1)
        self.gap_min_growth = _check_float("gap_min_growth", gap_min_growth, 0.0)
        self.norm_growth = _check_float("norm_growth", norm_growth, 1.0)
        self.head_lr = _check_float("head_lr", head_lr, 0.0)
        self.overfit_label_smoothing = _check_float(
            "overfit_label_smoothing", overfit_label_smoothing, 0.0, 1.0
        )
        self.overfit_head_lr = _check_float("overfit_head_lr", overfit_head_lr, 0.0)
        self.overfit_weight_decay = _check_float("overfit_weight_decay", overfit_weight_decay, 0.0)
        self.reset()

    @property
    def chance_ce(self) -> float:
        """``ln(num_classes)``, the CE of a uniform prediction."""
        return math.log(self.num_classes)

    def reset(self) -> None:
        """Forget all history and findings."""
        # epoch-level history
        self._epochs: list[int] = []
        self._ce: list[float] = []
        self._sdm_on: list[bool] = []
        self._gap: list[float] = []  # nan where scores were not given
        # step-level history
        self._last_step: int | None = None
        self._last_step_epoch: int | None = None
        self._floor_start: int | None = None
        self._target_start: int | None = None
        self._norm_epoch: int | None = None
        self._norm_base: float | None = None
        self._last_norm: float | None = None
        # findings
        self._fired: set[tuple[str, int]] = set()
        self._findings: list[Finding] = []

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every finding so far, in firing order."""
        return tuple(self._findings)

    def _emit(
        self,
        out: list[Finding],
        rule_id: str,
        epoch: int,
        step: int | None,
        message: str,
        suggested: tuple[tuple[str, float], ...] = (),
    ) -> None:
        key = (rule_id, epoch)
        if key in self._fired:
            return
        self._fired.add(key)
        rule = RULES[rule_id]
        f = Finding(rule_id, rule.severity, message, rule.action, epoch, step, suggested)
        self._findings.append(f)
        out.append(f)

    # -- step level -------------------------------------------------------------------------------
    def observe_step(
        self,
        epoch: int,
        step: int,
        *,
        coverage: float | torch.Tensor | None = None,
        classifier_weight_norm: float | torch.Tensor | None = None,
    ) -> list[Finding]:
        """Check the step-level rules (coverage, head weight norm) on one reading.

        Args:
            epoch: Current epoch (from 1).
            step: Global optimisation step (strictly increasing across calls and epochs).
            coverage: A pair-coverage reading (e.g. ``meter.value``); ``nan`` readings are
                skipped (they neither extend nor break a low-coverage streak).
            classifier_weight_norm: Norm of the classifier weight (e.g.
                ``head.weight.norm()``).

        Returns:
            The findings fired by this reading (also appended to :attr:`findings`).

        Example:
            >>> mon = HealthMonitor(num_classes=10, coverage_window=3)
            >>> [mon.observe_step(1, s, coverage=0.5) != [] for s in range(3)]
            [False, False, True]
        """
        e = check_int("epoch", epoch, 1)
        s = check_int("step", step, 0)
        if self._last_step is not None and s <= self._last_step:
            raise ValueError(
                f"step must be a global step, increasing across calls: got {s} after "
                f"{self._last_step}"
            )
        if self._last_step_epoch is not None and e < self._last_step_epoch:
            raise ValueError(f"epoch must not decrease: got {e} after {self._last_step_epoch}")
        cov = None if coverage is None else _check_float("coverage", coverage, 0.0, 1.0, True)
        norm = (
            None
            if classifier_weight_norm is None
            else _check_float("classifier_weight_norm", classifier_weight_norm, 0.0)
        )
        self._last_step, self._last_step_epoch = s, e
        out: list[Finding] = []
        if cov is not None and not math.isnan(cov):
            self._check_coverage(out, e, s, cov)
        if norm is not None:
            self._check_norm(out, e, s, norm)
        return out

    def _check_coverage(self, out: list[Finding], e: int, s: int, cov: float) -> None:
        w = self.coverage_window
        self._floor_start = (
            (s if self._floor_start is None else self._floor_start)
            if cov < self.coverage_floor
            else None
        )
        self._target_start = (
            (s if self._target_start is None else self._target_start)
            if cov < self.coverage_target
            else None
        )
        if self._floor_start is not None and s - self._floor_start + 1 >= w:
            self._emit(
                out,
                "coverage_floor",
                e,
                s,
                f"pair coverage {cov:.3f} < {self.coverage_floor:.2f} since step "
                f"{self._floor_start} ({s - self._floor_start + 1} steps): rows without a "
                "positive persistently > "
                f"{100 * (1 - self.coverage_floor):.0f} %; reduce P/K or raise fallback_ratio",
            )
        if ("coverage_floor", e) in self._fired:
            return
        if self._target_start is not None and s - self._target_start + 1 >= w:
            self._emit(
                out,
                "coverage_below_target",
                e,
                s,
                f"pair coverage {cov:.3f} < target {self.coverage_target:.2f} since step "
                f"{self._target_start}; check that the sampler builds cross-modal pairs",
            )

    def _check_norm(self, out: list[Finding], e: int, s: int, norm: float) -> None:
        if self._norm_epoch != e:
            self._norm_epoch = e
            self._norm_base = self._last_norm if self._last_norm is not None else norm
        self._last_norm = norm
        base = self._norm_base
        if base is not None and base > 0 and norm >= self.norm_growth * base:
            self._emit(
                out,
                "head_weight_norm_growth",
                e,
                s,
                f"classifier weight norm {base:.3g} -> {norm:.3g} (x{norm / base:.1f}) within "
                f"epoch {e}; lower the head LR to {self.head_lr:g}",
                (("head_lr", self.head_lr),),
            )

    # -- epoch level ------------------------------------------------------------------------------
    def observe_epoch(
        self,
        epoch: int,
        *,
        train_ce: float | torch.Tensor,
        sdm_on: bool,
        train_score: float | None = None,
        val_score: float | None = None,
        scheduler: SupportsRollback | None = None,
    ) -> list[Finding]:
        """Check the epoch-level rules (CE curve, overfitting) at the end of an epoch.

        Args:
            epoch: The epoch just finished (from 1; strictly increasing across calls).
            train_ce: The epoch's mean identity cross-entropy (finite, ``>= 0``).
            sdm_on: Whether SDM was on in this epoch (``scheduler.use_sdm(epoch)``).
            train_score: Optional train metric, higher is better (e.g. top-1 in ``[0, 1]``).
            val_score: Optional validation metric on the same scale (give both or neither).
            scheduler: If given, a ``ce_near_chance`` finding is applied at once with
                ``scheduler.rollback(epoch)`` (the stage in force at ``epoch`` drops by one for
                ``epoch`` and every later epoch).

        Returns:
            The findings fired at this epoch (also appended to :attr:`findings`).
        """
        e = check_int("epoch", epoch, 1)
        if self._epochs and e <= self._epochs[-1]:
            raise ValueError(f"epoch must increase across calls: got {e} after {self._epochs[-1]}")
        ce = _check_float("train_ce", train_ce, 0.0)
        if not isinstance(sdm_on, bool):
            raise TypeError(f"sdm_on must be a bool, got {type(sdm_on).__name__}")
        if (train_score is None) != (val_score is None):
            raise ValueError("give both train_score and val_score, or neither")
        gap = math.nan
        if train_score is not None and val_score is not None:
            gap = _check_float("train_score", train_score) - _check_float("val_score", val_score)
        self._epochs.append(e)
        self._ce.append(ce)
        self._sdm_on.append(sdm_on)
        self._gap.append(gap)
        out: list[Finding] = []

        # 1. CE back near chance with SDM on: it came back (an earlier epoch was below the
        # limit) or it is not falling there. A CE that is still leaving chance when a short
        # warm-up ends is not a collapse (``ce_not_recovering`` watches one that stays high).
        limit = (1.0 - self.chance_tolerance) * self.chance_ce
        earlier = self._ce[:-1]
        came_back = any(c < limit for c in earlier)
        not_falling = not earlier or ce >= earlier[-1]
        if sdm_on and ce >= limit and (came_back or not_falling):
            self._emit(
                out,
                "ce_near_chance",
                e,
                None,
                f"CE {ce:.3f} is within {100 * self.chance_tolerance:.0f} % of chance "
                f"ln({self.num_classes})={self.chance_ce:.3f} with SDM on; roll the SDM weight "
                "back one stage and check that the sampler really builds pairs",
            )
            if scheduler is not None and out and out[-1].rule == "ce_near_chance":
                scheduler.rollback(e)

        # 2. CE above the ceiling after SDM on and not falling again
        n = self.ce_recovery_epochs
        if len(self._ce) >= n + 1:
            ces, ons = self._ce[-(n + 1) :], self._sdm_on[-(n + 1) :]
            if all(ons) and min(ces) > self.ce_ceiling and ces[-1] >= ces[0]:
                self._emit(
                    out,
                    "ce_not_recovering",
                    e,
                    None,
                    f"CE stayed above {self.ce_ceiling:g} for {n + 1} epochs with SDM on and "
                    f"did not fall ({ces[0]:.3f} at epoch {self._epochs[-(n + 1)]} -> "
                    f"{ces[-1]:.3f})",
                )

        # 4. growing train/val gap
        # (over the scored epochs: a trainer that validates every N epochs scores every Nth)
        p = self.gap_epochs
        scored = [g for g in self._gap if not math.isnan(g)]
        if not math.isnan(gap) and len(scored) >= p + 1:
            gaps = scored[-(p + 1) :]
            rising = all(b > a for a, b in itertools.pairwise(gaps))
            if rising and gaps[-1] - gaps[0] >= self.gap_min_growth:
                self._emit(
                    out,
                    "overfitting",
                    e,
                    None,
                    f"train-val gap grew over {p} scored epochs ({gaps[0]:.3f} -> {gaps[-1]:.3f}); "
                    f"raise label smoothing to {self.overfit_label_smoothing:g}, lower the "
                    f"head LR to {self.overfit_head_lr:g}, add weight decay "
                    f"{self.overfit_weight_decay:g}",
                    (
                        ("label_smoothing", self.overfit_label_smoothing),
                        ("head_lr", self.overfit_head_lr),
                        ("weight_decay", self.overfit_weight_decay),
                    ),
                )
        return out

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Recorded history and findings as plain Python values."""
        return {
            "epochs": list(self._epochs),
            "ce": list(self._ce),
            "sdm_on": list(self._sdm_on),
            "gap": list(self._gap),
            "last_step": self._last_step,
            "last_step_epoch": self._last_step_epoch,
            "floor_start": self._floor_start,
            "target_start": self._target_start,
            "norm_epoch": self._norm_epoch,
            "norm_base": self._norm_base,
            "last_norm": self._last_norm,
            "fired": sorted([r, e] for r, e in self._fired),
            "findings": [f.to_dict() for f in self._findings],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (thresholds stay as constructed)."""

        def opt_int(x: object) -> int | None:
            return None if x is None else int(x)  # type: ignore[call-overload]

        def opt_float(x: object) -> float | None:
            return None if x is None else float(x)  # type: ignore[arg-type]

        try:
            epochs = [int(x) for x in state["epochs"]]
            ce = [float(x) for x in state["ce"]]
            sdm_on = [bool(x) for x in state["sdm_on"]]
            gap = [float(x) for x in state["gap"]]
            if not len(epochs) == len(ce) == len(sdm_on) == len(gap):
                raise ValueError("history lists differ in length")
            findings = [Finding.from_dict(d) for d in state["findings"]]
            fired = {(str(r), int(e)) for r, e in state["fired"]}
            step_state = (
                opt_int(state["last_step"]),
                opt_int(state["last_step_epoch"]),
                opt_int(state["floor_start"]),
                opt_int(state["target_start"]),
                opt_int(state["norm_epoch"]),
                opt_float(state["norm_base"]),
                opt_float(state["last_norm"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"state must come from HealthMonitor.state_dict(): {exc}") from None
        self.reset()
        self._epochs, self._ce, self._sdm_on, self._gap = epochs, ce, sdm_on, gap
        self._findings, self._fired = findings, fired
        (
            self._last_step,
            self._last_step_epoch,
            self._floor_start,
            self._target_start,
            self._norm_epoch,
            self._norm_base,
            self._last_norm,
        ) = step_state
