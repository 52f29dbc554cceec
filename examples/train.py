#!/usr/bin/env python
"""Reference trainer: cross-modal ReID with cross-entropy + scheduled SDM, end to end.

Reads top to bottom as the pipeline:

1. configuration (TOML + ``--set`` overrides);
2. process group (torchrun), device, precision, seeds;
3. run directory and logging (rank 0 writes);
4. data: train split with the modality-aware P×K sampler, validation and test query/gallery;
5. model (per-modality stems → shared ViT trunk → BNNeck + classifier), optimiser, AMP;
6. the sdmreid components: SDM loss, cross-batch memory, SDM weight schedule, head-LR switch,
   pair-coverage meter, health monitor;
7. resume from a checkpoint;
8. the epochs: train → health → validate → checkpoint (best = validation, never test);
9. the best checkpoint on the test split, plots and ``report.md``.

Usage::

    python examples/train.py --config examples/configs/demo.toml
    python examples/train.py --config examples/configs/default.toml --set train.epochs=10
    python examples/train.py --resume runs/demo-seed0/last.pt
    torchrun --nproc_per_node=2 examples/train.py --config ... --set dist.backend=gloo
    python examples/train.py --help       # every option with its default
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from reid_example.builders import build_data, build_train_loader
from reid_example.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from reid_example.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    describe_options,
    load_config,
)
from reid_example.engine import (
    LRSchedule,
    StepContext,
    evaluate_protocols,
    extract_features,
    resolve_amp,
    resolve_device,
    train_one_epoch,
)
from reid_example.health import HealthAdapter
from reid_example.logging_utils import progress_enabled, setup_logging
from reid_example.model import build_model, count_parameters, param_groups
from reid_example.reporting import MetricsLog, write_plots, write_report
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sdmreid.distributed import all_reduce_sum, get_rank, get_world_size, is_dist
from sdmreid.evaluation import camera_pair_ignore, evaluate_retrieval
from sdmreid.losses import sdm_loss
from sdmreid.memory import CrossBatchMemory
from sdmreid.monitoring import PairCoverageMeter
from sdmreid.schedules import HeadLRSwitch, SDMWeightScheduler

CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------------------------------------
# 1. configuration


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Cross-modal ReID reference trainer (CE + scheduled SDM).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="options (set in the TOML file or with --set section.key=value):\n\n"
        + describe_options(),
    )
    parser.add_argument("--config", type=str, default=None, help="TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one option, e.g. --set train.epochs=5 (repeatable)",
    )
    parser.add_argument(
        "--resume", type=str, default=None, help="checkpoint to resume from (e.g. runs/x/last.pt)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.resume:
            cfg = apply_overrides(cfg, [f"checkpoint.resume={args.resume}"])
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        parser.error(str(err))
    return cfg, args


def config_toml(cfg: Config) -> str:
    """The resolved config as TOML text (for the run directory and the report)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    lines: list[str] = []
    for sec, opts in config_to_dict(cfg).items():
        lines.append(f"[{sec}]")
        lines.extend(f"{k} = {val(v)}" for k, v in opts.items())
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# 2. process group, device, seeds


def init_distributed(cfg: Config, device: torch.device) -> None:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_dist():
        return
    backend = cfg.dist.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))


def seed_everything(seed: int) -> np.random.Generator:
    """Seed the torch default generators (model init, dropout) and return the run's NumPy RNG."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------
# the run


def run_name(cfg: Config, config_path: str | None) -> str:
    if cfg.output.name:
        return cfg.output.name
    stem = Path(config_path).stem if config_path else "default"
    return f"{stem}-seed{cfg.train.seed}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    # 1. configuration ----------------------------------------------------------------------
    cfg, args = parse_args(argv)
    resume_path = cfg.checkpoint.resume
    resume_state: dict[str, Any] | None = None
    if resume_path:
        resume_state = load_checkpoint(resume_path)
        # The checkpoint's config is the run's config; command-line --set still wins.
        cfg = apply_overrides(
            config_from_dict(resume_state["config"]),
            [*args.overrides, f"checkpoint.resume={resume_path}"],
        )
    if args.print_config:
        print(config_toml(cfg))
        return {}

    # 2. process group, device, precision, seeds ----------------------------------------------
    device = resolve_device(cfg.train.device)
    init_distributed(cfg, device)
    rank, world = get_rank(), get_world_size()
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    amp = resolve_amp(cfg.train.amp, device)
    np_rng = seed_everything(cfg.train.seed + rank)

    # 3. run directory and logging ------------------------------------------------------------
    run_dir = (
        Path(resume_path).resolve().parent
        if resume_path
        else Path(cfg.output.root) / run_name(cfg, args.config)
    )
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_toml(cfg))
    log = setup_logging(run_dir if rank == 0 else None, rank)
    metrics = MetricsLog(run_dir, tensorboard=cfg.output.tensorboard, enabled=rank == 0)
    show_progress = progress_enabled(cfg.output.progress, rank)
    log.info(
        "run %s | device %s | amp %s | world %d | torch %s",
        run_dir,
        device,
        amp.name,
        world,
        torch.__version__,
    )

    # 4. data ------------------------------------------------------------------------------------
    data = build_data(cfg)
    log.info(data.describe())

    # 5. model, optimiser ------------------------------------------------------------------------
    model = build_model(
        cfg.model,
        num_classes=data.num_classes,
        vocab_size=data.vocab_size,
        image_size=data.image_size,
        text_length=cfg.data.text_length,
    ).to(device)
    use_channels_last = cfg.train.channels_last and device.type == "cuda"
    if use_channels_last:
        # torch's stubs omit Module.to's memory_format-only overload (accepted at runtime)
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    log.info(
        "model: %.2fM parameters, sdpa backend %s",
        count_parameters(model) / 1e6,
        cfg.model.sdpa_backend,
    )
    groups = param_groups(
        model, lr=cfg.optim.lr, head_lr=cfg.optim.head_lr, weight_decay=cfg.optim.weight_decay
    )
    if cfg.optim.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr)
    else:
        optimizer = torch.optim.SGD(
            groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=True
        )
    base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    # weight averaging (optim.ema_decay): evaluation reads the average, training the raw model
    ema: AveragedModel | None = None
    if cfg.optim.ema_decay > 0:
        ema = AveragedModel(
            model,
            multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay),  # type: ignore[no-untyped-call]
            use_buffers=True,
        )
    eval_model: torch.nn.Module = ema.module if ema is not None else model
    train_model: torch.nn.Module = model
    if is_dist():
        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.dist.find_unused_parameters,
        )
    if cfg.train.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]

    # 6. sdmreid components ----------------------------------------------------------------------
    sdm_scheduler = SDMWeightScheduler(
        warmup_epochs=cfg.loss.sdm_warmup_epochs, schedule=cfg.loss.sdm_schedule
    )
    head_switch = HeadLRSwitch(
        optimizer,
        group="head",
        lr=cfg.optim.head_lr_after,
        from_epoch=cfg.optim.head_lr_switch_epoch,
    )
    memory = (
        CrossBatchMemory(model.embed_dim, max_steps=cfg.loss.memory_steps).to(device)
        if cfg.loss.memory
        else None
    )
    meter = PairCoverageMeter(window=cfg.train.coverage_window, target=cfg.train.coverage_target)
    health = HealthAdapter(cfg, sdm_scheduler, log, num_classes=data.num_classes)

    train_loader, batch_sampler = build_train_loader(cfg, data, device, rank=rank, world=world)
    batch_sampler.configure(1, start=0, limit=0)
    steps_per_epoch = len(batch_sampler)  # nominal (epoch 1); later epochs may differ slightly
    if cfg.train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.train.epochs
    lr_schedule = LRSchedule(
        total_steps=total_steps,
        warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch),
        kind=cfg.optim.schedule,
        min_ratio=cfg.optim.min_lr_ratio,
    )
    ctx = StepContext(
        model=train_model,
        optimizer=optimizer,
        amp=amp,
        device=device,
        lr_schedule=lr_schedule,
        base_lrs=base_lrs,
        head_switch=head_switch,
        sdm_scheduler=sdm_scheduler,
        sdm_fn=functools.partial(sdm_loss, compiled=cfg.loss.sdm_compiled),
        memory=memory,
        meter=meter,
        label_smoothing=cfg.loss.label_smoothing,
        use_sdm_loss=cfg.loss.sdm,
        logit_scale=cfg.loss.sdm_logit_scale,
        grad_clip=cfg.optim.grad_clip,
        channels_last=use_channels_last,
        non_blocking=cfg.data.pin_memory and device.type == "cuda",
        gather_sdm=cfg.dist.gather_sdm,
        gather_memory=cfg.dist.gather_memory,
        embedding=cfg.model.embedding,
        ema=ema,
        ema_source=model,
    )

    # 7. resume ------------------------------------------------------------------------------
    epoch, step_in_epoch, global_step = 1, 0, 0
    epoch_acc: dict[str, Any] = {}  # running sums of the current epoch (mid-epoch resume)
    best: dict[str, Any] = {"metric": -math.inf, "epoch": 0, "val": {}}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.load_state_dict(resume_state["ema"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if amp.scaler is not None and resume_state.get("scaler"):
            amp.scaler.load_state_dict(resume_state["scaler"])
        sdm_scheduler.load_state_dict(resume_state["sdm_scheduler"])
        head_switch.load_state_dict(resume_state["head_switch"])
        if memory is not None and resume_state.get("memory") is not None:
            memory.load_state_dict(resume_state["memory"])
        meter.load_state_dict(resume_state["meter"])
        health.load_state_dict(resume_state["health"])
        restore_rng(resume_state["rng"], np_rng)
        epoch = int(resume_state["epoch"])
        step_in_epoch = int(resume_state["step_in_epoch"])
        global_step = int(resume_state["global_step"])
        best = dict(resume_state["best"])
        epoch_acc = dict(resume_state["epoch_acc"])
        saved_world = int(resume_state["sampler"]["world_size"])
        if saved_world != world and step_in_epoch > 0:
            log.warning(
                "checkpoint was written by %d processes, resuming with %d: epoch %d restarts "
                "from its first batch (per-rank batch positions do not carry over)",
                saved_world,
                world,
                epoch,
            )
            step_in_epoch, epoch_acc = 0, {}
        metrics.truncate_after(global_step)
        log.info(
            "resumed from %s at epoch %d step %d (global %d)",
            resume_path,
            epoch,
            step_in_epoch,
            global_step,
        )

    def checkpoint_state(ep: int, sie: int) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": config_to_dict(cfg),
            "epoch": ep,
            "step_in_epoch": sie,
            "global_step": global_step_box[0],
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scaler": amp.scaler.state_dict() if amp.scaler is not None else None,
            "lr": {
                "global_step": global_step_box[0],
                "factor": lr_schedule.factor(global_step_box[0]),
            },
            "sdm_scheduler": sdm_scheduler.state_dict(),
            "head_switch": head_switch.state_dict(),
            "sampler": {"epoch": ep, "batches_done": sie, "world_size": world},
            "memory": memory.state_dict() if memory is not None else None,
            "meter": meter.state_dict(),
            "health": health.state_dict(),
            "rng": capture_rng(np_rng),
            "best": best,
            "epoch_acc": epoch_acc_box[0] if sie > 0 else {},
        }

    global_step_box = [global_step]
    epoch_acc_box: list[dict[str, Any]] = [epoch_acc]

    def save(name: str, ep: int, sie: int) -> None:
        if rank == 0:
            save_checkpoint(checkpoint_state(ep, sie), run_dir / name)

    # 8. epochs --------------------------------------------------------------------------------
    stopped = False
    last_val: dict[str, dict[str, float]] = {}
    train_split = train_score_split(data, cfg)
    throughput: list[float] = []
    t_run = time.perf_counter()
    while epoch <= cfg.train.epochs and not stopped:
        data.train.set_epoch(epoch)  # augmentation stream (seed, epoch, index)
        batch_sampler.configure(epoch, start=step_in_epoch, limit=steps_per_epoch)
        log.info(
            sdm_scheduler.log_line(epoch)
            if cfg.loss.sdm
            else f"[sdm] epoch={epoch} weight=0.000 use_sdm=False"
        )

        def on_step(sie: int, gstep: int, scalars: dict[str, float], _ep: int = epoch) -> bool:
            global_step_box[0] = gstep
            health.step(_ep, gstep, meter, model.classifier.weight)
            if gstep % cfg.train.coverage_every == 0:
                if is_dist():
                    meter.sync()
                log.info(meter.log_line())
            if gstep % cfg.train.log_every == 0 or sie == steps_per_epoch:
                lrs = {f"lr/{g['name']}": float(g["lr"]) for g in optimizer.param_groups}
                metrics.log_step(
                    {
                        "step": gstep,
                        "epoch": _ep,
                        **scalars,
                        "pair_coverage": float(meter.value),
                        **lrs,
                    }
                )
            if cfg.checkpoint.every_steps and gstep % cfg.checkpoint.every_steps == 0:
                save("last.pt", _ep, sie)
            if cfg.train.stop_after_steps and gstep >= cfg.train.stop_after_steps:
                save("last.pt", _ep, sie)
                return True
            return False

        stats, global_step, stopped = train_one_epoch(
            ctx,
            train_loader,
            epoch=epoch,
            start_step=step_in_epoch,
            global_step=global_step,
            total_steps=step_in_epoch + len(batch_sampler),
            on_step=on_step,
            progress=show_progress,
            acc=epoch_acc,
            acc_out=epoch_acc_box,
        )
        epoch_acc = {}
        global_step_box[0] = global_step
        if stopped:
            log.info(
                "stopped after global step %d (train.stop_after_steps); checkpoint %s",
                global_step,
                run_dir / "last.pt",
            )
            break
        if is_dist():  # every rank sees (and acts on) the same epoch means
            for key in ("ce", "sdm", "loss", "top1"):
                v = torch.tensor([getattr(stats, key)], dtype=torch.float64, device=device)
                setattr(stats, key, float(all_reduce_sum(v).item()) / world)
        throughput.append(stats.images_per_second * world)
        log.info(
            "epoch %d | CE %.4f | SDM %.4f (w=%.3f) | top1 %.3f | pair_coverage %.3f | "
            "%.1f img/s | %.1fs",
            epoch,
            stats.ce,
            stats.sdm,
            stats.sdm_weight,
            stats.top1,
            stats.pair_coverage,
            stats.images_per_second * world,
            stats.seconds,
        )

        row: dict[str, Any] = {
            "epoch": epoch,
            "step": global_step,
            "ce": stats.ce,
            "sdm": stats.sdm,
            "loss": stats.loss,
            "top1": stats.top1,
            "sdm_weight": stats.sdm_weight,
            "pair_coverage": stats.pair_coverage,
            "rows_without_positive_frac": stats.rows_without_positive_frac,
            "images_per_second": stats.images_per_second * world,
            "seconds": stats.seconds,
        }
        is_eval_epoch = epoch % max(1, cfg.eval.every) == 0 or epoch == cfg.train.epochs
        train_score = val_score = None
        if is_eval_epoch:
            last_val = evaluate_split(eval_model, data, "val", cfg, device, amp, use_channels_last)
            log.info(format_metrics("val", epoch, last_val))
            for proto, m in last_val.items():
                for k in ("mAP", "rank1", "mINP"):
                    row[f"val/{k}/{proto}"] = m[k]
            score = select_score(last_val, cfg.eval.select_metric)
            row["val/select"] = score
            if train_split is not None:  # the same score on training identities
                on_train = evaluate_dataset(
                    eval_model, *train_split, data.collate, cfg, device, amp, use_channels_last
                )
                n_train_ids = len(np.unique(train_split[0].identities))
                log.info(format_metrics(f"train ({n_train_ids} ids)", epoch, on_train))
                for proto, m in on_train.items():
                    row[f"train/mAP/{proto}"] = m["mAP"]
                # compared on the protocols both sides have
                common = [k for k in last_val if k in on_train]
                train_score, val_score = (
                    select_score({k: r[k] for k in common}, cfg.eval.select_metric, math.nan)
                    for r in (on_train, last_val)
                )
                row["train/select"] = train_score
            if math.isfinite(score) and score > best["metric"]:
                best = {"metric": score, "epoch": epoch, "val": last_val}
                save("best.pt", epoch + 1, 0)
                log.info("new best %s=%.4f at epoch %d", cfg.eval.select_metric, score, epoch)
        # health: findings are logged; with health.act the SDM weight rolls back
        findings = health.check(epoch, stats.ce, train_score, val_score)
        row["findings"] = len(findings)
        metrics.log_epoch(row)
        if epoch % max(1, cfg.checkpoint.every_epochs) == 0 or epoch == cfg.train.epochs:
            save("last.pt", epoch + 1, 0)
        epoch, step_in_epoch = epoch + 1, 0

    train_seconds = time.perf_counter() - t_run
    # Release the DDP wrapper (its reducer holds the process group) and the loader's workers
    # here, before destroy_process_group, not during interpreter shutdown: a gloo group torn
    # down at exit can abort a rank ("terminate called without an active exception").
    del ctx, train_model, train_loader
    gc.collect()
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "stopped": stopped,
        "global_step": global_step,
        "best_epoch": best["epoch"],
        "best_val": best.get("val", {}),
        "val": last_val,
        "pair_coverage": float(meter.value),
        "train_seconds": train_seconds,
        "images_per_second": float(np.median(throughput)) if throughput else math.nan,
        "findings": [f for f in health.history],
    }
    if stopped:
        _finish(metrics)
        return summary

    # 9. test the best checkpoint; plots and report ----------------------------------------------
    test: dict[str, dict[str, float]] = {}
    if cfg.eval.test_at_end:
        if is_dist():
            dist.barrier()  # rank 0 has finished writing best.pt
        if best["epoch"] and (run_dir / "best.pt").exists():
            ck = load_checkpoint(run_dir / "best.pt")
            if ema is not None and ck.get("ema") is not None:
                ema.load_state_dict(ck["ema"])
            else:
                model.load_state_dict(ck["model"])
        test = evaluate_split(eval_model, data, "test", cfg, device, amp, use_channels_last)
        log.info(format_metrics(f"test (best epoch {best['epoch']})", best["epoch"], test))
    summary["test"] = test
    if rank == 0:
        report = write_run_report(cfg, run_dir, metrics, summary, health, data)
        summary["report"] = str(report)
        log.info("report: %s", report)
    _finish(metrics)
    return summary


def _finish(metrics: MetricsLog) -> None:
    metrics.close()
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# evaluation helpers


def evaluate_dataset(
    model: torch.nn.Module,
    dataset: Any,
    protocols: Sequence[Any],
    collate: Any,
    cfg: Config,
    device: torch.device,
    amp: Any,
    channels_last: bool,
    benchmark_fn: Any = None,
) -> dict[str, dict[str, float]]:
    """Embed ``dataset`` and evaluate ``protocols`` on it (plus ``benchmark_fn``, if given)."""
    feats = extract_features(
        model,
        dataset,
        collate=collate,
        batch_size=cfg.data.eval_batch_size,
        device=device,
        amp=amp,
        channels_last=channels_last,
        embedding=cfg.model.embedding,
        flip=cfg.eval.flip,
    )
    results = evaluate_protocols(feats, dataset, protocols, evaluate_retrieval, camera_pair_ignore)
    if benchmark_fn is not None:
        results.update(benchmark_fn(feats, dataset))
    return results


def evaluate_split(
    model: torch.nn.Module,
    data: Any,
    split: str,
    cfg: Config,
    device: torch.device,
    amp: Any,
    channels_last: bool,
) -> dict[str, dict[str, float]]:
    # on the test split also the benchmark's published rules, all trials (SYSU, RegDB, LLCM)
    bench = data.benchmark_fn if split == "test" and not cfg.eval.protocols else None
    return evaluate_dataset(
        model,
        data.eval_set(split),
        data.protocols(split, cfg.eval.protocols),
        data.collate,
        cfg,
        device,
        amp,
        channels_last,
        bench,
    )


class _IndexSubset:
    """Items ``index`` of an evaluation dataset, with its identity/camera/modality arrays."""

    def __init__(self, dataset: Any, index: np.ndarray) -> None:
        self.dataset, self.index = dataset, index
        self.identities = np.asarray(dataset.identities)[index]
        self.cameras = np.asarray(dataset.cameras)[index]
        self.modalities = np.asarray(dataset.modalities)[index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.index[i])]


def train_score_split(data: Any, cfg: Config) -> tuple[Any, list[Any]] | None:
    """The train side of the overfitting rule's train-val gap: the first ``eval.train_ids``
    training identities (in label order; -1: as many as the validation split has), seen through
    the evaluation transforms, with the dataset's protocols restricted to them. ``None`` when off
    or unavailable."""
    if cfg.eval.train_ids == 0 or data.train_eval is None:
        return None
    n_ids = cfg.eval.train_ids
    if n_ids < 0:
        n_ids = len(np.unique(np.asarray(data.val.identities)))
    ds = data.train_eval
    ids = np.asarray(ds.identities)
    keep = np.isin(ids, np.unique(ids)[:n_ids])
    kept = []
    for p in data.protocols("train", cfg.eval.protocols):
        q, g = np.asarray(p.query, dtype=np.int64), np.asarray(p.gallery, dtype=np.int64)
        kept.append((p, q[keep[q]], g[keep[g]]))
    index = np.unique(
        np.concatenate(
            [np.concatenate([q, g]) for _, q, g in kept] or [np.empty(0, dtype=np.int64)]
        )
    )
    if index.size == 0:
        return None
    protocols = [
        dataclasses.replace(p, query=np.searchsorted(index, q), gallery=np.searchsorted(index, g))
        for p, q, g in kept
    ]
    return _IndexSubset(ds, index), protocols


def select_score(
    results: dict[str, dict[str, float]], metric: str, missing: float | None = None
) -> float:
    """``eval.select_metric`` of ``results``; ``missing`` (if given) when it is not there."""
    if not results:
        return -math.inf if missing is None else missing
    if metric == "mAP_mean":
        return float(np.mean([m["mAP"] for m in results.values()]))
    if metric.startswith("mAP/") and metric[4:] in results:
        return results[metric[4:]]["mAP"]
    if missing is not None:
        return missing
    raise ValueError(
        f"eval.select_metric={metric!r}: use mAP_mean or mAP/<protocol> with one of "
        f"{sorted(results)}"
    )


def format_metrics(name: str, epoch: int, results: dict[str, dict[str, float]]) -> str:
    parts = [
        f"{p}: mAP {m['mAP']:.4f} R1 {m['rank1']:.4f} mINP {m['mINP']:.4f}"
        for p, m in results.items()
    ]
    return f"[eval] {name} epoch={epoch} | " + " | ".join(parts)


def write_run_report(
    cfg: Config,
    run_dir: Path,
    metrics: MetricsLog,
    summary: dict[str, Any],
    health: Any,
    data: Any,
) -> Path:
    plots: dict[str, Path] = {}
    if cfg.output.plots:
        plots = write_plots(
            metrics.step_rows(),
            metrics.epoch_rows(),
            run_dir / "plots",
            coverage_target=cfg.train.coverage_target,
            ce_ceiling=cfg.health.ce_ceiling,
        )
    path = run_dir / "report.md"
    write_report(
        path,
        title=f"Training report: {run_dir.name}",
        summary={
            "dataset": data.name,
            "epochs": cfg.train.epochs,
            "global steps": summary["global_step"],
            "best epoch (validation)": summary["best_epoch"],
            f"best validation {cfg.eval.select_metric}": select_score(
                summary["best_val"], cfg.eval.select_metric
            )
            if summary["best_val"]
            else None,
            "final pair coverage (moving avg)": summary["pair_coverage"],
            "training wall time (s)": summary["train_seconds"],
            "throughput (images/s, median epoch)": summary["images_per_second"],
        },
        tables={
            f"Test split, best checkpoint (epoch {summary['best_epoch']})": summary["test"],
            f"Validation split, best epoch {summary['best_epoch']}": summary["best_val"],
            "Validation split, last evaluation": summary["val"],
        },
        findings=list(health.history),
        plots=plots,
        config_text=config_toml(cfg),
    )
    return path


if __name__ == "__main__":
    result = main(sys.argv[1:])
    if result.get("report"):
        print(f"report written to {result['report']}")
