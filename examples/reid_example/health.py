"""Glue between the trainer and :class:`sdmreid.HealthMonitor`.

* Step level (every ``health.every_steps`` global steps): the pair-coverage reading and the
  classifier weight norm go to :meth:`HealthMonitor.update_step`. Both are host numbers: the
  trainer reads the steps' numbers at its logging steps and replays each step's duties, so a
  step-level finding is logged at the next logging step, with the step it belongs to.
* Epoch level: the epoch's mean CE and whether SDM was on go to
  :meth:`HealthMonitor.update_epoch`; on evaluation epochs also the selection score of the
  validation split and the same score on training identities (``eval.train_ids``), which feed
  the ``overfitting`` rule. With ``health.act = true`` the monitor is given the SDM
  weight scheduler, so a ``ce_near_chance`` finding rolls SDM back one stage at once (sticky,
  recorded in the scheduler's state). Other actions (reduce P/K, regularise, lower the head LR)
  are suggestions: they are logged, never applied silently.

The monitor's advice starts from the run's own settings (weight decay, label smoothing and the
head LR in force at that epoch), so it always names a change from what the run does.

Every finding is logged as one ``[health] ...`` line and kept for the report.

Example:
    >>> from reid_example.config import Config
    >>> from sdmreid import SDMWeightScheduler
    >>> adapter = HealthAdapter(Config(), SDMWeightScheduler(), logging.getLogger("doc"), 100)
    >>> adapter.settings(1).head_lr, adapter.settings(2).head_lr  # the head-LR switch at epoch 2
    (0.01, 0.003)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from reid_example.config import Config
from sdmreid import (
    Finding,
    HealthMonitor,
    PairCoverageMeter,
    RunSettings,
    SDMWeightScheduler,
    Severity,
)

__all__ = ["HealthAdapter"]


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
            settings=self.settings(1),
            ce_ceiling=cfg.health.ce_ceiling,
            coverage_target=cfg.train.coverage_target,
            # readings arrive every `every_steps` steps; the window is in steps
            coverage_window=max(1, cfg.train.coverage_window),
        )
        self.history: list[str] = []

    def settings(self, epoch: int) -> RunSettings:
        """The run's settings the advice starts from, at ``epoch``."""
        o = self.cfg.optim
        head_lr = o.head_lr_after if epoch >= o.head_lr_switch_epoch else o.head_lr
        return RunSettings(
            weight_decay=o.weight_decay,
            label_smoothing=self.cfg.loss.label_smoothing,
            head_lr=head_lr,
        )

    def _report(self, findings: list[Finding]) -> None:
        for f in findings:
            line = str(f)
            if f.action == "rollback_sdm":
                line += " -> SDM rolled back" if self.act else " (health.act=false: not applied)"
            self.history.append(line)
            (self.log.warning if f.severity != Severity.INFO else self.log.info)(line)

    def step(
        self,
        epoch: int,
        global_step: int,
        meter: PairCoverageMeter,
        head_norm: float,
        ce: float = math.nan,
    ) -> None:
        """Every ``every_steps`` steps: coverage reading, classifier weight norm (the L2 norm
        of the classifier weight after that step, read with the step's numbers) and the step's
        identity cross-entropy for the loss-spike rules. CE rather than the total loss: the
        total jumps by design whenever the SDM weight steps up, CE does not."""
        if not self.enabled or global_step % self.every_steps:
            return
        self.monitor.settings = self.settings(epoch)
        findings = self.monitor.update_step(
            epoch,
            global_step,
            coverage=float(meter.compute()),  # NaN before the first reading: skipped
            classifier_weight_norm=head_norm,
            loss=ce if math.isfinite(ce) else None,
        )
        self._report(findings)

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
        scored = (
            train_score is not None
            and val_score is not None
            and math.isfinite(train_score)
            and math.isfinite(val_score)
        )
        self.monitor.settings = self.settings(epoch)
        findings = self.monitor.update_epoch(
            epoch,
            train_ce=train_ce,
            sdm_on=bool(self.sdm_enabled and self.scheduler.use_sdm(epoch)),
            train_score=train_score if scored else None,
            val_score=val_score if scored else None,
            scheduler=self.scheduler if (self.act and self.sdm_enabled) else None,
        )
        self._report(findings)
        return findings

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        self.history = [str(x) for x in state["history"]]
