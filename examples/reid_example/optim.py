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
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from reid_example.config import OptimConfig
from reid_example.model import EmbeddingNetwork, param_groups

__all__ = ["LRSchedule", "build_ema", "build_lr_schedule", "build_optimizer", "update_ema"]


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
    # One kernel updates every parameter: fused where the parameters' device has the kernel
    # (CUDA, CPU), else the multi-tensor form. A fused optimiser also skips its update on the
    # device when the training step flags a non-finite step (its found_inf input).
    device = next(p.device for g in groups for p in g["params"])  # type: ignore[attr-defined]
    fused = device.type in _fused_devices()
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused, foreach=not fused)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, fused=fused, foreach=not fused
    )


def _fused_devices() -> list[str]:
    """Device types with fused AdamW/SGD kernels in this torch."""
    import torch.optim.optimizer as base

    supported = getattr(base, "_get_fused_kernels_supported_devices", None)
    return list(supported()) if supported is not None else ["cuda"]


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


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """``ema.update_parameters(model)`` without reading the device.

    :meth:`AveragedModel.update_parameters` asks the device whether it has averaged before
    (``n_averaged == 0``), twice per call; here that count is read once per averaged model
    and then kept on the host, so a training step never waits for it. The update itself is the
    averaged model's own: a copy on the first call, then its ``multi_avg_fn`` on the
    parameters and buffers grouped by device and dtype, and ``n_averaged`` counts the call.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> ema = build_ema(OptimConfig(ema_decay=0.5), net)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(1.0)
        >>> update_ema(ema, net); update_ema(ema, net)
        >>> ema.module.weight.tolist(), int(ema.n_averaged)
        ([[1.0, 1.0]], 2)
    """
    if ema.multi_avg_fn is None or not ema.use_buffers:
        ema.update_parameters(model)  # another averaging: its own (reading) path
        return
    first = _host_count(ema) == 0
    mine = [*ema.module.parameters(), *ema.module.buffers()]
    source = [*model.parameters(), *model.buffers()]
    theirs = [x.detach().to(y.device) for x, y in zip(source, mine, strict=True)]
    if first:
        torch._foreach_copy_(mine, theirs)
    else:
        Pair = tuple[list[torch.Tensor], list[torch.Tensor]]
        groups: dict[tuple[torch.device, torch.dtype], Pair] = {}
        for a, b in zip(mine, theirs, strict=True):
            pair = groups.setdefault((a.device, a.dtype), ([], []))
            pair[0].append(a)
            pair[1].append(b)
        for (device, _), (averaged, current) in groups.items():
            ema.multi_avg_fn(averaged, current, ema.n_averaged.to(device))
    ema.n_averaged += 1
    _HOST_COUNTS[ema] = _host_count(ema) + 1


#: each averaged model's ``n_averaged`` on the host, while it is known there
_HOST_COUNTS: weakref.WeakKeyDictionary[AveragedModel, int] = weakref.WeakKeyDictionary()
#: the averaged models whose ``load_state_dict`` forgets their host count
_WATCHED: weakref.WeakSet[AveragedModel] = weakref.WeakSet()


def _forget_host_count(module: nn.Module, incompatible_keys: object) -> None:
    _HOST_COUNTS.pop(module, None)  # type: ignore[call-overload]


def _host_count(ema: AveragedModel) -> int:
    """``ema.n_averaged`` on the host: read once, then counted by :func:`update_ema` (a
    ``load_state_dict`` makes it read again)."""
    if ema not in _WATCHED:
        ema.register_load_state_dict_post_hook(_forget_host_count)  # type: ignore[no-untyped-call]
        _WATCHED.add(ema)
    if ema not in _HOST_COUNTS:
        _HOST_COUNTS[ema] = int(ema.n_averaged)
    return _HOST_COUNTS[ema]
