"""Optimiser, learning-rate schedule and weight average of the reference trainer.

Example:
    >>> from reid_example.config import Config
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> s = build_lr_schedule(Config().optim, opt, steps_per_epoch=10, epochs=5)
    >>> s.base_lrs, s.warmup_steps, s.total_steps
    ([0.1], 10, 50)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from reid_example.config import OptimConfig
from reid_example.model import EmbeddingNetwork, param_groups

__all__ = ["LRSchedule", "build_ema", "build_lr_schedule", "build_optimizer"]


@dataclass
class LRSchedule:
    """Per-step LR: linear warm-up, then cosine (or constant) decay to ``min_ratio`` of each
    param group's base LR. A pure function of the global step, so resuming needs only the step.

    Example:
        >>> s = LRSchedule([1e-3], total_steps=100, warmup_steps=10)
        >>> s.factor(0), s.factor(9), round(s.factor(100), 3)
        (0.1, 1.0, 0.05)
    """

    base_lrs: list[float]
    total_steps: int
    warmup_steps: int
    kind: str = "cosine"
    min_ratio: float = 0.05

    def factor(self, step: int) -> float:
        """The fraction of the base LRs used at global ``step`` (counted from 0)."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set every param group's LR for global ``step``."""
        f = self.factor(step)
        for group, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f


def build_optimizer(cfg: OptimConfig, model: EmbeddingNetwork) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD over the model's ``backbone`` / ``backbone_no_decay`` / ``head``
    groups (see :func:`~reid_example.model.param_groups`)."""
    groups = param_groups(model, lr=cfg.lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def build_lr_schedule(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int
) -> LRSchedule:
    """The schedule of ``optim.warmup_epochs`` / ``optim.schedule`` / ``optim.min_lr_ratio``
    over the optimiser's param groups, from their current (base) learning rates."""
    return LRSchedule(
        base_lrs=[float(g["lr"]) for g in optimizer.param_groups],
        total_steps=steps_per_epoch * epochs,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        kind=cfg.schedule,
        min_ratio=cfg.min_lr_ratio,
    )


def build_ema(cfg: OptimConfig, model: EmbeddingNetwork) -> AveragedModel | None:
    """The exponential moving average of the weights and BN statistics (``optim.ema_decay``;
    ``None`` when off). Evaluation reads the average, training updates the model."""
    if cfg.ema_decay <= 0:
        return None
    return AveragedModel(
        model,
        multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),  # type: ignore[no-untyped-call]
        use_buffers=True,
    )
