"""Training step, epoch loop and retrieval evaluation of the reference trainer.

The step is the recipe in code:

1. forward the mixed batch through the per-modality stems and the shared trunk (autocast on CUDA);
2. label-smoothed cross-entropy on every sample;
3. SDM between the non-RGB rows (queries) and the RGB rows (gallery) plus the cross-batch
   memory of the last steps' RGB embeddings, weighted by :class:`SDMWeightScheduler`. While SDM
   is off (warm-up, CE-only runs) its statistics are still computed without a graph, so the pair
   coverage is reported for every run;
4. the SDM result feeds :class:`PairCoverageMeter`; the batch's RGB embeddings are enqueued in
   the memory (``keep=Modality.RGB``) after the optimiser step.

Everything an exact resume needs (optimiser, scaler, scheduler history, sampler position, memory,
meter, RNG states) lives in explicit state dicts assembled by ``train.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdmreid.distributed import (
    all_gather_no_grad,
    all_reduce_sum,
    get_rank,
    get_world_size,
    is_dist,
)
from sdmreid.modality import Modality

__all__ = [
    "AmpSetup",
    "EpochStats",
    "LRSchedule",
    "SkipBatches",
    "StepContext",
    "evaluate_protocols",
    "extract_features",
    "resolve_amp",
    "resolve_device",
    "train_one_epoch",
]

log = logging.getLogger("reid_example")


# --------------------------------------------------------------------------------------------
# Device / precision


def resolve_device(name: str) -> torch.device:
    """``auto`` → the local CUDA device when available (LOCAL_RANK under torchrun), else CPU."""
    import os

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available")
    # torch's stubs type device.index as int, but it is None for a device named without one
    index = cast("int | None", dev.index)
    if dev.type == "cuda" and index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


@dataclass
class AmpSetup:
    """Autocast dtype (``None`` = full precision) and the fp16 GradScaler."""

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    device_type: str

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return "off" if self.dtype is None else str(self.dtype).replace("torch.", "")


def resolve_amp(mode: str, device: torch.device) -> AmpSetup:
    """``auto``: bf16 on CUDA (when supported), off on CPU. ``fp16`` adds a GradScaler."""
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if mode == "off":
        return AmpSetup(None, None, device.type)
    if mode == "bf16":
        return AmpSetup(torch.bfloat16, None, device.type)
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA (use bf16 or off on CPU)")
        return AmpSetup(torch.float16, torch.amp.GradScaler("cuda"), device.type)
    raise ValueError(f"train.amp must be auto, bf16, fp16 or off; got {mode!r}")


# --------------------------------------------------------------------------------------------
# Learning rate


@dataclass
class LRSchedule:
    """Per-step LR factor: linear warm-up, then cosine (or constant) decay to ``min_ratio``.

    A pure function of the global step, so resuming needs only the step.
    """

    total_steps: int
    warmup_steps: int
    kind: str = "cosine"
    min_ratio: float = 0.05

    def factor(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


# --------------------------------------------------------------------------------------------
# Sampler position


class SkipBatches:
    """A batch sampler view that skips the first ``skip`` batches of the wrapped one (resume)."""

    def __init__(self, batch_sampler: Any, skip: int = 0, limit: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip
        self.limit = limit

    def _total(self) -> int:
        n = len(self.batch_sampler)
        return min(n, self.limit) if self.limit > 0 else n

    def __len__(self) -> int:
        return max(0, self._total() - self.skip)

    def __iter__(self) -> Iterator[list[int]]:
        total = self._total()
        for i, batch in enumerate(self.batch_sampler):
            if i >= total:
                return
            if i >= self.skip:
                yield list(batch)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class StepContext:
    """Everything one training step touches (built once by ``train.py``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    amp: AmpSetup
    device: torch.device
    lr_schedule: LRSchedule
    base_lrs: list[float]
    head_switch: Any  # sdmreid.schedules.HeadLRSwitch
    sdm_scheduler: Any  # sdmreid.SDMWeightScheduler
    sdm_fn: Callable[..., Any]  # sdmreid.sdm_loss
    memory: Any | None  # sdmreid.CrossBatchMemory
    meter: Any  # sdmreid.PairCoverageMeter
    label_smoothing: float
    use_sdm_loss: bool
    logit_scale: float
    grad_clip: float
    channels_last: bool
    non_blocking: bool
    gather_sdm: bool = False
    gather_memory: bool = False
    embedding: str = "pre_bn"
    ema: Any | None = None  # torch.optim.swa_utils.AveragedModel of the (unwrapped) model
    ema_source: nn.Module | None = None  # the unwrapped model the average follows


@dataclass
class EpochStats:
    """Means over one epoch's steps (NaN where nothing was measured)."""

    epoch: int
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    ce: float = math.nan
    sdm: float = math.nan
    loss: float = math.nan
    top1: float = math.nan
    sdm_weight: float = 0.0
    pair_coverage: float = math.nan
    rows_without_positive_frac: float = math.nan
    grad_norm: float = math.nan
    sums: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan


def _to_device(batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
    out = {k: v.to(ctx.device, non_blocking=ctx.non_blocking) for k, v in batch.items()}
    if ctx.channels_last and out["images"].dim() == 4 and out["images"].shape[0] > 0:
        out["images"] = out["images"].contiguous(memory_format=torch.channels_last)
    return out


def _forward(model: nn.Module, b: Mapping[str, torch.Tensor]) -> Any:
    images = b["images"] if b["images"].shape[0] > 0 else None
    tokens = b["tokens"] if b["tokens"].shape[0] > 0 else None
    return model(images, b["image_rows"], tokens, b["text_rows"], b["modalities"])


def _set_lr(ctx: StepContext, epoch: int, global_step: int) -> None:
    f = ctx.lr_schedule.factor(global_step)
    for group, base in zip(ctx.optimizer.param_groups, ctx.base_lrs, strict=True):
        group["lr"] = base * f
    # After the schedule: pins the "head" group's LR from its switch epoch on.
    ctx.head_switch.step(epoch)


def train_step(
    ctx: StepContext, batch: Mapping[str, torch.Tensor], epoch: int, global_step: int
) -> dict[str, float]:
    """One optimisation step; returns the step's scalars (one host read, for logging)."""
    _set_lr(ctx, epoch, global_step)
    b = _to_device(batch, ctx)
    labels, mods = b["labels"], b["modalities"]
    ctx.model.train()
    with ctx.amp.autocast():
        out = _forward(ctx.model, b)
    logits = out.logits.float()
    emb = (out.features if ctx.embedding == "pre_bn" else out.embeddings).float()
    ce = F.cross_entropy(logits, labels, label_smoothing=ctx.label_smoothing)

    weight = ctx.sdm_scheduler.weight(epoch) if ctx.use_sdm_loss else 0.0
    rgb = mods == int(Modality.RGB)
    q_idx = (~rgb).nonzero(as_tuple=True)[0]
    g_idx = rgb.nonzero(as_tuple=True)[0]
    mem = ctx.memory.get() if ctx.memory is not None and len(ctx.memory) > 0 else None
    sdm_t = ce.new_full((), math.nan)
    loss = ce
    has_both = q_idx.numel() > 0 and g_idx.numel() > 0
    gather = ctx.gather_sdm and is_dist()
    if gather:
        # Global SDM is a collective: every rank calls it, or none does this step.
        flag = torch.tensor([float(has_both)], device=ctx.device)
        has_both = bool(all_reduce_sum(flag).item() == get_world_size())
    if has_both:
        live = weight > 0.0
        q = emb.index_select(0, q_idx)
        g = emb.index_select(0, g_idx)
        with contextlib.nullcontext() if live else torch.no_grad():
            res = ctx.sdm_fn(
                q if live else q.detach(),
                g if live else g.detach(),
                labels.index_select(0, q_idx),
                labels.index_select(0, g_idx),
                memory=mem,
                logit_scale=ctx.logit_scale,
                gather=gather,
            )
        ctx.meter.update_from(res)
        if live:
            loss = ce + weight * res.loss
        sdm_t = res.loss.detach()
        rows, no_pos = int(res.rows), res.rows_without_positive
    else:
        # A batch without one of the two sides: every row lacks a positive.
        rows = int(q_idx.numel() + g_idx.numel())
        no_pos = torch.tensor(rows)
        ctx.meter.update(rows, rows)

    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.amp.scaler is not None:
        ctx.amp.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        ctx.amp.scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()  # type: ignore[no-untyped-call]
    params = [p for g in ctx.optimizer.param_groups for p in g["params"] if p.grad is not None]
    if ctx.grad_clip > 0:
        gn = torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
    else:
        gn = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params])
        )
    if ctx.amp.scaler is not None:
        ctx.amp.scaler.step(ctx.optimizer)
        ctx.amp.scaler.update()
    else:
        ctx.optimizer.step()
    if ctx.ema is not None:
        ctx.ema.update_parameters(ctx.ema_source if ctx.ema_source is not None else ctx.model)

    if ctx.memory is not None:
        # Every step is enqueued (a step without RGB rows still counts towards "the last N
        # steps"); only the RGB rows are stored.
        ctx.memory.enqueue(
            emb.detach(),
            labels,
            modalities=mods,
            keep=Modality.RGB,
            gather=ctx.gather_memory and is_dist(),
        )
    top1 = (logits.argmax(dim=1) == labels).float().mean()
    # one device-to-host read for every logged scalar of the step
    ce_v, sdm_v, loss_v, top1_v, gn_v, no_pos_v = torch.stack(
        [
            t.detach().to(device=ce.device, dtype=torch.float32).reshape(())
            for t in (ce, sdm_t, loss, top1, gn, no_pos)
        ]
    ).tolist()
    return {
        "ce": ce_v,
        "sdm": sdm_v,
        "loss": loss_v,
        "top1": top1_v,
        "sdm_weight": float(weight),
        "rows": float(rows),
        "rows_without_positive": no_pos_v,
        "grad_norm": gn_v,
        "batch": float(labels.shape[0]),
    }


def train_one_epoch(
    ctx: StepContext,
    loader: Iterable[Mapping[str, torch.Tensor]],
    *,
    epoch: int,
    start_step: int,
    global_step: int,
    total_steps: int,
    on_step: Callable[[int, int, dict[str, float]], bool],
    progress: bool = False,
    acc: Mapping[str, Any] | None = None,
    acc_out: list[dict[str, Any]] | None = None,
) -> tuple[EpochStats, int, bool]:
    """Run the steps of one epoch from ``start_step`` (resume) on.

    ``on_step(step_in_epoch, global_step, scalars)`` is called after every step (logging,
    step checkpoints); returning ``True`` stops the run (``train.stop_after_steps``).

    ``acc`` restores the running sums of an epoch interrupted mid-way (from a checkpoint);
    ``acc_out[0]`` is kept up to date with them after every step, so a step checkpoint can
    store them and the resumed epoch reports the same means as an uninterrupted one.

    Returns:
        (stats of the epoch, the global step after the last one, stopped?)
    """
    stats = EpochStats(epoch=epoch)
    acc = acc or {}
    sums: dict[str, float] = {k: float(v) for k, v in acc.get("sums", {}).items()}
    counts: dict[str, int] = {k: int(v) for k, v in acc.get("counts", {}).items()}
    stats.steps = int(acc.get("steps", 0))
    stats.samples = int(acc.get("samples", 0))
    seconds0 = float(acc.get("seconds", 0.0))
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc=f"epoch {epoch}", leave=False)
    t0 = time.perf_counter()
    step = start_step
    stopped = False
    t_step = time.perf_counter()
    for batch in loader:
        scalars = train_step(ctx, batch, epoch, global_step)
        now = time.perf_counter()
        # data wait + step, per process (timing only: never part of any exact comparison)
        scalars["images_per_second"] = scalars["batch"] / max(now - t_step, 1e-9)
        t_step = now
        global_step += 1
        step += 1
        stats.steps += 1
        stats.samples += int(scalars["batch"])
        for k, v in scalars.items():
            if math.isfinite(v) and k != "images_per_second":
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
        if acc_out is not None:
            acc_out[0] = {
                "sums": dict(sums),
                "counts": dict(counts),
                "steps": stats.steps,
                "samples": stats.samples,
                "seconds": seconds0 + time.perf_counter() - t0,
            }
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ce=f"{scalars['ce']:.3f}", top1=f"{scalars['top1']:.2f}")
        if on_step(step, global_step, scalars):
            stopped = True
            break
    if bar is not None:
        bar.close()
    stats.seconds = seconds0 + time.perf_counter() - t0
    for k in ("ce", "sdm", "loss", "top1", "grad_norm"):
        if counts.get(k):
            setattr(stats, k, sums[k] / counts[k])
    stats.sdm_weight = ctx.sdm_scheduler.weight(epoch) if ctx.use_sdm_loss else 0.0
    stats.pair_coverage = float(ctx.meter.value)
    if sums.get("rows"):
        stats.rows_without_positive_frac = sums.get("rows_without_positive", 0.0) / sums["rows"]
    stats.sums = sums
    return stats, global_step, stopped


# --------------------------------------------------------------------------------------------
# Evaluation


def _shard(n: int) -> np.ndarray:
    return np.arange(get_rank(), n, get_world_size(), dtype=np.int64)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Any,
    *,
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    device: torch.device,
    amp: AmpSetup,
    channels_last: bool = False,
    num_workers: int = 0,
    embedding: str = "pre_bn",
    flip: bool = False,
) -> torch.Tensor:
    """Retrieval embeddings ``[len(dataset), d]`` (float32, CPU) in dataset order.

    ``embedding`` picks the trunk feature (``pre_bn``) or the BNNeck output (``bn``). With
    ``flip`` an image's embedding is the mean of the embeddings of the image and of its
    horizontal mirror (text items are embedded once).

    Under torch.distributed each rank embeds an interleaved shard and the shards are gathered.
    """
    from torch.utils.data import DataLoader, Subset

    model.eval()
    idx = _shard(len(dataset)) if is_dist() else np.arange(len(dataset), dtype=np.int64)
    loader = DataLoader(
        Subset(dataset, idx.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
    )
    chunks: list[torch.Tensor] = []
    for batch in loader:
        b = {k: v.to(device) for k, v in batch.items()}
        if channels_last and b["images"].dim() == 4 and b["images"].shape[0] > 0:
            b["images"] = b["images"].contiguous(memory_format=torch.channels_last)
        with amp.autocast():
            out = _forward(model, b)
        feat = (out.features if embedding == "pre_bn" else out.embeddings).float()
        if flip and b["images"].shape[0] > 0:
            with amp.autocast():
                mirrored = _forward(model, {**b, "images": b["images"].flip(-1)})
            rows = b["image_rows"]
            other = (mirrored.features if embedding == "pre_bn" else mirrored.embeddings).float()
            feat[rows] = 0.5 * (feat[rows] + other[rows])
        chunks.append(feat)
    dim = chunks[0].shape[1] if chunks else int(getattr(model, "embed_dim", 1))
    local = torch.cat(chunks) if chunks else torch.zeros(0, dim, device=device)
    if not is_dist():
        return local.cpu()
    gathered = all_gather_no_grad(local.to(device)).cpu()
    # Undo the interleaving: rank r holds items r, r + W, r + 2W, ...
    sizes = [len(range(r, len(dataset), get_world_size())) for r in range(get_world_size())]
    order = np.concatenate(
        [np.arange(r, len(dataset), get_world_size()) for r in range(get_world_size())]
    )
    assert sum(sizes) == gathered.shape[0]
    out_t = torch.empty_like(gathered)
    out_t[torch.from_numpy(order)] = gathered
    return out_t


def evaluate_protocols(
    feats: torch.Tensor,
    dataset: Any,
    protocols: Sequence[Any],
    evaluate: Callable[..., Any],
    ignore_rule: Callable[..., Any] | None = None,
) -> dict[str, dict[str, float]]:
    """``{protocol: {"mAP", "mINP", "rank1", "rank5", "rank10"}}`` via ``evaluate_retrieval``.

    ``feats`` are the embeddings of every item of ``dataset`` (one evaluation split);
    each protocol names its query and gallery as index arrays into it, plus the benchmark's
    camera rule (``none``, ``same_identity_camera``, or ``sysu``: camera-3 queries ignore every
    camera-2 item, identity-de-duplicated CMC).
    """
    results: dict[str, dict[str, float]] = {}
    ids = np.asarray(dataset.identities)
    cams = np.asarray(dataset.cameras)
    for p in protocols:
        q, g = np.asarray(p.query, dtype=np.int64), np.asarray(p.gallery, dtype=np.int64)
        if q.size == 0 or g.size == 0:
            log.warning("protocol %s: no query or gallery items; skipped", p.name)
            continue
        kwargs: dict[str, Any] = {}
        rule = getattr(p, "camera_rule", "none")
        if rule == "same_identity_camera":
            kwargs = {"query_cams": cams[q], "gallery_cams": cams[g]}
        elif rule == "sysu":
            assert ignore_rule is not None
            rule_fn = ignore_rule(cams[q], cams[g], {3: [2], 2: [3]})
            kwargs = {"ignore": rule_fn, "dedup_cmc": True}
        try:
            m = evaluate(
                feats[torch.from_numpy(q)], ids[q], feats[torch.from_numpy(g)], ids[g], **kwargs
            )
        except ValueError as err:  # e.g. no query with a positive
            log.warning("protocol %s: %s", p.name, err)
            continue
        results[p.name] = {
            "mAP": float(m.mAP),
            "mINP": float(m.mINP),
            "rank1": float(m.rank1),
            "rank5": float(m.rank5),
            "rank10": float(m.rank10),
        }
    return results
