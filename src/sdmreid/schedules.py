"""Epoch-indexed schedules: the SDM loss weight and a param-group learning-rate switch.

:class:`SDMWeightScheduler` eases SDM into training. Epochs are numbered from 1, as printed in
training logs. With ``warmup_epochs=W`` and ``schedule=(w_0, ..., w_{S-1})``:

* epochs ``1..W`` are warm-up: weight ``0.0``, SDM off (stage :data:`STAGE_OFF`);
* epoch ``W + 1 + i`` uses stage ``i`` (weight ``w_i``); epochs after the last stage keep
  ``w_{S-1}``.

With the defaults (``W=1``, ``(0.1, 0.3, 0.5)``): epoch 1 → 0.0, 2 → 0.1, 3 → 0.3, ≥ 4 → 0.5.

**Rollback.** ``rollback(epoch)`` (or ``rollback()``: the latest epoch queried) lowers the stage
in force at ``epoch`` by one and *caps* every later epoch at that lowered stage: the schedule does
not climb back to the weight that misbehaved. Rolling back from the first stage (or during
warm-up) turns SDM off for good. Rollbacks are sticky, recorded as :class:`Rollback` entries with
their epoch, and saved by :meth:`SDMWeightScheduler.state_dict`; epochs before a rollback keep
their original weights, so ``weight(epoch)`` stays a pure function of the epoch and the recorded
history.

**Per-step ramp.** With ``ramp_steps=R > 0``, ``weight(epoch, step=s)`` (``s`` counted from 0 within
the epoch) moves linearly from the previous epoch's weight to this epoch's over the first ``R``
steps: ``prev + (cur - prev) * min(1, (s + 1) / R)``. Only increases are ramped; a lower weight
(after a rollback) applies at once. ``weight(epoch)`` without ``step`` is the epoch's full weight.

:class:`HeadLRSwitch` sets one named optimizer param group's learning rate from a given epoch on
(the classifier head drops to ``3e-3`` at epoch 2, because its weight norm grew 7 → 35 without it).
See its docstring for how it coexists with :mod:`torch.optim.lr_scheduler` schedulers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdmreid._validation import check_int

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


def _check_epoch(epoch: object) -> int:
    return check_int("epoch (numbered from 1)", epoch, 1)


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
    """SDM loss weight per epoch: warm-up, staged increase, sticky rollbacks.

    Args:
        warmup_epochs: Number of leading epochs with SDM off (``>= 0``).
        schedule: Non-empty sequence of finite weights ``>= 0``, one per stage.
        ramp_steps: If ``> 0``, ramp linearly into each higher weight over this many steps.

    Raises:
        ValueError: On an empty schedule, a negative or non-finite weight, or negative counts.
        TypeError: On non-integer counts or non-numeric weights.

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
    """

    def __init__(
        self,
        warmup_epochs: int = 1,
        schedule: Sequence[float] = (0.1, 0.3, 0.5),
        *,
        ramp_steps: int = 0,
    ) -> None:
        self._warmup = check_int("warmup_epochs", warmup_epochs, 0)
        self._schedule = self._check_schedule(schedule)
        self._ramp_steps = check_int("ramp_steps", ramp_steps, 0)
        self._rollbacks: list[Rollback] = []
        self._latest_epoch: int | None = None

    @staticmethod
    def _check_schedule(schedule: object) -> tuple[float, ...]:
        if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence):
            raise TypeError(f"schedule must be a sequence of floats, got {type(schedule).__name__}")
        if len(schedule) == 0:
            raise ValueError("schedule must be non-empty, got an empty sequence")
        out: list[float] = []
        for i, w in enumerate(schedule):
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise TypeError(f"schedule[{i}] must be a float, got {type(w).__name__}")
            wf = float(w)
            if not math.isfinite(wf) or wf < 0.0:
                raise ValueError(f"schedule[{i}] must be finite and >= 0, got {w!r}")
            out.append(wf)
        return tuple(out)

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
        s = self.nominal_stage(epoch)
        for rb in self._rollbacks:
            if rb.epoch <= epoch:
                s = min(s, rb.to_stage)
        return s

    def _epoch_weight(self, epoch: int) -> float:
        s = self.stage(epoch)
        if self._latest_epoch is None or epoch > self._latest_epoch:
            self._latest_epoch = epoch
        return 0.0 if s == STAGE_OFF else self._schedule[s]

    def weight(self, epoch: int, step: int | None = None) -> float:
        """SDM weight at ``epoch`` (and ``step`` within it, counted from 0, when ramping).

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

        Example:
            >>> SDMWeightScheduler().log_line(1)
            '[sdm] epoch=1 weight=0.000 use_sdm=False'
        """
        w = self.weight(epoch, step)
        return f"[sdm] epoch={epoch} weight={w:.3f} use_sdm={self.use_sdm(epoch)}"

    # -- rollback -----------------------------------------------------------------------------
    def rollback(self, epoch: int | None = None) -> Rollback:
        """Lower the stage in force at ``epoch`` by one, for ``epoch`` and every later epoch.

        Args:
            epoch: Epoch (from 1) from which the lower stage applies; must not precede the last
                recorded rollback (history is append-only). Omitted: the latest epoch this
                scheduler has been asked about through :meth:`weight`, :meth:`use_sdm` or
                :meth:`log_line` (the epoch being trained, in a normal loop) — pass it explicitly
                when you can.

        Returns:
            The recorded :class:`Rollback`. Rolling back when SDM is already off records a no-op
            entry (``from_stage == to_stage == -1``).

        Raises:
            ValueError: ``epoch`` is omitted and the scheduler has not been queried yet, or
                ``epoch`` precedes the last recorded rollback.

        Example:
            >>> s = SDMWeightScheduler()
            >>> s.rollback(2)
            Rollback(epoch=2, from_stage=0, to_stage=-1)
            >>> s.use_sdm(2), s.use_sdm(10)
            (False, False)
            >>> t = SDMWeightScheduler()
            >>> t.weight(3)
            0.3
            >>> t.rollback()  # the latest epoch asked about: 3
            Rollback(epoch=3, from_stage=1, to_stage=0)
        """
        if epoch is None:
            if self._latest_epoch is None:
                raise ValueError(
                    "epoch must be given: rollback() without an epoch applies from the latest "
                    "epoch passed to weight()/use_sdm()/log_line(), and none has been yet"
                )
            epoch = self._latest_epoch
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
    def state_dict(self) -> dict[str, Any]:
        """Configuration and rollback history as plain Python values.

        Example:
            >>> SDMWeightScheduler().state_dict()["rollbacks"]
            []
        """
        return {
            "warmup_epochs": self._warmup,
            "schedule": list(self._schedule),
            "ramp_steps": self._ramp_steps,
            "rollbacks": [[r.epoch, r.from_stage, r.to_stage] for r in self._rollbacks],
            "latest_epoch": self._latest_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Restore the rollback history from :meth:`state_dict`.

        Args:
            state: A dict produced by :meth:`state_dict`.
            strict: If true, a configuration (warm-up, schedule, ramp) different from this
                scheduler's raises ``ValueError``; if false, this scheduler's configuration is
                kept and only the rollback history is restored.

        Example:
            >>> a = SDMWeightScheduler(); _ = a.rollback(5)
            >>> b = SDMWeightScheduler(); b.load_state_dict(a.state_dict())
            >>> b.weight(6)
            0.3
        """
        if not isinstance(state, Mapping) or "rollbacks" not in state:
            raise ValueError("state must be a mapping from SDMWeightScheduler.state_dict()")
        if strict:
            mine = self.state_dict()
            for key in ("warmup_epochs", "schedule", "ramp_steps"):
                theirs = list(state[key]) if key == "schedule" else state.get(key)
                if theirs != mine[key]:
                    raise ValueError(
                        f"state[{key!r}]={theirs!r} differs from this scheduler's {mine[key]!r}; "
                        "pass strict=False to keep this configuration and restore the history"
                    )
        rollbacks: list[Rollback] = []
        last = 1
        for item in state["rollbacks"]:
            e, f, t = (int(x) for x in item)
            if e < last or f < STAGE_OFF or t != max(f - 1, STAGE_OFF):
                raise ValueError(f"invalid rollback record {list(item)!r} in state")
            rollbacks.append(Rollback(epoch=e, from_stage=f, to_stage=t))
            last = e
        latest = state.get("latest_epoch")
        self._rollbacks = rollbacks
        self._latest_epoch = None if latest is None else int(latest)

    def __repr__(self) -> str:
        return (
            f"SDMWeightScheduler(warmup_epochs={self._warmup}, schedule={self._schedule}, "
            f"ramp_steps={self._ramp_steps}, rollbacks={len(self._rollbacks)})"
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
        if not self.active(epoch):
            return False
        g = self.param_group
        old = float(g["lr"])
        if self.switched_at is None:
            self.switched_at = epoch
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
        """Restore from :meth:`state_dict` (the optimizer's own state holds the group's ``lr``)."""
        lr = _check_lr("state['lr']", state["lr"])
        self.group = state["group"]
        self._index = self._find_group(self.optimizer, self.group)
        self.lr = lr
        self.from_epoch = check_int("state['from_epoch']", state["from_epoch"], 1)
        sw = state["switched_at"]
        self.switched_at = None if sw is None else int(sw)
        rl = state["replaced_lr"]
        self.replaced_lr = None if rl is None else float(rl)

    def __repr__(self) -> str:
        return (
            f"HeadLRSwitch(group={self.group!r}, lr={self.lr}, from_epoch={self.from_epoch}, "
            f"switched_at={self.switched_at})"
        )
