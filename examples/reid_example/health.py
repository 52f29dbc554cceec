"""Glue between the trainer and :class:`sdmreid.HealthMonitor`.

* Step level (every ``health.every_steps`` global steps): the pair-coverage reading and the
  classifier weight norm go to :meth:`HealthMonitor.observe_step`.
* Epoch level: the epoch's mean CE and whether SDM was on go to
  :meth:`HealthMonitor.observe_epoch`; on evaluation epochs also the selection score of the
  validation split and the same score on training identities (``eval.train_ids``), which feed
  the ``overfitting`` rule. With ``health.act = true`` the monitor is given the SDM
  weight scheduler, so a ``ce_near_chance`` finding rolls SDM back one stage at once (sticky,
  recorded in the scheduler's state). Other actions (reduce P/K, regularise, lower the head LR)
  are suggestions: they are logged with their suggested settings, never applied silently.

Every finding is logged as one ``[health] ...`` line and kept for the report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from reid_example.config import Config
from sdmreid import Finding, HealthMonitor, PairCoverageMeter, SDMWeightScheduler

__all__ = ["HealthAdapter"]

#: The direction the health rules advise each setting to move in: +1 raise, -1 lower.
_ADVICE_DIRECTION: Mapping[str, int] = {"label_smoothing": +1, "weight_decay": +1, "head_lr": -1}


class HealthAdapter:
    """Feeds the monitor, logs findings, applies the rollback action when configured."""

    def __init__(
        self,
        cfg: Config,
        sdm_scheduler: SDMWeightScheduler,
        log: logging.Logger,
        num_classes: int,
    ) -> None:
        self.cfg = cfg
        self.enabled = cfg.health.enabled
        self.act = cfg.health.act
        self.every_steps = max(1, cfg.health.every_steps)
        self.sdm_enabled = cfg.loss.sdm
        self.scheduler = sdm_scheduler
        self.log = log
        self.monitor = HealthMonitor(
            num_classes=max(2, num_classes),
            ce_ceiling=cfg.health.ce_ceiling,
            coverage_target=cfg.train.coverage_target,
            # readings arrive every `every_steps` steps; the window is in steps
            coverage_window=max(1, cfg.train.coverage_window),
        )
        self.history: list[str] = []

    def _current(self, name: str, epoch: int) -> float | None:
        """This run's value of a setting a finding suggests (``None`` if not one of ours)."""
        o = self.cfg.optim
        if name == "label_smoothing":
            return self.cfg.loss.label_smoothing
        if name == "weight_decay":
            return o.weight_decay
        if name == "head_lr":
            return o.head_lr_after if epoch >= o.head_lr_switch_epoch else o.head_lr
        return None

    def _suggestion(self, name: str, value: float, epoch: int) -> str:
        """``name=value``, plus this run's value when the advice would not move it the way
        the rule means (e.g. the weight decay 5e-4 of an SGD recipe under AdamW's 0.2)."""
        text = f"{name}={value:g}"
        now = self._current(name, epoch)
        direction = _ADVICE_DIRECTION.get(name, 0)
        if now is not None and direction and (value - now) * direction <= 0:
            already = "higher" if direction > 0 else "lower"
            text += f" (this run: {now:g}, already {already} or equal)"
        return text

    def _report(self, findings: list[Finding]) -> None:
        for f in findings:
            line = str(f)
            if f.suggested:
                line += (
                    " (suggested: "
                    + ", ".join(self._suggestion(k, v, f.epoch) for k, v in f.suggested)
                    + ")"
                )
            if f.action == "rollback_sdm":
                line += " -> SDM rolled back" if self.act else " (health.act=false: not applied)"
            self.history.append(line)
            (self.log.warning if f.severity != "info" else self.log.info)(line)

    def step(
        self,
        epoch: int,
        global_step: int,
        meter: PairCoverageMeter,
        head_weight: torch.Tensor,
    ) -> None:
        """Every ``every_steps`` steps: coverage reading + classifier weight norm."""
        if not self.enabled or global_step % self.every_steps:
            return
        coverage = float(meter.value)
        head_norm = float(head_weight.detach().float().norm())
        cov = coverage if math.isfinite(coverage) else None
        self._report(
            self.monitor.observe_step(
                epoch, global_step, coverage=cov, classifier_weight_norm=head_norm
            )
        )

    def check(
        self,
        epoch: int,
        train_ce: float,
        train_score: float | None = None,
        val_score: float | None = None,
    ) -> list[Finding]:
        """End of an epoch: CE rules, and the overfitting rule on evaluation epochs (where the
        same retrieval score is known for training identities and for the validation split)."""
        if not self.enabled or not math.isfinite(train_ce):
            return []
        sdm_on = bool(self.sdm_enabled and self.scheduler.use_sdm(epoch))
        scores: dict[str, float] = {}
        if (
            train_score is not None
            and val_score is not None
            and math.isfinite(train_score)
            and math.isfinite(val_score)
        ):
            scores = {"train_score": train_score, "val_score": val_score}
        findings = self.monitor.observe_epoch(
            epoch,
            train_ce=train_ce,
            sdm_on=sdm_on,
            scheduler=self.scheduler if (self.act and self.sdm_enabled) else None,
            **scores,
        )
        self._report(findings)
        return findings

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        self.history = [str(x) for x in state["history"]]
