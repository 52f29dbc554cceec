"""One training step of the recipe, and the learning-rate schedule it follows.

The step is the recipe in code:

1. forward the mixed batch through the per-modality stems and the shared trunk (autocast on CUDA);
2. label-smoothed cross-entropy on every sample;
3. SDM between the non-RGB rows (queries) and the RGB rows (gallery) plus the cross-batch
   memory of the last steps' RGB embeddings, weighted by :class:`~sdmreid.SDMWeightScheduler`.
   While SDM is off (warm-up, CE-only runs) its statistics are still computed without a graph,
   so the pair coverage is reported for every run;
4. the SDM result feeds :class:`~sdmreid.PairCoverageMeter`; after the optimiser step the
   batch's RGB embeddings are enqueued in the :class:`~sdmreid.CrossBatchMemory`
   (``keep=Modality.RGB``) and the weight average (if any) is updated.

Every component the step touches is a typed field of :class:`StepContext`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from reid_example.config import Config
from reid_example.model import EmbeddingNetwork, EmbeddingOutput
from reid_example.optim import LRSchedule
from reid_example.runtime import Runtime, is_distributed
from sdmreid import (
    CrossBatchMemory,
    HeadLRSwitch,
    Modality,
    PairCoverageMeter,
    SDMResult,
    SDMWeightScheduler,
    sdm_loss,
)

__all__ = [
    "StepContext",
    "StepScalars",
    "StepSettings",
    "forward",
    "retrieval_embedding",
    "train_step",
]

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class StepSettings:
    """The options one step reads (from ``loss.*``, ``optim.grad_clip``, ``model.embedding``
    and ``dist.*``).

    Example:
        >>> StepSettings.from_config(Config()).sdm_logit_scale
        50.0
    """

    label_smoothing: float
    sdm: bool
    sdm_logit_scale: float
    sdm_compiled: bool
    grad_clip: float
    #: ``pre_bn``: SDM, the memory and evaluation read the trunk feature; ``bn``: the BNNeck's
    embedding: str
    #: under torchrun: SDM's gallery and the memory's entries come from every rank
    gather_sdm: bool
    gather_memory: bool

    @classmethod
    def from_config(cls, cfg: Config) -> StepSettings:
        """The step's options of ``cfg``."""
        return cls(
            label_smoothing=cfg.loss.label_smoothing,
            sdm=cfg.loss.sdm,
            sdm_logit_scale=cfg.loss.sdm_logit_scale,
            sdm_compiled=cfg.loss.sdm_compiled,
            grad_clip=cfg.optim.grad_clip,
            embedding=cfg.model.embedding,
            gather_sdm=cfg.dist.gather_sdm,
            gather_memory=cfg.dist.gather_memory,
        )


@dataclass
class StepContext:
    """Everything one training step touches."""

    #: the module the step calls: the model, or its DDP / compiled wrapper
    model: nn.Module
    #: the unwrapped model (the weight average follows it)
    raw_model: EmbeddingNetwork
    optimizer: torch.optim.Optimizer
    lr_schedule: LRSchedule
    head_switch: HeadLRSwitch
    sdm_scheduler: SDMWeightScheduler
    memory: CrossBatchMemory | None
    meter: PairCoverageMeter
    ema: AveragedModel | None
    runtime: Runtime
    settings: StepSettings


@dataclass
class StepScalars:
    """The logged numbers of one step (read from the device once, at the end of the step)."""

    ce: float
    sdm: float  # NaN when the batch had no query or no gallery side
    loss: float
    top1: float
    sdm_weight: float
    rows: float
    rows_without_positive: float
    grad_norm: float
    batch: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def forward(model: nn.Module, batch: Batch) -> EmbeddingOutput:
    """The model on a collated batch (empty image or text blocks are passed as ``None``)."""
    images = batch["images"] if batch["images"].shape[0] > 0 else None
    tokens = batch["tokens"] if batch["tokens"].shape[0] > 0 else None
    # a wrapper (DDP, torch.compile) returns what the network returns
    return cast(
        EmbeddingOutput,
        model(images, batch["image_rows"], tokens, batch["text_rows"], batch["modalities"]),
    )


def retrieval_embedding(out: EmbeddingOutput, embedding: str) -> torch.Tensor:
    """The embedding SDM, the memory and evaluation use, in float32."""
    return (out.features if embedding == "pre_bn" else out.embeddings).float()


def _to_device(batch: Batch, rt: Runtime) -> dict[str, torch.Tensor]:
    out = {k: v.to(rt.device, non_blocking=rt.non_blocking) for k, v in batch.items()}
    if rt.channels_last and out["images"].dim() == 4 and out["images"].shape[0] > 0:
        out["images"] = out["images"].contiguous(memory_format=torch.channels_last)
    return out


def _both_sides(has_query: bool, has_gallery: bool, gather: bool, device: torch.device) -> bool:
    """Whether SDM runs this step. Global SDM is a collective: every rank runs it, or none."""
    local = has_query and has_gallery
    if not gather:
        return local
    flag = torch.tensor([float(local)], device=device)
    dist.all_reduce(flag)
    return bool(flag.item() == dist.get_world_size())


def _sdm(
    ctx: StepContext, emb: torch.Tensor, labels: torch.Tensor, mods: torch.Tensor, live: bool
) -> SDMResult | None:
    """SDM of the batch's non-RGB rows against its RGB rows and the memory; fed to the meter.

    ``live``: the loss joins the graph; otherwise only its statistics are computed. ``None``
    when the batch lacks one of the two sides (the meter then counts every row as without a
    positive).
    """
    rgb = mods == int(Modality.RGB)
    q_idx = (~rgb).nonzero(as_tuple=True)[0]
    g_idx = rgb.nonzero(as_tuple=True)[0]
    gather = ctx.settings.gather_sdm and is_distributed()
    if not _both_sides(q_idx.numel() > 0, g_idx.numel() > 0, gather, emb.device):
        rows = torch.tensor(labels.shape[0], device=emb.device)
        ctx.meter.update(rows=rows, rows_without_positive=rows)
        return None
    memory = ctx.memory.view() if ctx.memory is not None else None
    source = emb if live else emb.detach()
    with contextlib.nullcontext() if live else torch.no_grad():
        result = sdm_loss(
            source.index_select(0, q_idx),
            source.index_select(0, g_idx),
            labels.index_select(0, q_idx),
            labels.index_select(0, g_idx),
            memory=memory,
            logit_scale=ctx.settings.sdm_logit_scale,
            gather=gather,
            compiled=ctx.settings.sdm_compiled,
        )
    ctx.meter.update(result)
    return result


def _optimise(ctx: StepContext, loss: torch.Tensor) -> torch.Tensor:
    """Backward, clip, optimiser step, weight average; returns the global gradient norm."""
    scaler = ctx.runtime.amp.scaler
    ctx.optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()  # type: ignore[no-untyped-call]
    params = [p for g in ctx.optimizer.param_groups for p in g["params"] if p.grad is not None]
    if ctx.settings.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, ctx.settings.grad_clip)
    else:
        grad_norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params])
        )
    if scaler is not None:
        scaler.step(ctx.optimizer)
        scaler.update()
    else:
        ctx.optimizer.step()
    if ctx.ema is not None:
        ctx.ema.update_parameters(ctx.raw_model)
    return grad_norm


def train_step(ctx: StepContext, batch: Batch, epoch: int, global_step: int) -> StepScalars:
    """One optimisation step at ``epoch`` (from 1) and ``global_step`` (from 0)."""
    ctx.lr_schedule.apply(ctx.optimizer, global_step)
    ctx.head_switch.step(epoch)  # after the schedule: pins the head group's LR from its epoch on
    b = _to_device(batch, ctx.runtime)
    labels, mods = b["labels"], b["modalities"]
    ctx.model.train()
    with ctx.runtime.amp.autocast():
        out = forward(ctx.model, b)
    logits = out.logits.float()
    emb = retrieval_embedding(out, ctx.settings.embedding)
    ce = F.cross_entropy(logits, labels, label_smoothing=ctx.settings.label_smoothing)
    weight = ctx.sdm_scheduler.weight(epoch) if ctx.settings.sdm else 0.0
    sdm = _sdm(ctx, emb, labels, mods, live=weight > 0.0)
    loss = ce + weight * sdm.loss if sdm is not None and weight > 0.0 else ce
    grad_norm = _optimise(ctx, loss)
    if ctx.memory is not None:
        # Every step is enqueued (a step without RGB rows still counts towards "the last N
        # steps"); only the RGB rows are stored.
        ctx.memory.enqueue(
            emb.detach(),
            labels,
            modalities=mods,
            keep=Modality.RGB,
            gather=ctx.settings.gather_memory and is_distributed(),
        )
    top1 = (logits.argmax(dim=1) == labels).float().mean()
    nan = ce.new_full((), math.nan)
    rows = labels.new_tensor(labels.shape[0]) if sdm is None else torch.as_tensor(sdm.rows)
    without = rows if sdm is None else sdm.rows_without_positive
    sdm_value = nan if sdm is None else sdm.loss
    # one device-to-host read for every logged number of the step
    values = torch.stack(
        [
            t.detach().to(device=ce.device, dtype=torch.float32).reshape(())
            for t in (ce, sdm_value, loss, top1, rows, without, grad_norm)
        ]
    ).tolist()
    ce_v, sdm_v, loss_v, top1_v, rows_v, without_v, gn_v = values
    return StepScalars(
        ce=ce_v,
        sdm=sdm_v,
        loss=loss_v,
        top1=top1_v,
        sdm_weight=float(weight),
        rows=rows_v,
        rows_without_positive=without_v,
        grad_norm=gn_v,
        batch=float(labels.shape[0]),
    )
