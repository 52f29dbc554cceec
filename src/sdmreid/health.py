"""Training health: the recipe's health rules as code, with advice relative to the run.

:class:`HealthMonitor` is fed explicit observations — step readings (pair coverage, classifier
weight norm, training loss) with :meth:`~HealthMonitor.update_step`, epoch summaries (CE, SDM
on/off, train and validation scores) with :meth:`~HealthMonitor.update_epoch` — and returns the
typed, frozen :class:`Finding` s of the rules they fire. :meth:`~HealthMonitor.compute` returns
every finding so far and :meth:`~HealthMonitor.reset` forgets, as for a torchmetrics metric. Each
rule is a :class:`Rule` in :data:`RULES` (data); the checks live in the monitor (code).

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
                                       epochs, by ≥ 0.02 in total → ``regularize``: raise
                                       label smoothing, lower the head LR, raise weight decay
``head_weight_norm_growth``   warning  classifier weight norm ≥ 3× its value at the epoch's
                                       start → ``drop_head_lr``
``loss_spike``                warning  step loss > median + 6·1.4826·MAD of the last 100
                                       loss readings (at least 0.15·|median| above it), or
                                       not finite → ``watch``
``frequent_loss_spikes``      critical SDM on and more than 50 % of the epoch's checked
                                       loss readings were spikes → ``rollback_sdm``
============================= ======== ===================================================

Loss spikes (the seed pipeline's rule)
    A reading is checked once ``spike_min_readings`` (20) finite readings came before it. The
    reference is the last ``spike_window`` (100) finite readings *before* it (a spike does not
    raise its own threshold); the MAD is ``median(|x - median|)``, floored at ``spike_floor``
    (0.05, so a flat loss does not make every wiggle a spike) and scaled by 1.4826 (the normal
    distribution's standard deviation per MAD), so ``spike_mads=6`` means six "standard
    deviations". The threshold is also at least ``spike_min_rise`` (15 %) of ``|median|`` above
    the median. A non-finite loss is a spike and stays out of the window. The seed counts
    spikes and, when more than half of the readings spiked, falls back to a softer SDM (a higher
    temperature); here that is ``frequent_loss_spikes``, whose ``rollback_sdm`` lowers the SDM
    stage (weight, and the logit scale with a scheduler's ``logit_scales``). It fires only with
    SDM on: a rollback during warm-up would keep SDM off.

Advice is relative to the run
    Suggested settings start from the run's own values, given as :class:`RunSettings`: weight
    decay × ``weight_decay_factor`` (2), label smoothing + ``label_smoothing_step`` (0.05), head
    LR × ``head_lr_factor`` (1/3). Weight decay for AdamW is commonly a hundred times that for
    SGD, so no fixed value suits every run. Where the run's value is unknown the advice
    names the direction without a number (and ``Finding.suggested`` leaves the setting out).

Callers pass the epoch (from 1) and the *global* step explicitly; the monitor keeps only the
history its rules need (epoch-level curves, the start step of a low-coverage streak, the weight
norm at the epoch's start, the recent loss readings and the epoch's spike count), all of it in
``state_dict()``. The readings of one :meth:`~HealthMonitor.update_step` call are read on the
host together, one transfer per device for the tensors among them. Each rule fires at most once
per epoch (a persistent condition fires again in the next epoch). At one step reading,
``coverage_below_target`` is not reported once ``coverage_floor`` has fired in the same epoch.
"""

from __future__ import annotations

import enum
import itertools
import math
import numbers
import statistics
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import torch

from sdmreid._validation import check_has_data, check_int

_T = TypeVar("_T")

# State keys of the loss-spike rule (absent from states saved before it).
_SPIKE_KEYS = ("loss_window", "spike_epoch", "spike_checked", "spike_count")

__all__ = [
    "RULES",
    "Action",
    "Finding",
    "HealthMonitor",
    "Rule",
    "RunSettings",
    "Severity",
    "SupportsRollback",
]


def _read_floats(values: Mapping[str, object]) -> dict[str, float]:
    """Each reading as a Python float; the tensors among them are read in one transfer per device.

    Types are checked first (a refused reading reads nothing from the device).
    """
    out: dict[str, float] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if isinstance(value, torch.Tensor):
            check_has_data(value, name)
            if value.numel() != 1 or value.is_complex():
                raise TypeError(f"{name} must be a float or a one-element tensor, got {value!r}")
            tensors[name] = value
        else:
            out[name] = float(value)
    by_device: dict[torch.device, list[str]] = {}
    for name, t in tensors.items():
        by_device.setdefault(t.device, []).append(name)
    for names in by_device.values():
        read = torch.stack([tensors[n].detach().reshape(()).to(torch.float64) for n in names])
        out.update(zip(names, read.tolist(), strict=True))
    return out


def _check_float(
    name: str, value: object, lo: float = -math.inf, hi: float = math.inf, allow_nan: bool = False
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (or nan when ``allow_nan``)."""
    v = _read_floats({name: value})[name]
    if math.isnan(v):
        if allow_nan:
            return v
        raise ValueError(f"{name} must not be nan")
    if not (lo <= v <= hi) or math.isinf(v):
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")
    return v


def _tidy(x: float) -> float:
    """``x`` to 12 significant digits, so ``0.1 + 0.05`` is suggested as ``0.15``."""
    return float(f"{x:.12g}")


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
                "pair coverage below its floor over a whole window (at the default floor, more "
                "than 30 % of rows without a positive): reduce P/K or raise fallback_ratio",
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
                "train/val gap growing: raise label smoothing, lower the head LR, raise weight "
                "decay (each relative to the run's own value)",
            ),
            Rule(
                "head_weight_norm_growth",
                Severity.WARNING,
                Action.DROP_HEAD_LR,
                "classifier weight norm grew several-fold within an epoch: lower the head LR",
            ),
            Rule(
                "loss_spike",
                Severity.WARNING,
                Action.WATCH,
                "a step loss far above the recent losses (median + c·MAD) or not finite",
            ),
            Rule(
                "frequent_loss_spikes",
                Severity.CRITICAL,
                Action.ROLLBACK_SDM,
                "most of an epoch's loss readings were spikes with SDM on: roll SDM back one "
                "stage (a softer SDM, as the seed's fallback temperature)",
            ),
        )
    }
)


@dataclass(frozen=True)
class RunSettings:
    """The run's own settings that health advice starts from; ``None`` where unknown.

    Attributes:
        weight_decay: The optimiser's weight decay (``>= 0``).
        label_smoothing: The identity loss's label smoothing (``[0, 1)``).
        head_lr: The classifier head's learning rate now (``> 0``).

    Raises:
        ValueError: A value out of its range, or not finite.
        TypeError: A value that is not a real number.

    Example:
        >>> from sdmreid.health import RunSettings
        >>> RunSettings(weight_decay=0.05, head_lr=3e-3)
        RunSettings(weight_decay=0.05, label_smoothing=None, head_lr=0.003)
    """

    weight_decay: float | None = None
    label_smoothing: float | None = None
    head_lr: float | None = None

    def __post_init__(self) -> None:
        for name in ("weight_decay", "label_smoothing", "head_lr"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _check_float(name, value, 0.0))
        if self.label_smoothing is not None and self.label_smoothing >= 1.0:
            raise ValueError(f"label_smoothing must be < 1, got {self.label_smoothing!r}")
        if self.head_lr == 0.0:
            raise ValueError("head_lr must be > 0, got 0.0")


@dataclass(frozen=True)
class Finding:
    """A fired health rule.

    Attributes:
        rule: Rule id (a key of :data:`RULES`).
        severity: :class:`Severity` of the rule.
        message: Human-readable explanation with the observed numbers and the advice.
        action: Suggested :class:`Action`.
        epoch: Epoch (from 1) of the observation that fired it.
        step: Global step of that observation (``None`` for epoch-level rules).
        suggested: Suggested settings as ``(name, value)`` pairs, each relative to the run's
            :class:`RunSettings` (settings the run did not give are left out).

    Example:
        >>> from sdmreid.health import Action, Finding, Severity
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


# -- checkpoint values: exactly the types state_dict writes, no coercion (int("3"), bool(1)) ----


def _state_int(x: object, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"expected an int, got {type(x).__name__} {x!r}")
    if x < lo:
        raise ValueError(f"expected an int >= {lo}, got {x}")
    return x


def _state_float(x: object, lo: float = -math.inf, *, allow_nan: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"expected a float, got {type(x).__name__} {x!r}")
    v = float(x)
    if math.isnan(v) and allow_nan:
        return v
    if not (math.isfinite(v) and v >= lo):
        raise ValueError(f"expected a finite float >= {lo}, got {v}")
    return v


def _state_bool(x: object) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"expected a bool, got {type(x).__name__} {x!r}")
    return x


def _state_str(x: object) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected a str, got {type(x).__name__} {x!r}")
    return x


def _optional(x: object, check: Callable[[object], _T]) -> _T | None:
    return None if x is None else check(x)


def _state_list(state: Mapping[str, Any], key: str, check: Callable[[object], _T]) -> list[_T]:
    values = state[key]
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{key!r} must be a list, got {type(values).__name__}")
    try:
        return [check(v) for v in values]
    except (KeyError, TypeError, ValueError) as exc:
        raise type(exc)(f"{key!r}: {exc}") from None


def _state_pair(x: object) -> tuple[object, object]:
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        raise TypeError(f"expected a pair, got {x!r}")
    return x[0], x[1]


def _state_fired(x: object) -> tuple[str, int]:
    rule, epoch = _state_pair(x)
    return _state_str(rule), _state_int(epoch, 1)


def _state_finding(d: object) -> Finding:
    if not isinstance(d, Mapping):
        raise TypeError(f"a finding must be a mapping, got {type(d).__name__}")
    keys = {"rule", "severity", "message", "action", "epoch", "step", "suggested"}
    if set(d) != keys:
        raise ValueError(f"a finding must have the keys {sorted(keys)}, got {sorted(d)}")
    suggested = d["suggested"]
    if not isinstance(suggested, (list, tuple)):
        raise TypeError(f"a finding's 'suggested' must be a list, got {suggested!r}")
    pairs = [_state_pair(p) for p in suggested]
    return Finding(
        rule=_state_str(d["rule"]),
        severity=Severity(_state_str(d["severity"])),
        message=_state_str(d["message"]),
        action=Action(_state_str(d["action"])),
        epoch=_state_int(d["epoch"], 1),
        step=_optional(d["step"], lambda x: _state_int(x, 0)),
        suggested=tuple((_state_str(k), _state_float(v)) for k, v in pairs),
    )


class HealthMonitor:
    """The recipe's health rules, checked on explicitly passed observations.

    Args:
        num_classes: Number of identity classes (chance CE is ``ln(num_classes)``).
        settings: The run's own settings, which the advice starts from (default: all unknown).
            Available afterwards as the ``settings`` attribute; assign a new one when the run
            changes a setting (e.g. at a head-LR switch).
        chance_tolerance: ``ce_near_chance`` fires when CE ≥ ``(1 - tol)·ln(num_classes)``
            (and CE was lower at an earlier epoch, or did not fall since the previous one).
        ce_ceiling: ``ce_not_recovering`` needs CE above this.
        ce_recovery_epochs: Epochs CE may take to fall again after SDM is on.
        coverage_floor: ``coverage_floor`` threshold.
        coverage_target: ``coverage_below_target`` threshold (``>= coverage_floor``).
        coverage_window: Steps a low coverage must persist (a whole meter window).
        gap_epochs: Consecutive scored epochs (epochs given ``train_score`` and ``val_score``)
            over which the train−val gap must grow.
        gap_min_growth: Minimum total growth of the gap over those epochs (score units).
        norm_growth: Weight-norm factor within an epoch that fires ``head_weight_norm_growth``.
        weight_decay_factor: ``overfitting`` suggests the run's weight decay times this (``> 1``).
        label_smoothing_step: ``overfitting`` suggests the run's label smoothing plus this
            (``> 0``; no suggestion when the sum would reach 1).
        head_lr_factor: ``overfitting`` and ``head_weight_norm_growth`` suggest the run's head
            LR times this (in ``(0, 1)``).
        spike_window: Number of recent finite loss readings a reading is compared with.
        spike_min_readings: Finite readings needed before a reading is checked (in
            ``[2, spike_window]``).
        spike_mads: ``c`` in ``median + c·1.4826·MAD`` (``> 0``): how many normal-consistent
            MADs above the median a spike is.
        spike_floor: Floor of the raw MAD (``>= 0``), so a flat loss tolerates small wiggles.
        spike_min_rise: A spike is also at least this fraction of ``|median|`` above the median
            (``>= 0``).
        spike_rate: ``frequent_loss_spikes`` fires when more than this fraction of an epoch's
            checked loss readings were spikes (in ``[0, 1)``).

    Raises:
        ValueError: A threshold or factor out of its range.
        TypeError: A value of the wrong type (``settings`` must be a :class:`RunSettings`).

    Example:
        >>> from sdmreid.health import HealthMonitor, RunSettings
        >>> mon = HealthMonitor(num_classes=365, settings=RunSettings(weight_decay=0.05))
        >>> mon.update_epoch(1, train_ce=5.2, sdm_on=False)
        []
        >>> [f.rule for f in mon.update_epoch(2, train_ce=5.8, sdm_on=True)]
        ['ce_near_chance']
        >>> mon.compute()[0].action
        <Action.ROLLBACK_SDM: 'rollback_sdm'>
    """

    def __init__(
        self,
        num_classes: int,
        *,
        settings: RunSettings | None = None,
        chance_tolerance: float = 0.10,
        ce_ceiling: float = 2.5,
        ce_recovery_epochs: int = 2,
        coverage_floor: float = 0.70,
        coverage_target: float = 0.85,
        coverage_window: int = 100,
        gap_epochs: int = 3,
        gap_min_growth: float = 0.02,
        norm_growth: float = 3.0,
        weight_decay_factor: float = 2.0,
        label_smoothing_step: float = 0.05,
        head_lr_factor: float = 1 / 3,
        spike_window: int = 100,
        spike_min_readings: int = 20,
        spike_mads: float = 6.0,
        spike_floor: float = 0.05,
        spike_min_rise: float = 0.15,
        spike_rate: float = 0.5,
    ) -> None:
        self.num_classes = check_int("num_classes", num_classes, 2)
        if settings is not None and not isinstance(settings, RunSettings):
            raise TypeError(f"settings must be a RunSettings, got {type(settings).__name__}")
        self.settings = settings if settings is not None else RunSettings()
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
        self.weight_decay_factor = _check_float("weight_decay_factor", weight_decay_factor, 1.0)
        self.label_smoothing_step = _check_float(
            "label_smoothing_step", label_smoothing_step, 0.0, 1.0
        )
        self.head_lr_factor = _check_float("head_lr_factor", head_lr_factor, 0.0, 1.0)
        # A factor of 1 or a step of 0 would advise the value the run already has.
        for name, value in (
            ("weight_decay_factor", self.weight_decay_factor),
            ("label_smoothing_step", self.label_smoothing_step),
            ("head_lr_factor", self.head_lr_factor),
        ):
            if value in (0.0, 1.0):
                raise ValueError(f"{name} must not be {value:g}: the advice would change nothing")
        self.spike_window = check_int("spike_window", spike_window, 2)
        self.spike_min_readings = check_int("spike_min_readings", spike_min_readings, 2)
        if self.spike_min_readings > self.spike_window:
            raise ValueError(
                f"spike_min_readings must be <= spike_window, got {spike_min_readings} > "
                f"{spike_window} (the rule would never check a reading)"
            )
        self.spike_mads = _check_float("spike_mads", spike_mads, 0.0)
        if self.spike_mads == 0.0:
            raise ValueError("spike_mads must be > 0, got 0.0")
        self.spike_floor = _check_float("spike_floor", spike_floor, 0.0)
        self.spike_min_rise = _check_float("spike_min_rise", spike_min_rise, 0.0)
        self.spike_rate = _check_float("spike_rate", spike_rate, 0.0, 1.0)
        if self.spike_rate == 1.0:
            raise ValueError("spike_rate must be < 1, got 1.0 (the rule could never fire)")
        self.reset()

    @property
    def chance_ce(self) -> float:
        """``ln(num_classes)``, the CE of a uniform prediction."""
        return math.log(self.num_classes)

    def reset(self) -> None:
        """Forget all history and findings (the settings and thresholds stay)."""
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
        # loss readings: the recent finite ones, and the spike count of one epoch
        self._loss_window: deque[float] = deque(maxlen=self.spike_window)
        self._spike_epoch: int | None = None
        self._spike_checked = 0
        self._spike_count = 0
        # findings
        self._fired: set[tuple[str, int]] = set()
        self._findings: list[Finding] = []

    def compute(self) -> list[Finding]:
        """Every finding since construction or the last :meth:`reset`, in firing order."""
        return list(self._findings)

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

    # -- advice -----------------------------------------------------------------------------------
    def _lower_head_lr(self) -> tuple[str, tuple[tuple[str, float], ...]]:
        lr = self.settings.head_lr
        if lr is None:
            return "lower the head LR", ()
        new = _tidy(lr * self.head_lr_factor)
        return f"lower the head LR {lr:g} -> {new:g}", (("head_lr", new),)

    def _regularize(self) -> tuple[str, tuple[tuple[str, float], ...]]:
        run = self.settings
        words: list[str] = []
        suggested: list[tuple[str, float]] = []
        ls = run.label_smoothing
        if ls is not None and ls + self.label_smoothing_step < 1.0:
            new = _tidy(ls + self.label_smoothing_step)
            words.append(f"raise label smoothing {ls:g} -> {new:g}")
            suggested.append(("label_smoothing", new))
        else:
            words.append("raise label smoothing")
        lr_words, lr_suggested = self._lower_head_lr()
        words.append(lr_words)
        suggested += lr_suggested
        wd = run.weight_decay
        if wd is None:
            words.append("raise weight decay")
        elif wd == 0.0:
            # Scaling zero gives zero; how much to add depends on the optimiser.
            words.append("add weight decay (the run has none)")
        else:
            new = _tidy(wd * self.weight_decay_factor)
            words.append(f"raise weight decay {wd:g} -> {new:g}")
            suggested.append(("weight_decay", new))
        return ", ".join(words), tuple(suggested)

    # -- step level -------------------------------------------------------------------------------
    def update_step(
        self,
        epoch: int,
        step: int,
        *,
        coverage: float | torch.Tensor | None = None,
        classifier_weight_norm: float | torch.Tensor | None = None,
        loss: float | torch.Tensor | None = None,
    ) -> list[Finding]:
        """Check the step-level rules (coverage, head weight norm, loss spikes) on one reading.

        The given readings are read on the host together: Python floats as they are, tensors in
        one transfer per device. Pass ``loss`` at every step for the spike rule to see every
        step (the window counts readings, not steps), or at the steps the trainer already reads.

        Args:
            epoch: Current epoch (from 1).
            step: Global optimisation step (strictly increasing across calls and epochs).
            coverage: A pair-coverage reading (e.g. ``meter.compute()``); ``nan`` readings are
                skipped (they neither extend nor break a low-coverage streak).
            classifier_weight_norm: Norm of the classifier weight (e.g.
                ``head.weight.norm()``).
            loss: The step's training loss (e.g. ``loss.detach()``); a non-finite loss is a
                spike.

        Returns:
            The findings this reading fired (:meth:`compute` returns all of them).

        Example:
            >>> mon = HealthMonitor(num_classes=10, coverage_window=3)
            >>> [mon.update_step(1, s, coverage=0.5) != [] for s in range(3)]
            [False, False, True]
            >>> mon = HealthMonitor(num_classes=10, spike_min_readings=5)
            >>> [mon.update_step(1, s, loss=2.0 - 0.01 * s) for s in range(5)]
            [[], [], [], [], []]
            >>> [f.rule for f in mon.update_step(1, 5, loss=4.0)]
            ['loss_spike']
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
        given = {
            name: value
            for name, value in (
                ("coverage", coverage),
                ("classifier_weight_norm", classifier_weight_norm),
                ("loss", loss),
            )
            if value is not None
        }
        read = _read_floats(given)
        cov = (
            None
            if coverage is None
            else _check_float("coverage", read["coverage"], 0.0, 1.0, allow_nan=True)
        )
        norm = (
            None
            if classifier_weight_norm is None
            else _check_float("classifier_weight_norm", read["classifier_weight_norm"], 0.0)
        )
        self._last_step, self._last_step_epoch = s, e
        out: list[Finding] = []
        if cov is not None and not math.isnan(cov):
            self._check_coverage(out, e, s, cov)
        if norm is not None:
            self._check_norm(out, e, s, norm)
        if loss is not None:
            self._check_loss(out, e, s, read["loss"])
        return out

    def _check_coverage(self, out: list[Finding], e: int, s: int, cov: float) -> None:
        # A low reading now and then is sampling noise; coverage below the floor for a whole
        # window means the sampler cannot build pairs for this P/K. Streaks are measured in
        # global steps, so sparse readings (every 100 steps) still span a window.
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
        # The floor finding already says coverage is low; a second, milder one adds nothing.
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
        # A classifier whose weight norm multiplies within one epoch is driven by too large a
        # head LR: its logits saturate and CE stops carrying information. The base is the norm
        # at the epoch's start (the previous epoch's last reading), so slow growth over many
        # epochs is not mistaken for it.
        if self._norm_epoch != e:
            self._norm_epoch = e
            self._norm_base = self._last_norm if self._last_norm is not None else norm
        self._last_norm = norm
        base = self._norm_base
        if base is not None and base > 0 and norm >= self.norm_growth * base:
            advice, suggested = self._lower_head_lr()
            self._emit(
                out,
                "head_weight_norm_growth",
                e,
                s,
                f"classifier weight norm {base:.3g} -> {norm:.3g} (x{norm / base:.1f}) within "
                f"epoch {e}; {advice}",
                suggested,
            )

    def spike_threshold(self) -> float:
        """The loss above which the next reading is a spike (``nan`` until it would be checked).

        ``median + max(spike_mads·1.4826·max(MAD, spike_floor), spike_min_rise·|median|)`` over
        the last ``spike_window`` finite readings.

        Example:
            >>> mon = HealthMonitor(num_classes=10, spike_min_readings=3)
            >>> for s, x in enumerate([1.0, 1.2, 1.1]):
            ...     _ = mon.update_step(1, s, loss=x)
            >>> round(mon.spike_threshold(), 4)  # 1.1 + 6 · 1.4826 · 0.1
            1.9896
        """
        window = list(self._loss_window)
        if len(window) < self.spike_min_readings:
            return math.nan
        median = statistics.median(window)
        mad = statistics.median([abs(x - median) for x in window])
        spread = self.spike_mads * 1.4826 * max(mad, self.spike_floor)
        return median + max(spread, self.spike_min_rise * abs(median))

    def _check_loss(self, out: list[Finding], e: int, s: int, loss: float) -> None:
        # A spike is judged against the run's own recent losses, robustly: the median and MAD
        # ignore the odd outlier that a mean and standard deviation would follow.
        if self._spike_epoch != e:
            self._spike_epoch, self._spike_checked, self._spike_count = e, 0, 0
        if not math.isfinite(loss):
            self._spike_checked += 1
            self._spike_count += 1
            self._emit(
                out,
                "loss_spike",
                e,
                s,
                f"step loss is {loss}; skip the step and watch for more (frequent spikes roll "
                "SDM back)",
            )
            return
        threshold = self.spike_threshold()
        if not math.isnan(threshold):
            self._spike_checked += 1
            if loss > threshold:
                self._spike_count += 1
                self._emit(
                    out,
                    "loss_spike",
                    e,
                    s,
                    f"step loss {loss:.4g} > {threshold:.4g} (median + max({self.spike_mads:g}"
                    f"·1.4826·MAD, {self.spike_min_rise:g}·|median|) of the last "
                    f"{len(self._loss_window)} readings); watch for more (frequent spikes roll "
                    "SDM back)",
                )
        self._loss_window.append(loss)

    # -- epoch level ------------------------------------------------------------------------------
    def update_epoch(
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
            scheduler: If given, a ``ce_near_chance`` or ``frequent_loss_spikes`` finding is
                applied at once with ``scheduler.rollback(epoch)`` (the stage in force at
                ``epoch`` drops by one for ``epoch`` and later epochs); at most one rollback
                per epoch, however many of them fire.

        Returns:
            The findings this epoch fired (:meth:`compute` returns all of them).
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
        rolled_back = self._check_chance(out, e, ce, sdm_on, scheduler)
        self._check_spike_rate(out, e, sdm_on, None if rolled_back else scheduler)
        self._check_recovery(out, e)
        self._check_gap(out, e, gap)
        return out

    def _check_chance(
        self,
        out: list[Finding],
        e: int,
        ce: float,
        sdm_on: bool,
        scheduler: SupportsRollback | None,
    ) -> bool:
        """Returns whether it rolled the scheduler back."""
        # CE back at chance with SDM on means SDM's gradient has overwhelmed the identity loss
        # (typically: many rows without a positive). It counts when CE came back (an earlier
        # epoch was below the limit) or is not falling: a CE still leaving chance when a short
        # warm-up ends is not a collapse, and ce_not_recovering watches one that stays high.
        limit = (1.0 - self.chance_tolerance) * self.chance_ce
        earlier = self._ce[:-1]
        came_back = any(c < limit for c in earlier)
        not_falling = not earlier or ce >= earlier[-1]
        if not (sdm_on and ce >= limit and (came_back or not_falling)):
            return False
        fired = len(out)
        self._emit(
            out,
            "ce_near_chance",
            e,
            None,
            f"CE {ce:.3f} is within {100 * self.chance_tolerance:.0f} % of chance "
            f"ln({self.num_classes})={self.chance_ce:.3f} with SDM on; roll the SDM weight "
            "back one stage and check that the sampler really builds pairs",
        )
        if scheduler is not None and len(out) > fired:
            scheduler.rollback(e)
            return True
        return False

    def _check_spike_rate(
        self, out: list[Finding], e: int, sdm_on: bool, scheduler: SupportsRollback | None
    ) -> None:
        # The seed falls back to a softer SDM when most steps spike; a loss that spikes now and
        # then is noise. Only with SDM on: rolling back during warm-up would keep SDM off.
        checked, spikes = self._spike_checked, self._spike_count
        if not sdm_on or self._spike_epoch != e or checked == 0:
            return
        if spikes / checked <= self.spike_rate:
            return
        fired = len(out)
        self._emit(
            out,
            "frequent_loss_spikes",
            e,
            None,
            f"{spikes} of {checked} loss readings in epoch {e} were spikes "
            f"({spikes / checked:.0%} > {self.spike_rate:.0%}) with SDM on; roll SDM back one "
            "stage (a softer SDM) and consider a lower learning rate",
        )
        if scheduler is not None and len(out) > fired:
            scheduler.rollback(e)

    def _check_recovery(self, out: list[Finding], e: int) -> None:
        # SDM may lift CE for an epoch or two while the embedding reorganises; CE that stays
        # above the ceiling and is no lower than ce_recovery_epochs ago is not recovering.
        n = self.ce_recovery_epochs
        if len(self._ce) < n + 1:
            return
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

    def _check_gap(self, out: list[Finding], e: int, gap: float) -> None:
        # A train-val gap that widens at every scored epoch, by a minimum in total, is
        # overfitting; one noisy epoch is not. Only scored epochs count, because a trainer that
        # validates every N epochs scores only every Nth.
        p = self.gap_epochs
        scored = [g for g in self._gap if not math.isnan(g)]
        if math.isnan(gap) or len(scored) < p + 1:
            return
        gaps = scored[-(p + 1) :]
        rising = all(b > a for a, b in itertools.pairwise(gaps))
        if rising and gaps[-1] - gaps[0] >= self.gap_min_growth:
            advice, suggested = self._regularize()
            self._emit(
                out,
                "overfitting",
                e,
                None,
                f"train-val gap grew over {p} scored epochs ({gaps[0]:.3f} -> {gaps[-1]:.3f}); "
                f"{advice}",
                suggested,
            )

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Recorded history and findings as plain Python values (not the settings)."""
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
            "loss_window": list(self._loss_window),
            "spike_epoch": self._spike_epoch,
            "spike_checked": self._spike_checked,
            "spike_count": self._spike_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; a refused state changes nothing.

        Thresholds and settings stay as constructed.

        Every value must have the type :meth:`state_dict` writes (no coercion of ``"3"`` or
        ``1.0`` to an int, or of ``1`` to a bool), and no key may be missing or unknown, except
        that a state saved before the loss-spike rule (without all four of its keys) loads with
        no loss history. A longer saved loss window keeps its last ``spike_window`` readings.

        Raises:
            ValueError: ``state`` is not a :meth:`state_dict` of a monitor.
        """

        try:
            if not isinstance(state, Mapping):
                raise TypeError(f"got {type(state).__name__}, not a mapping")
            keys = set(self.state_dict())
            if not set(_SPIKE_KEYS) & set(state):  # saved before the loss-spike rule
                keys -= set(_SPIKE_KEYS)
            if set(state) != keys:
                missing, unknown = sorted(keys - set(state)), sorted(set(state) - keys)
                raise ValueError(f"missing keys {missing}, unknown keys {unknown}")
            epochs = _state_list(state, "epochs", lambda x: _state_int(x, 1))
            if any(b <= a for a, b in itertools.pairwise(epochs)):
                raise ValueError("'epochs' must increase")
            ce = _state_list(state, "ce", lambda x: _state_float(x, 0.0))
            sdm_on = _state_list(state, "sdm_on", _state_bool)
            gap = _state_list(state, "gap", lambda x: _state_float(x, allow_nan=True))
            if not len(epochs) == len(ce) == len(sdm_on) == len(gap):
                raise ValueError("history lists differ in length")
            findings = _state_list(state, "findings", _state_finding)
            fired = set(_state_list(state, "fired", _state_fired))
            step_state = (
                _optional(state["last_step"], lambda x: _state_int(x, 0)),
                _optional(state["last_step_epoch"], lambda x: _state_int(x, 1)),
                _optional(state["floor_start"], lambda x: _state_int(x, 0)),
                _optional(state["target_start"], lambda x: _state_int(x, 0)),
                _optional(state["norm_epoch"], lambda x: _state_int(x, 1)),
                _optional(state["norm_base"], lambda x: _state_float(x, 0.0)),
                _optional(state["last_norm"], lambda x: _state_float(x, 0.0)),
            )
            spikes = self._spike_state(state)
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
        window, self._spike_epoch, self._spike_checked, self._spike_count = spikes
        self._loss_window.extend(window)  # a longer saved window keeps its last readings

    @staticmethod
    def _spike_state(state: Mapping[str, Any]) -> tuple[list[float], int | None, int, int]:
        if "loss_window" not in state:
            return [], None, 0, 0
        window = _state_list(state, "loss_window", _state_float)
        epoch = _optional(state["spike_epoch"], lambda x: _state_int(x, 1))
        checked = _state_int(state["spike_checked"], 0)
        count = _state_int(state["spike_count"], 0)
        if count > checked:
            raise ValueError(f"'spike_count' {count} > 'spike_checked' {checked}")
        if epoch is None and checked:
            raise ValueError("'spike_checked' counts readings of no epoch ('spike_epoch' None)")
        return window, epoch, checked, count
