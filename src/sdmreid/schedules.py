"""Epoch-indexed schedules: the SDM loss weight and a param-group learning-rate switch.

:class:`SDMWeightScheduler` eases SDM into training. Epochs are numbered from 1, as printed in
training logs. With ``warmup_epochs=W`` and ``schedule=(w_0, ..., w_{S-1})``:

* epochs ``1..W`` are warm-up: weight ``0.0``, SDM off (stage :data:`STAGE_OFF`);
* epoch ``W + 1 + i`` uses stage ``i`` (weight ``w_i``); epochs after the last stage keep
  ``w_{S-1}``.

With the defaults (``W=1``, ``(0.1, 0.3, 0.5)``): epoch 1 → 0.0, 2 → 0.1, 3 → 0.3, ≥ 4 → 0.5.

**Rollback.** ``rollback(epoch)`` lowers the stage in force at ``epoch`` by one and *caps* every
later epoch at that lowered stage: the schedule does not climb back to the weight that
misbehaved. Rolling back from the first stage (or during warm-up) turns SDM off. Rollbacks are
recorded as :class:`Rollback` entries with their epoch, and saved by
:meth:`SDMWeightScheduler.state_dict`; epochs before a rollback keep their original weights.

**Re-advance** (optional). By default a rollback is sticky. With ``readvance_after=N`` the cap
rises by one stage every ``N`` epochs after the last rollback: epochs ``r .. r+N-1`` run at the
stage rolled back to at epoch ``r``, epoch ``r+N`` may use one stage more, epoch ``r+2N`` two, and
so on until the nominal schedule takes over again; a new rollback starts the count afresh.
"Stable" is the caller's judgement, made through the one call it already makes: an epoch is stable
when the caller records no rollback in it (the scheduler sees no loss). The re-advances are a
function of the recorded rollbacks and ``N``, so a checkpoint that holds both replays them.

**Logit-scale schedule** (optional). ``logit_scales=(s_0, ..., s_{S-1})`` gives SDM's
``logit_scale`` (``1 / temperature``) per stage, next to the weights, following the same stages,
rollbacks and re-advances: ``logit_scale(epoch)`` is ``s_i`` for the stage ``i`` in force (``s_0``
while SDM is off). A rollback thus also softens SDM's softmax when the scales increase with the
stage, as the seed pipeline falls back to a higher temperature when training is unstable. Without
``logit_scales``, ``logit_scale(epoch)`` is ``None``: the caller keeps its own scale.

**Queries are pure.** ``weight``, ``logit_scale``, ``use_sdm``, ``stage`` and ``log_line`` are
functions of their arguments and the recorded rollbacks: asking changes nothing, in any order. The
only change of state is ``rollback(epoch)``, which therefore always names its epoch.

**Per-step ramp.** With ``ramp_steps=R > 0``, ``weight(epoch, step=s)`` (``s`` counted from 0 within
the epoch) moves linearly from the previous epoch's weight to this epoch's over the first ``R``
steps: ``prev + (cur - prev) * min(1, (s + 1) / R)``. Only increases are ramped; a lower weight
(after a rollback) applies at once. ``weight(epoch)`` without ``step`` is the epoch's full weight.

:class:`HeadLRSwitch` sets one named optimizer param group's learning rate from a given epoch on.
The recipe lowers the classifier head to ``3e-3`` from epoch 2: at the backbone's rate the head's
weight norm keeps growing once the training identities are separated, inflating its logits
without improving the embedding. See its docstring for how it coexists with
:mod:`torch.optim.lr_scheduler` schedulers.

Both classes check a whole state in ``load_state_dict`` before changing anything: a refused state
leaves the object exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdmreid._validation import check_bool, check_int

__all__ = [
    "STAGE_OFF",
    "HeadLRSwitch",
    "Rollback",
    "SDMWeightScheduler",
]

#: Stage index meaning "SDM off" (warm-up, or rolled back below the first stage).
STAGE_OFF = -1


def _check_lr(name: str, lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(lr).__name__}")
    if not math.isfinite(float(lr)) or lr < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {lr!r}")
    return float(lr)


def _check_epoch(epoch: object, name: str = "epoch") -> int:
    return check_int(f"{name} (numbered from 1)", epoch, 1)


def _check_state_keys(
    state: object, owner: str, required: Sequence[str], optional: Sequence[str] = ()
) -> Mapping[str, Any]:
    """``state`` as a mapping holding every ``required`` key and nothing unknown."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"state must be a mapping from {owner}.state_dict(), got {type(state).__name__}"
        )
    unknown = sorted(map(repr, set(state) - {*required, *optional}))
    if unknown:
        raise ValueError(
            f"state has unknown keys {', '.join(unknown)}; {owner} state keys are "
            f"{', '.join(map(repr, [*required, *optional]))}"
        )
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"state is missing {', '.join(map(repr, missing))}")
    return state


@dataclass(frozen=True)
class Rollback:
    """One recorded rollback: from ``epoch`` on, the stage is capped at ``to_stage``.

    Attributes:
        epoch: Epoch (from 1) at which the rollback took effect.
        from_stage: Stage in force at ``epoch`` before the rollback (``-1`` = off).
        to_stage: Stage cap from ``epoch`` on (``-1`` = SDM off).

    Example:
        >>> Rollback(epoch=3, from_stage=1, to_stage=0)
        Rollback(epoch=3, from_stage=1, to_stage=0)
    """

    epoch: int
    from_stage: int
    to_stage: int


class SDMWeightScheduler:
    """SDM loss weight (and optionally logit scale) per epoch: warm-up, stages, rollbacks.

    Args:
        warmup_epochs: Number of leading epochs with SDM off (``>= 0``).
        schedule: Non-empty sequence of finite weights ``>= 0``, one per stage.
        ramp_steps: If ``> 0``, ramp linearly into each higher weight over this many steps.
        logit_scales: ``None`` (default: the caller keeps its own scale), or one finite
            ``logit_scale > 0`` per stage of ``schedule``; see :meth:`logit_scale`.
        readvance_after: ``None`` (default: rollbacks are sticky), or a number of epochs
            ``>= 1`` after which a rolled-back cap rises by one stage (see the module docs).

    Raises:
        ValueError: On an empty schedule, a negative or non-finite weight, negative counts, a
            ``logit_scales`` of another length than ``schedule`` or with a value that is not
            finite and ``> 0``, or ``readvance_after < 1``.
        TypeError: On non-integer counts or non-numeric weights or scales.

    Example:
        >>> s = SDMWeightScheduler(warmup_epochs=1, schedule=(0.1, 0.3, 0.5))
        >>> [s.weight(e) for e in (1, 2, 3, 4, 9)]
        [0.0, 0.1, 0.3, 0.5, 0.5]
        >>> s.log_line(2)
        '[sdm] epoch=2 weight=0.100 use_sdm=True'
        >>> s.rollback(3)
        Rollback(epoch=3, from_stage=1, to_stage=0)
        >>> [s.weight(e) for e in (2, 3, 4, 9)]
        [0.1, 0.1, 0.1, 0.1]

        The seed pipeline's temperatures (0.12 at first, 0.10 later) as logit scales per stage,
        and a rollback that is retried after two stable epochs:

        >>> s = SDMWeightScheduler(logit_scales=(1 / 0.12, 1 / 0.12, 10.0), readvance_after=2)
        >>> s.log_line(4)
        '[sdm] epoch=4 weight=0.500 use_sdm=True logit_scale=10.000'
        >>> s.rollback(4)
        Rollback(epoch=4, from_stage=2, to_stage=1)
        >>> [(s.weight(e), round(s.logit_scale(e), 3)) for e in (4, 5, 6)]
        [(0.3, 8.333), (0.3, 8.333), (0.5, 10.0)]
    """

    def __init__(
        self,
        warmup_epochs: int = 1,
        schedule: Sequence[float] = (0.1, 0.3, 0.5),
        *,
        ramp_steps: int = 0,
        logit_scales: Sequence[float] | None = None,
        readvance_after: int | None = None,
    ) -> None:
        self._warmup = check_int("warmup_epochs", warmup_epochs, 0)
        self._schedule = self._check_schedule(schedule)
        self._ramp_steps = check_int("ramp_steps", ramp_steps, 0)
        self._logit_scales = self._check_logit_scales(logit_scales, len(self._schedule))
        self._readvance = self._check_readvance(readvance_after)
        self._rollbacks: list[Rollback] = []

    @staticmethod
    def _check_schedule(schedule: object, name: str = "schedule") -> tuple[float, ...]:
        if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence):
            raise TypeError(f"{name} must be a sequence of floats, got {type(schedule).__name__}")
        if len(schedule) == 0:
            raise ValueError(f"{name} must be non-empty, got an empty sequence")
        out: list[float] = []
        for i, w in enumerate(schedule):
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise TypeError(f"{name}[{i}] must be a float, got {type(w).__name__}")
            wf = float(w)
            if not math.isfinite(wf) or wf < 0.0:
                raise ValueError(f"{name}[{i}] must be finite and >= 0, got {w!r}")
            out.append(wf)
        return tuple(out)

    @staticmethod
    def _check_logit_scales(
        scales: object, stages: int, name: str = "logit_scales"
    ) -> tuple[float, ...] | None:
        if scales is None:
            return None
        if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
            raise TypeError(
                f"{name} must be None or a sequence of floats, got {type(scales).__name__}"
            )
        if len(scales) != stages:
            raise ValueError(
                f"{name} must have one value per stage of the schedule ({stages}), "
                f"got {len(scales)}"
            )
        out: list[float] = []
        for i, v in enumerate(scales):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name}[{i}] must be a float, got {type(v).__name__}")
            vf = float(v)
            if not (math.isfinite(vf) and vf > 0.0):
                raise ValueError(f"{name}[{i}] must be finite and > 0, got {v!r}")
            out.append(vf)
        return tuple(out)

    @staticmethod
    def _check_readvance(value: object, name: str = "readvance_after") -> int | None:
        return None if value is None else check_int(f"{name} (epochs, or None)", value, 1)

    # -- configuration ----------------------------------------------------------------------
    @property
    def warmup_epochs(self) -> int:
        """Number of warm-up epochs (SDM off)."""
        return self._warmup

    @property
    def schedule(self) -> tuple[float, ...]:
        """The per-stage weights."""
        return self._schedule

    @property
    def ramp_steps(self) -> int:
        """Steps of the linear in-epoch ramp (0 = no ramp)."""
        return self._ramp_steps

    @property
    def logit_scales(self) -> tuple[float, ...] | None:
        """The per-stage logit scales, or ``None`` (the caller's scale is kept)."""
        return self._logit_scales

    @property
    def readvance_after(self) -> int | None:
        """Epochs after which a rolled-back cap rises by one stage (``None`` = never)."""
        return self._readvance

    @property
    def rollbacks(self) -> tuple[Rollback, ...]:
        """Recorded rollbacks, oldest first."""
        return tuple(self._rollbacks)

    # -- queries ------------------------------------------------------------------------------
    def nominal_stage(self, epoch: int) -> int:
        """Stage at ``epoch`` ignoring rollbacks (``-1`` = off)."""
        e = _check_epoch(epoch)
        if e <= self._warmup:
            return STAGE_OFF
        return min(e - self._warmup - 1, len(self._schedule) - 1)

    def stage(self, epoch: int) -> int:
        """Stage in force at ``epoch`` after the rollbacks recorded up to it (``-1`` = off).

        Example:
            >>> SDMWeightScheduler().stage(1), SDMWeightScheduler().stage(7)
            (-1, 2)
        """
        return self._capped_stage(epoch, self._rollbacks)

    def _capped_stage(self, epoch: int, rollbacks: Sequence[Rollback]) -> int:
        # The cap set by the rollbacks up to ``epoch`` (oldest first, epochs non-decreasing): each
        # rollback lowers it to its ``to_stage`` (never above the cap in force then), and with
        # re-advance it rises by one every ``readvance_after`` epochs since the last rollback.
        s = self.nominal_stage(epoch)
        cap: int | None = None
        since = 0
        for rb in rollbacks:
            if rb.epoch > epoch:
                break
            prev = None if cap is None else self._readvanced(cap, since, rb.epoch)
            cap = rb.to_stage if prev is None else min(prev, rb.to_stage)
            since = rb.epoch
        return s if cap is None else min(s, self._readvanced(cap, since, epoch))

    def _readvanced(self, cap: int, since: int, epoch: int) -> int:
        return cap if self._readvance is None else cap + (epoch - since) // self._readvance

    def _epoch_weight(self, epoch: int) -> float:
        s = self.stage(epoch)
        return 0.0 if s == STAGE_OFF else self._schedule[s]

    def weight(self, epoch: int, step: int | None = None) -> float:
        """SDM weight at ``epoch`` (and ``step`` within it, counted from 0, when ramping).

        A pure query: it records nothing, so it may be asked about any epoch in any order.

        Example:
            >>> s = SDMWeightScheduler(ramp_steps=4)
            >>> [s.weight(2, step=i) for i in range(5)]
            [0.025, 0.05, 0.075, 0.1, 0.1]
            >>> s.weight(2)
            0.1
        """
        cur = self._epoch_weight(epoch)
        if step is None or self._ramp_steps == 0:
            if step is not None:
                check_int("step", step, 0)
            return cur
        st = check_int("step", step, 0)
        prev = self._epoch_weight(epoch - 1) if epoch > 1 else 0.0
        if cur <= prev:
            return cur
        frac = min(1.0, (st + 1) / self._ramp_steps)
        if frac >= 1.0:
            return cur
        return prev + (cur - prev) * frac

    def logit_scale(self, epoch: int) -> float | None:
        """SDM's ``logit_scale`` at ``epoch``: the scale of the stage in force, or ``None``.

        ``None`` when the scheduler has no ``logit_scales`` (the caller keeps its own scale).
        While SDM is off (warm-up, or rolled back below the first stage) it is the first stage's
        scale, so the value is always one the loss accepts. Not ramped within an epoch.

        Example:
            >>> s = SDMWeightScheduler(logit_scales=(8.0, 9.0, 10.0))
            >>> [s.logit_scale(e) for e in (1, 2, 3, 4, 9)]
            [8.0, 8.0, 9.0, 10.0, 10.0]
            >>> SDMWeightScheduler().logit_scale(3) is None
            True
        """
        stage = self.stage(epoch)
        if self._logit_scales is None:
            return None
        return self._logit_scales[max(stage, 0)]

    def use_sdm(self, epoch: int) -> bool:
        """Whether SDM is on at ``epoch`` (its weight is ``> 0``).

        Example:
            >>> s = SDMWeightScheduler()
            >>> s.use_sdm(1), s.use_sdm(2)
            (False, True)
        """
        return self._epoch_weight(epoch) > 0.0

    def log_line(self, epoch: int, step: int | None = None) -> str:
        """``[sdm] epoch=E weight=W use_sdm=B`` with the weight to 3 decimals.

        With ``logit_scales``, `` logit_scale=S`` (3 decimals) follows.

        Example:
            >>> SDMWeightScheduler().log_line(1)
            '[sdm] epoch=1 weight=0.000 use_sdm=False'
            >>> SDMWeightScheduler(logit_scales=(5, 7, 9)).log_line(3)
            '[sdm] epoch=3 weight=0.300 use_sdm=True logit_scale=7.000'
        """
        w = self.weight(epoch, step)
        line = f"[sdm] epoch={epoch} weight={w:.3f} use_sdm={self.use_sdm(epoch)}"
        scale = self.logit_scale(epoch)
        return line if scale is None else f"{line} logit_scale={scale:.3f}"

    # -- rollback -----------------------------------------------------------------------------
    def rollback(self, epoch: int) -> Rollback:
        """Lower the stage in force at ``epoch`` by one, for ``epoch`` and every later epoch.

        With ``readvance_after=N`` the cap rises again by one stage every ``N`` epochs without a
        further rollback; otherwise it holds for the rest of the run.

        Args:
            epoch: Epoch (from 1) from which the lower stage applies — the epoch being trained
                when the decision is taken. It must not precede the last recorded rollback
                (history is append-only).

        Returns:
            The recorded :class:`Rollback`. Rolling back when SDM is already off records a no-op
            entry (``from_stage == to_stage == -1``).

        Raises:
            TypeError: ``epoch`` is missing or not an integer.
            ValueError: ``epoch < 1``, or ``epoch`` precedes the last recorded rollback.

        Example:
            >>> s = SDMWeightScheduler()
            >>> s.rollback(2)
            Rollback(epoch=2, from_stage=0, to_stage=-1)
            >>> s.use_sdm(2), s.use_sdm(10)
            (False, False)
        """
        e = _check_epoch(epoch)
        if self._rollbacks and e < self._rollbacks[-1].epoch:
            raise ValueError(
                f"epoch must be >= the last rollback's epoch {self._rollbacks[-1].epoch}, got {e}"
            )
        cur = self.stage(e)
        rb = Rollback(epoch=e, from_stage=cur, to_stage=max(cur - 1, STAGE_OFF))
        self._rollbacks.append(rb)
        return rb

    # -- checkpointing --------------------------------------------------------------------------
    _CONFIG_KEYS = ("warmup_epochs", "schedule", "ramp_steps")
    # Options added after the first checkpoints: a state without them had them at None.
    _OPTION_KEYS = ("logit_scales", "readvance_after")

    def state_dict(self) -> dict[str, Any]:
        """Configuration and rollback history as plain Python values.

        Example:
            >>> SDMWeightScheduler().state_dict()  # doctest: +NORMALIZE_WHITESPACE
            {'warmup_epochs': 1, 'schedule': [0.1, 0.3, 0.5], 'ramp_steps': 0,
             'logit_scales': None, 'readvance_after': None, 'rollbacks': []}
        """
        return {
            "warmup_epochs": self._warmup,
            "schedule": list(self._schedule),
            "ramp_steps": self._ramp_steps,
            "logit_scales": None if self._logit_scales is None else list(self._logit_scales),
            "readvance_after": self._readvance,
            "rollbacks": [[r.epoch, r.from_stage, r.to_stage] for r in self._rollbacks],
        }

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Restore the rollback history from :meth:`state_dict`.

        The whole state is checked before anything changes: a refused state leaves the
        scheduler as it was.

        Args:
            state: A dict produced by :meth:`state_dict`.
            strict: If true, the state must hold this scheduler's configuration (warm-up,
                schedule, ramp; ``logit_scales`` and ``readvance_after`` may be absent, as in
                states saved before these options, and then count as ``None``) and each
                rollback record must be the one this scheduler would have recorded (its
                ``from_stage`` is the stage in force at its epoch, re-advances included). If
                false, the configuration keys may be absent or differ (this scheduler's are
                kept) and only the records' own consistency is checked.

        Raises:
            TypeError: ``state`` is not a mapping, a value has the wrong type, or ``strict`` is
                not a bool.
            ValueError: A key is missing or unknown, the configuration differs (``strict``), or
                a rollback record is invalid.

        Example:
            >>> a = SDMWeightScheduler(); _ = a.rollback(5)
            >>> b = SDMWeightScheduler(); b.load_state_dict(a.state_dict())
            >>> b.weight(6)
            0.3
        """
        check_bool("strict", strict)
        required = ("rollbacks", *self._CONFIG_KEYS) if strict else ("rollbacks",)
        optional = self._OPTION_KEYS if strict else (*self._CONFIG_KEYS, *self._OPTION_KEYS)
        state = _check_state_keys(state, "SDMWeightScheduler", required, optional)
        theirs: dict[str, object] = {}
        stages = len(self._schedule)
        if "warmup_epochs" in state:
            theirs["warmup_epochs"] = check_int("state['warmup_epochs']", state["warmup_epochs"], 0)
        if "schedule" in state:
            schedule = self._check_schedule(state["schedule"], "state['schedule']")
            theirs["schedule"], stages = list(schedule), len(schedule)
        if "ramp_steps" in state:
            theirs["ramp_steps"] = check_int("state['ramp_steps']", state["ramp_steps"], 0)
        if "logit_scales" in state or strict:
            scales = self._check_logit_scales(
                state.get("logit_scales"), stages, "state['logit_scales']"
            )
            theirs["logit_scales"] = None if scales is None else list(scales)
        if "readvance_after" in state or strict:
            theirs["readvance_after"] = self._check_readvance(
                state.get("readvance_after"), "state['readvance_after']"
            )
        if strict:
            mine = self.state_dict()
            for key, value in theirs.items():
                if value != mine[key]:
                    raise ValueError(
                        f"state[{key!r}]={value!r} differs from this scheduler's {mine[key]!r}; "
                        "pass strict=False to keep this configuration and restore the history"
                    )
        self._rollbacks = self._check_rollbacks(state["rollbacks"], strict)

    def _check_rollbacks(self, records: object, replay: bool) -> list[Rollback]:
        """Rollback records of a state, checked; ``replay``: against this configuration."""
        if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
            raise TypeError(
                f"state['rollbacks'] must be a list of [epoch, from_stage, to_stage], got "
                f"{type(records).__name__}"
            )
        out: list[Rollback] = []
        for i, item in enumerate(records):
            name = f"state['rollbacks'][{i}]"
            if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 3:
                raise ValueError(f"{name} must be [epoch, from_stage, to_stage], got {item!r}")
            e = _check_epoch(item[0], f"{name}[0]")
            f = check_int(f"{name}[1]", item[1], STAGE_OFF)
            t = check_int(f"{name}[2]", item[2], STAGE_OFF)
            if out and e < out[-1].epoch:
                raise ValueError(f"{name}: epochs must not decrease, got {e} after {out[-1].epoch}")
            if t != max(f - 1, STAGE_OFF):
                raise ValueError(f"{name}: to_stage must be one below from_stage, got {item!r}")
            if replay and f != self._capped_stage(e, out):
                raise ValueError(
                    f"{name}: from_stage {f} is not the stage in force at epoch {e} "
                    f"({self._capped_stage(e, out)}) under this configuration"
                )
            out.append(Rollback(epoch=e, from_stage=f, to_stage=t))
        return out

    def __repr__(self) -> str:
        return (
            f"SDMWeightScheduler(warmup_epochs={self._warmup}, schedule={self._schedule}, "
            f"ramp_steps={self._ramp_steps}, logit_scales={self._logit_scales}, "
            f"readvance_after={self._readvance}, rollbacks={len(self._rollbacks)})"
        )


class HeadLRSwitch:
    """Pin one optimizer param group's learning rate from a given epoch on.

    The group is found by its ``"name"`` key (``optimizer.add_param_group({"params": ...,
    "name": "head"})`` or ``torch.optim.SGD([{"params": ..., "name": "head"}, ...])``) or by its
    integer index. ``step(epoch)`` sets ``group["lr"] = lr`` for every ``epoch >= from_epoch`` and
    leaves the group untouched before; it is idempotent (calling it again for the same epoch
    changes nothing) and its state (the epoch it first applied, the learning rate it replaced)
    round-trips through :meth:`state_dict`.

    **With a torch LR scheduler.** Schedulers in :mod:`torch.optim.lr_scheduler` update *every*
    param group when they step. Call ``switch.step(epoch)`` *after* ``scheduler.step()`` (and after
    every scheduler step if it steps per iteration): other groups then follow the scheduler
    exactly as without the switch, and the switched group stays pinned at ``lr`` from
    ``from_epoch`` on — the scheduler's change to that group is overwritten. For a scheduled head
    LR instead, give the head its own lambda in ``LambdaLR`` rather than using this switch.

    Args:
        optimizer: The optimizer whose group to switch.
        group: The group's ``"name"`` value, or its index in ``optimizer.param_groups``.
        lr: The learning rate to pin (finite, ``>= 0``).
        from_epoch: First epoch (from 1) with the new learning rate.

    Raises:
        ValueError: If no (or more than one) group has that name, or on a bad ``lr``/epoch.

    Example:
        >>> import torch
        >>> body, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)
        >>> opt = torch.optim.SGD([{"params": body.parameters(), "name": "backbone"},
        ...                        {"params": head.parameters(), "name": "head"}], lr=1e-2)
        >>> switch = HeadLRSwitch(opt, group="head", lr=3e-3, from_epoch=2)
        >>> switch.step(1), opt.param_groups[1]["lr"]
        (False, 0.01)
        >>> switch.step(2), opt.param_groups[1]["lr"], opt.param_groups[0]["lr"]
        (True, 0.003, 0.01)
        >>> switch.step(2)  # idempotent
        False
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        group: str | int = "head",
        lr: float = 3e-3,
        from_epoch: int = 2,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.group = group
        self.lr = _check_lr("lr", lr)
        self.from_epoch = check_int("from_epoch", from_epoch, 1)
        self._index = self._find_group(optimizer, group)
        self.switched_at: int | None = None
        self.replaced_lr: float | None = None

    @staticmethod
    def _find_group(optimizer: torch.optim.Optimizer, group: str | int) -> int:
        groups = optimizer.param_groups
        if isinstance(group, bool):
            raise TypeError("group must be a str name or an int index, got bool")
        if isinstance(group, int):
            if not 0 <= group < len(groups):
                raise ValueError(f"group index must be in [0, {len(groups) - 1}], got {group}")
            return group
        if not isinstance(group, str):
            raise TypeError(f"group must be a str name or an int index, got {type(group)}")
        hits = [i for i, g in enumerate(groups) if g.get("name") == group]
        if len(hits) != 1:
            names = [g.get("name") for g in groups]
            what = "no" if not hits else "more than one"
            raise ValueError(
                f"{what} optimizer param group has name {group!r}; group names are {names} "
                "(add a 'name' key to the param group dict, or pass its int index)"
            )
        return hits[0]

    @property
    def param_group(self) -> dict[str, Any]:
        """The switched param group (a live dict of the optimizer)."""
        return self.optimizer.param_groups[self._index]

    def active(self, epoch: int) -> bool:
        """Whether the pinned learning rate applies at ``epoch``."""
        return _check_epoch(epoch) >= self.from_epoch

    def step(self, epoch: int) -> bool:
        """Apply the switch for ``epoch``; returns whether the group's ``lr`` was changed."""
        e = _check_epoch(epoch)
        if e < self.from_epoch:
            return False
        g = self.param_group
        old = float(g["lr"])
        if self.switched_at is None:
            self.switched_at = e
            self.replaced_lr = old
        if old == self.lr:
            return False
        g["lr"] = self.lr
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain-value state (configuration and when the switch first applied)."""
        return {
            "group": self.group,
            "lr": self.lr,
            "from_epoch": self.from_epoch,
            "switched_at": self.switched_at,
            "replaced_lr": self.replaced_lr,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the optimizer's own state holds the group's ``lr``).

        The whole state is checked before anything changes: a refused state (say, a group name
        this optimizer lacks) leaves the switch as it was.

        Raises:
            TypeError: ``state`` is not a mapping, or a value has the wrong type.
            ValueError: A key is missing or unknown, the group is not found, or a value is out of
                range (``switched_at`` before ``from_epoch``; ``switched_at`` and
                ``replaced_lr`` not both set or both ``None``).
        """
        state = _check_state_keys(
            state, "HeadLRSwitch", ("group", "lr", "from_epoch", "switched_at", "replaced_lr")
        )
        group = state["group"]
        index = self._find_group(self.optimizer, group)
        lr = _check_lr("state['lr']", state["lr"])
        from_epoch = _check_epoch(state["from_epoch"], "state['from_epoch']")
        sw, rl = state["switched_at"], state["replaced_lr"]
        if (sw is None) != (rl is None):
            raise ValueError(
                "state['switched_at'] and state['replaced_lr'] must both be set or both be None, "
                f"got {sw!r} and {rl!r}"
            )
        switched_at = None if sw is None else check_int("state['switched_at']", sw, from_epoch)
        replaced_lr = None if rl is None else _check_lr("state['replaced_lr']", rl)
        self.group, self._index, self.lr, self.from_epoch = group, index, lr, from_epoch
        self.switched_at, self.replaced_lr = switched_at, replaced_lr

    def __repr__(self) -> str:
        return (
            f"HeadLRSwitch(group={self.group!r}, lr={self.lr}, from_epoch={self.from_epoch}, "
            f"switched_at={self.switched_at})"
        )
