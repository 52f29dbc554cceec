"""One training step of the recipe, and the learning-rate schedule it follows.

The step is the recipe in code:

1. forward the mixed batch through the per-modality stems and the shared trunk (autocast on CUDA);
2. label-smoothed cross-entropy on every sample;
3. SDM between the non-RGB rows (queries) and the RGB rows (gallery) plus the cross-batch
   memory of the last steps' RGB embeddings, weighted by :class:`~sdmreid.SDMWeightScheduler`.
   While SDM is off (warm-up, CE-only runs) its statistics are still computed without a graph,
   so the pair coverage is reported for every run;
4. backward, gradient norm, optimiser step; then the batch's RGB embeddings are enqueued in the
   :class:`~sdmreid.CrossBatchMemory` and the weight average (if any) is updated.

Nothing in the step reads the device: the step queues work and returns a :class:`StepRecord`
whose numbers (losses, SDM row counts for the coverage meter, gradient norm, finiteness, the
classifier weight norm for the health monitor) stay on the device. :class:`StepLog` keeps the
records of the steps since the last read and brings them all to the host in **one** read, at a
logging step (``train.log_every``); the trainer feeds the coverage meter, the health monitor and
the metric rows from that read. What the step needs to know on the host it gets from the batch:
the training batches come grouped by modality with their counts
(:func:`~reid_example.data.collate.group_by_modality`), so SDM's query and gallery rows and the
per-modality stems are slices with host-known sizes.

A step whose loss or gradients are not finite is skipped on the device (fused optimisers: their
``found_inf`` input; with a GradScaler, its own check), and the next read raises
:class:`NonFiniteStepError` naming it, before anything is logged or checkpointed.

Every component the step touches is a typed field of :class:`StepContext`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from reid_example.config import Config
from reid_example.model import EmbeddingNetwork, EmbeddingOutput, ReIDModel
from reid_example.optim import LRSchedule, update_ema
from reid_example.runtime import Runtime, is_distributed
from sdmreid import (
    CrossBatchMemory,
    HeadLRSwitch,
    Modality,
    PairCoverageMeter,
    PerModalitySDMResult,
    SDMWeightScheduler,
    sdm_per_modality,
)

__all__ = [
    "NonFiniteStepError",
    "StepContext",
    "StepLog",
    "StepReading",
    "StepRecord",
    "StepScalars",
    "StepSettings",
    "forward",
    "retrieval_embedding",
    "to_device",
    "train_step",
]

Batch = Mapping[str, Any]

#: SDM's query modalities, against the RGB rows and the memory
QUERY_MODALITIES: tuple[Modality, ...] = (
    Modality.NIR,
    Modality.SKETCH,
    Modality.CPENCIL,
    Modality.TEXT,
)
#: the per-query-modality numbers of a step, ``<field>/<MODALITY>``
MODALITY_FIELDS = ("sdm", "rows", "rows_without_positive")
#: the device-side numbers of a step, in :attr:`StepRecord.values` order
RECORD_FIELDS = (
    "ce",
    "sdm",
    "loss",
    "top1",
    "rows",
    "rows_without_positive",
    "grad_norm",
    "finite",
    "head_norm",
    *(f"{f}/{m.name}" for m in QUERY_MODALITIES for f in MODALITY_FIELDS),
)


class NonFiniteStepError(FloatingPointError):
    """A training step produced a non-finite loss or gradient (raised at the next read)."""


@dataclass(frozen=True)
class StepSettings:
    """The options one step reads (from ``loss.*``, ``optim.grad_clip``, ``model.embedding``
    and ``dist.*``; ``train.compile`` through :attr:`Runtime.compile_mode`).

    Example:
        >>> StepSettings.from_config(Config()).sdm_logit_scale
        50.0
    """

    label_smoothing: float
    sdm: bool
    sdm_logit_scale: float
    sdm_compiled: bool
    #: ``pooled`` (one SDM over every query row) or ``per_modality`` (one per query modality)
    sdm_mode: str
    #: ``ce`` (the seed pipeline's form) or ``kl`` (IRRA's)
    sdm_objective: str
    #: ``mean`` (the seed pipeline) or ``sum`` (IRRA) of the two directions
    sdm_directions: str
    #: per_modality weights (a query modality not named weighs 1)
    sdm_weights: Mapping[Modality, float]
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
            sdm_mode=cfg.loss.sdm_mode,
            sdm_objective=cfg.loss.sdm_objective,
            sdm_directions=cfg.loss.sdm_directions,
            sdm_weights=parse_sdm_weights(cfg.loss.sdm_weights, cfg.loss.sdm_mode),
            grad_clip=cfg.optim.grad_clip,
            embedding=cfg.model.embedding,
            gather_sdm=cfg.dist.gather_sdm,
            gather_memory=cfg.dist.gather_memory,
        )


def parse_sdm_weights(items: Sequence[str], mode: str = "per_modality") -> dict[Modality, float]:
    """``loss.sdm_weights`` (``NAME=weight`` items) as a mapping; refused with a message naming
    the option.

    Example:
        >>> parse_sdm_weights(["nir=2", "TEXT=0.5"])
        {<Modality.NIR: 1>: 2.0, <Modality.TEXT: 4>: 0.5}
    """
    weights: dict[Modality, float] = {}
    queries = ", ".join(m.name for m in QUERY_MODALITIES)
    for item in items:
        name, sep, value = str(item).partition("=")
        try:
            modality = Modality[name.strip().upper()]
            weight = float(value)
        except (KeyError, ValueError):
            raise ValueError(
                f"loss.sdm_weights: expected NAME=weight items with NAME one of {queries}, "
                f"got {item!r}"
            ) from None
        if not sep or modality not in QUERY_MODALITIES:
            raise ValueError(
                f"loss.sdm_weights: {item!r} does not name a query modality ({queries})"
            )
        if modality in weights:
            raise ValueError(f"loss.sdm_weights: {modality.name} is named twice")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"loss.sdm_weights: {item!r} needs a finite weight >= 0")
        weights[modality] = weight
    if weights and mode != "per_modality":
        raise ValueError(
            "loss.sdm_weights applies to loss.sdm_mode = 'per_modality'; "
            f"got loss.sdm_mode = {mode!r}"
        )
    if weights and not any(weights.get(m, 1.0) > 0 for m in QUERY_MODALITIES):
        raise ValueError("loss.sdm_weights: at least one query modality needs a weight > 0")
    return weights


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
    #: fed on the host from each read of the step records (see :class:`StepLog`)
    meter: PairCoverageMeter
    ema: AveragedModel | None
    runtime: Runtime
    settings: StepSettings


@dataclass
class StepScalars:
    """The logged numbers of one step, on the host."""

    ce: float
    sdm: float  # NaN when the batch had no query or no gallery side
    loss: float
    top1: float
    sdm_weight: float
    rows: float
    rows_without_positive: float
    grad_norm: float
    batch: float
    #: ``{"sdm/NIR": ..., "rows/NIR": ..., "rows_without_positive/NIR": ...}`` per query modality
    by_modality: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """The numbers, flat (the per-modality ones under their ``<field>/<MODALITY>`` keys)."""
        row = asdict(self)
        return {**{k: v for k, v in row.items() if k != "by_modality"}, **self.by_modality}

    def coverage_counts(self) -> SimpleNamespace:
        """The step's counts in the form :meth:`sdmreid.PairCoverageMeter.update` takes: the
        rows of the step, and each query modality's query rows."""
        per_modality = {
            m: SimpleNamespace(
                query_rows=int(self.by_modality.get(f"rows/{m.name}", 0.0)),
                query_rows_without_positive=int(
                    self.by_modality.get(f"rows_without_positive/{m.name}", 0.0)
                ),
            )
            for m in QUERY_MODALITIES
        }
        return SimpleNamespace(
            rows=int(self.rows),
            rows_without_positive=int(self.rows_without_positive),
            per_modality=per_modality,
        )


@dataclass
class StepRecord:
    """What :func:`train_step` returns: the step's numbers, still on the device.

    ``values`` holds :data:`RECORD_FIELDS` as one float32 vector (nothing has been read).
    """

    epoch: int
    global_step: int
    values: torch.Tensor
    sdm_weight: float
    batch: int


@dataclass(frozen=True)
class StepReading:
    """One step's numbers after a read: the logged scalars and the health inputs."""

    epoch: int
    #: the global step after this step (from 1), as the trainer numbers logged steps
    step: int
    scalars: StepScalars
    #: the L2 norm of the classifier weight after the step (a health input)
    head_norm: float


class StepLog:
    """The records of the steps since the last read.

    :meth:`read` stacks their device vectors and reads them in one device-to-host copy: the one
    host synchronisation of a logging step. A record of a non-finite step makes it raise
    :class:`NonFiniteStepError`.

    Example:
        >>> log = StepLog()
        >>> v = torch.tensor([2.0, math.nan, 2.0, 0.5, 8.0, 1.0, 3.0, 1.0, 4.0] + [0.0] * 12)
        >>> len(v) == len(RECORD_FIELDS)
        True
        >>> log.add(StepRecord(1, 0, v, sdm_weight=0.0, batch=8))
        >>> [r.scalars.ce for r in log.read()], len(log)
        ([2.0], 0)
    """

    def __init__(self) -> None:
        self._pending: list[StepRecord] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, record: StepRecord) -> None:
        """Keep ``record`` until the next :meth:`read`."""
        self._pending.append(record)

    def clear(self) -> None:
        """Forget the pending records (a restored run starts without any)."""
        self._pending.clear()

    def read(self) -> list[StepReading]:
        """Every pending step's numbers, oldest first, in one read of the device.

        Raises:
            NonFiniteStepError: a pending step's loss or gradient norm was not finite; the
                pending records are dropped.
        """
        if not self._pending:
            return []
        records, self._pending = self._pending, []
        rows = torch.stack([r.values for r in records]).tolist()  # the one read
        readings: list[StepReading] = []
        for r, row in zip(records, rows, strict=True):
            values = dict(zip(RECORD_FIELDS, row, strict=True))
            if values["finite"] != 1.0:
                raise NonFiniteStepError(
                    f"training step {r.global_step + 1} (epoch {r.epoch}) is not finite: loss "
                    f"{values['loss']}, CE {values['ce']}, SDM {values['sdm']}, gradient norm "
                    f"{values['grad_norm']}. Its update was skipped (fused optimiser or "
                    "GradScaler); the run stops here, before anything is logged or "
                    "checkpointed. Check the learning rate, train.amp and the data"
                )
            readings.append(
                StepReading(
                    epoch=r.epoch,
                    step=r.global_step + 1,
                    scalars=StepScalars(
                        ce=values["ce"],
                        sdm=values["sdm"],
                        loss=values["loss"],
                        top1=values["top1"],
                        sdm_weight=r.sdm_weight,
                        rows=values["rows"],
                        rows_without_positive=values["rows_without_positive"],
                        grad_norm=values["grad_norm"],
                        batch=float(r.batch),
                        by_modality={k: values[k] for k in RECORD_FIELDS if "/" in k},
                    ),
                    head_norm=values["head_norm"],
                )
            )
        return readings


def forward(
    model: nn.Module, batch: Batch, *, image_counts: tuple[int, ...] | None = None
) -> EmbeddingOutput:
    """The model on a collated batch (empty image or text blocks are passed as ``None``).

    ``image_counts``: the batch's images are grouped by modality with these counts
    (:func:`~reid_example.data.collate.group_by_modality`; :class:`ReIDModel` then slices them
    for its stems without reading the device).
    """
    images = batch["images"] if batch["images"].shape[0] > 0 else None
    tokens = batch["tokens"] if batch["tokens"].shape[0] > 0 else None
    kwargs = {} if image_counts is None else {"image_counts": image_counts}
    # a wrapper (DDP, torch.compile) returns what the ReIDModel returns
    return cast(
        EmbeddingOutput,
        model(
            images, batch["image_rows"], tokens, batch["text_rows"], batch["modalities"], **kwargs
        ),
    )


def image_counts(modality_counts: tuple[int, ...]) -> tuple[int, ...]:
    """The counts of the image modalities (every modality but TEXT), in code order."""
    return tuple(n for code, n in enumerate(modality_counts) if code != int(Modality.TEXT))


def retrieval_embedding(out: EmbeddingOutput, embedding: str) -> torch.Tensor:
    """The embedding SDM, the memory and evaluation use, in float32."""
    return (out.features if embedding == "pre_bn" else out.embeddings).float()


def to_device(batch: Batch, rt: Runtime) -> dict[str, Any]:
    """The batch's tensors on the run's device (asynchronous from pinned memory); other values
    (the host-side counts) as they are."""
    out = {
        k: v.to(rt.device, non_blocking=rt.non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
    if rt.channels_last and out["images"].dim() == 4 and out["images"].shape[0] > 0:
        out["images"] = out["images"].contiguous(memory_format=torch.channels_last)
    return out


def _sides(b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """SDM's gallery rows (RGB) and query rows (every other modality): slices of the batch's
    rows ordered by modality, at host-known offsets (nothing is read from the device)."""
    if "modality_counts" not in b or "rows_by_modality" not in b:
        raise ValueError(
            "a training batch needs 'rows_by_modality' and 'modality_counts' "
            "(reid_example.data.collate.group_by_modality)"
        )
    rows: torch.Tensor = b["rows_by_modality"]
    n_rgb = int(b["modality_counts"][int(Modality.RGB)])
    return rows[:n_rgb], rows[n_rgb:]


def _both_sides(has_query: bool, has_gallery: bool, gather: bool, device: torch.device) -> bool:
    """Whether SDM runs this step (known on the host from the batch's counts). Global SDM is a
    collective: every rank runs it, or none; under torchrun with ``dist.gather_sdm`` the ranks
    agree through one small all-reduce, read on the host."""
    local = has_query and has_gallery
    if not gather:
        return local
    flag = torch.tensor([float(local)], device=device)
    dist.all_reduce(flag)
    return bool(flag.item() == dist.get_world_size())


def _sdm(
    ctx: StepContext,
    emb: torch.Tensor,
    labels: torch.Tensor,
    modalities: torch.Tensor,
    has_sides: bool,
    live: bool,
    logit_scale: float,
) -> PerModalitySDMResult | None:
    """SDM of the batch's query rows (every modality but RGB) against its RGB rows and the
    memory: one softmax over all of them (``loss.sdm_mode = "pooled"``) or one per query
    modality, weighted (``"per_modality"``), in the loss form of ``loss.sdm_objective`` /
    ``loss.sdm_directions``.

    ``live``: the loss joins the graph; otherwise only its statistics are computed. ``None``
    when the batch lacks one of the two sides (``has_sides``, known on the host from the
    batch's counts; every row then counts as without a positive). Nothing is read from the
    device: :func:`sdmreid.sdm_per_modality` selects rows by masks, and
    ``on_nonfinite="ignore"`` leaves finiteness to the step's own flag.
    """
    gather = ctx.settings.gather_sdm and is_distributed()
    if not _both_sides(has_sides, True, gather, emb.device):
        return None
    st = ctx.settings
    weights: dict[Modality | str, float] | None = None
    if st.sdm_mode == "per_modality":
        weights = {m: w for m, w in st.sdm_weights.items()}
    memory = ctx.memory.view() if ctx.memory is not None else None
    source = emb if live else emb.detach()
    with contextlib.nullcontext() if live else torch.no_grad():
        return sdm_per_modality(
            source,
            labels,
            modalities,
            memory,
            query_modalities=QUERY_MODALITIES,
            weights=weights,
            mode=cast(Any, st.sdm_mode),
            logit_scale=logit_scale,
            objective=cast(Any, st.sdm_objective),
            directions=cast(Any, st.sdm_directions),
            gather=gather,
            on_nonfinite="ignore",
            # train.compile compiles SDM in the model's mode too
            compiled=ctx.runtime.compile_mode or st.sdm_compiled,
        )


def _supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Fused optimisers skip their update on the device when given a ``found_inf`` flag."""
    return bool(optimizer.defaults.get("fused"))


def _optimise(ctx: StepContext, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward, gradient norm (clipped when configured), optimiser step, weight average.

    Returns the global gradient norm and whether the loss and every gradient are finite (both
    0-dim device tensors; with a GradScaler only the loss: overflowing fp16 gradients are its
    business). A non-finite step is skipped on the device.
    """
    scaler = ctx.runtime.amp.scaler
    ctx.optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()  # type: ignore[no-untyped-call]
    params = [p for g in ctx.optimizer.param_groups for p in g["params"] if p.grad is not None]
    grads = [p.grad for p in params if p.grad is not None]
    if ctx.settings.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, ctx.settings.grad_clip, foreach=True)
    else:
        # one kernel for every per-parameter norm, not a Python loop over them
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if scaler is None:
        finite = torch.isfinite(torch.stack([loss.detach().float(), grad_norm.float()])).all()
    else:  # an fp16 step with overflowing gradients is the scaler's business (skip, rescale)
        finite = torch.isfinite(loss.detach())
    if scaler is not None:
        scaler.step(ctx.optimizer)  # its own device-side check of the (unscaled) gradients
        scaler.update()
    else:
        if _supports_found_inf(ctx.optimizer):
            # read by fused optimisers (as a GradScaler sets it): 1.0 skips the update
            ctx.optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        ctx.optimizer.step()
    if ctx.ema is not None:
        update_ema(ctx.ema, ctx.raw_model)
    return grad_norm, finite


def _record_values(
    ctx: StepContext,
    b: Batch,
    ce: torch.Tensor,
    loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    sdm: PerModalitySDMResult | None,
    grad_norm: torch.Tensor,
    finite: torch.Tensor,
) -> torch.Tensor:
    """The step's numbers as one float32 vector in :data:`RECORD_FIELDS` order (on the device;
    the counts converted to float in one operation)."""
    top1 = (logits.argmax(dim=1) == labels).float().mean()
    head_norm = torch.linalg.vector_norm(ctx.raw_model.classifier.weight)
    if sdm is None:  # logged as NaN; every row of the batch is without a positive
        n = float(labels.shape[0])
        counts = b["modality_counts"]  # host-known
        host = [math.nan, n, n]
        for m in QUERY_MODALITIES:
            host += [math.nan, float(counts[int(m)]), float(counts[int(m)])]
        parts = list(torch.tensor(host, device=ce.device).unbind())
        sdm_loss_value, rows, without = parts[:3]
        by_modality = parts[3:]
    else:
        terms: list[torch.Tensor] = []
        int_counts = [sdm.rows, sdm.rows_without_positive]
        for m in QUERY_MODALITIES:
            e = sdm.per_modality[m]
            # NaN (left out of the epoch mean) for a modality without rows in this batch
            terms.append(torch.where(e.query_rows > 0, e.loss, math.nan))
            int_counts += [e.query_rows, e.query_rows_without_positive]
        rows, without, *per_counts = torch.stack(int_counts).float().unbind()
        sdm_loss_value = sdm.loss
        by_modality = [
            x for i, t in enumerate(terms) for x in (t, per_counts[2 * i], per_counts[2 * i + 1])
        ]
    return torch.stack(
        [
            ce,
            sdm_loss_value.float(),
            loss,
            top1,
            rows,
            without,
            grad_norm.float(),
            finite.float(),
            head_norm.float(),
            *(t.float() for t in by_modality),
        ]
    )


def train_step(ctx: StepContext, batch: Batch, epoch: int, global_step: int) -> StepRecord:
    """One optimisation step at ``epoch`` (from 1) and ``global_step`` (from 0).

    ``batch`` is a training batch (:func:`~reid_example.data.collate.group_by_modality`) on
    the host or already on the device. Nothing is read from the device (under torchrun, the
    gathered SDM and memory agree on their inputs first, through one small read): the returned
    record's numbers are read later, with those of other steps, by :meth:`StepLog.read`.
    """
    if ctx.runtime.compile_mode == "reduce-overhead":
        # the previous step's graph outputs are no longer needed
        torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
    ctx.lr_schedule.apply(ctx.optimizer, global_step)
    ctx.head_switch.step(epoch)  # after the schedule: pins the head group's LR from its epoch on
    b = to_device(batch, ctx.runtime)
    labels = b["labels"]
    gallery_rows, query_rows = _sides(b)
    # the built-in network slices its per-modality stems by the batch's counts
    counts = image_counts(b["modality_counts"]) if isinstance(ctx.raw_model, ReIDModel) else None
    ctx.model.train()
    with ctx.runtime.amp.autocast():
        out = forward(ctx.model, b, image_counts=counts)
    logits = out.logits.float()
    emb = retrieval_embedding(out, ctx.settings.embedding)
    ce = F.cross_entropy(logits, labels, label_smoothing=ctx.settings.label_smoothing)
    weight = ctx.sdm_scheduler.weight(epoch) if ctx.settings.sdm else 0.0
    # the scheduler's scale of the epoch's stage when loss.sdm_logit_scales sets them
    scale = ctx.sdm_scheduler.logit_scale(epoch) or ctx.settings.sdm_logit_scale
    has_sides = gallery_rows.numel() > 0 and query_rows.numel() > 0
    sdm = _sdm(ctx, emb, labels, b["modalities"], has_sides, live=weight > 0.0, logit_scale=scale)
    loss = ce + weight * sdm.loss if sdm is not None and weight > 0.0 else ce
    grad_norm, finite = _optimise(ctx, loss)
    if ctx.memory is not None:
        # Every step is enqueued (a step without RGB rows still counts towards "the last N
        # steps"); only the RGB rows are stored. Their finiteness is the step's flag, read
        # with the step's numbers (the memory is built with on_nonfinite="ignore").
        ctx.memory.enqueue(
            emb.detach().index_select(0, gallery_rows),
            labels.index_select(0, gallery_rows),
            modalities=Modality.RGB,
            gather=ctx.settings.gather_memory and is_distributed(),
        )
    with torch.no_grad():  # the record's numbers: no graph, no detach per number
        values = _record_values(ctx, b, ce, loss, logits, labels, sdm, grad_norm, finite)
    return StepRecord(
        epoch=epoch,
        global_step=global_step,
        values=values,
        sdm_weight=float(weight),
        batch=int(labels.shape[0]),
    )
