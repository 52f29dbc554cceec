#!/usr/bin/env python
"""Reference trainer: cross-modal ReID with cross-entropy + scheduled SDM, end to end.

``main`` reads top to bottom as the recipe; the mechanics live in ``reid_example``:

1. configuration (TOML + ``--set`` overrides; a resumed run starts from its checkpoint's);
2. process group (torchrun), device, precision, seeds; run directory and logging;
3. data: train split with the modality-aware P×K sampler, validation and test sets;
4. model (per-modality stems → shared ViT trunk → BNNeck + classifier), optimiser;
5. the sdmreid components: SDM weight schedule, head-LR switch, cross-batch memory,
   pair-coverage meter, health monitor — and the training step that uses them;
6. resume from a checkpoint;
7. the epochs: train → validate → health → checkpoint (best = validation, never test);
8. the best checkpoint on the test split, plots and ``report.md``.

Usage::

    python examples/train.py --config examples/configs/demo.toml
    python examples/train.py --config examples/configs/default.toml --set train.epochs=10
    python examples/train.py --resume runs/demo-seed0/last.pt
    python examples/train.py --config examples/configs/demo.toml --overwrite   # start over
    torchrun --nproc_per_node=2 examples/train.py --config ... --set dist.backend=gloo
    python examples/train.py --help       # every option with its default
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Sequence
from typing import Any

from reid_example.builders import build_data, build_train_loader
from reid_example.config import Config, config_toml, describe_options, load_config
from reid_example.engine import StepContext, StepSettings
from reid_example.evaluate import Evaluator
from reid_example.health import HealthAdapter
from reid_example.model import build_model, count_parameters
from reid_example.optim import build_ema, build_lr_schedule, build_optimizer
from reid_example.reporting import (
    RunSummary,
    check_run_directory,
    open_outputs,
    write_run_report,
)
from reid_example.run import (
    Run,
    epoch_row,
    health_check,
    read_resume_checkpoint,
    restore_run,
    save_epoch_checkpoints,
    score_best_checkpoint,
    summarize,
    train_epoch,
    validate,
)
from reid_example.runtime import finish_runtime, init_runtime, place_model, wrap_for_training
from torch import __version__ as torch_version

from sdmreid import CrossBatchMemory, HeadLRSwitch, PairCoverageMeter, SDMWeightScheduler


def main(argv: Sequence[str] | None = None) -> RunSummary:
    # 1. configuration ------------------------------------------------------------------------
    cfg, config_path, checkpoint = parse_args(argv)

    # 2. process group, device, precision, seeds; run directory and logging (rank 0 writes) ----
    rt = init_runtime(cfg)
    out = open_outputs(cfg, config_path, rt.rank)
    log = out.log
    log.info(
        "run %s | device %s | amp %s | world %d | torch %s",
        *(out.run_dir, rt.device, rt.amp.name, rt.world, torch_version),
    )

    # 3. data -------------------------------------------------------------------------------------
    data = build_data(cfg)
    log.info(data.describe())
    loader, window = build_train_loader(cfg, data, rt.device, rank=rt.rank, world=rt.world)
    steps_per_epoch = window.steps_per_epoch(cap=cfg.train.max_steps_per_epoch)

    # 4. model and optimiser ---------------------------------------------------------------------
    model = build_model(
        cfg.model,
        num_classes=data.num_classes,
        vocab_size=data.vocab_size,
        image_size=data.image_size,
        text_length=cfg.data.text_length,
    )
    model = place_model(model, rt)
    log.info(
        "model: %.2fM parameters, sdpa backend %s",
        count_parameters(model) / 1e6,
        cfg.model.sdpa_backend,
    )
    optimizer = build_optimizer(cfg.optim, model)

    # 5. the sdmreid components and the step that wires them together -------------------------
    sdm_scheduler = SDMWeightScheduler(
        warmup_epochs=cfg.loss.sdm_warmup_epochs,
        schedule=cfg.loss.sdm_schedule,
        logit_scales=cfg.loss.sdm_logit_scales or None,
        readvance_after=cfg.loss.sdm_readvance_after or None,
    )
    memory = None
    if cfg.loss.memory:
        # no finiteness read per enqueue: the step's own finiteness flag is checked when the
        # steps are read (a non-finite step stops the run there)
        memory = CrossBatchMemory(
            model.embed_dim, max_steps=cfg.loss.memory_steps, on_nonfinite="ignore"
        ).to(rt.device)
    step = StepContext(
        model=wrap_for_training(model, cfg, rt),
        raw_model=model,
        optimizer=optimizer,
        lr_schedule=build_lr_schedule(
            cfg.optim, optimizer, steps_per_epoch=steps_per_epoch, epochs=cfg.train.epochs
        ),
        head_switch=HeadLRSwitch(
            optimizer,
            group="head",
            lr=cfg.optim.head_lr_after,
            from_epoch=cfg.optim.head_lr_switch_epoch,
        ),
        sdm_scheduler=sdm_scheduler,
        memory=memory,
        meter=PairCoverageMeter(window=cfg.train.coverage_window, target=cfg.train.coverage_target),
        ema=build_ema(cfg.optim, model),
        runtime=rt,
        settings=StepSettings.from_config(cfg),
    )
    health = HealthAdapter(cfg, sdm_scheduler, log, num_classes=data.num_classes)
    run = Run(cfg, step, health, data, loader, window, steps_per_epoch, out)
    evaluator = Evaluator(cfg, data, rt)

    # 6. resume ---------------------------------------------------------------------------------
    if checkpoint is not None:
        restore_run(run, checkpoint)

    # 7. epochs ---------------------------------------------------------------------------------
    t_train = time.perf_counter()
    for epoch in range(run.state.epoch, cfg.train.epochs + 1):
        stats = train_epoch(run, epoch)
        if run.state.stopped:
            break
        evaluated = epoch % max(1, cfg.eval.every) == 0 or epoch == cfg.train.epochs
        validation = validate(run, evaluator, epoch) if evaluated else None
        findings = health_check(run, stats, validation)  # with health.act: SDM rollback
        out.metrics.log_epoch(epoch_row(stats, run, validation, findings))
        save_epoch_checkpoints(run, epoch, validation)
    train_seconds = time.perf_counter() - t_train

    # 8. the best checkpoint on the test split; plots and report --------------------------------
    finished = not run.state.stopped
    test = score_best_checkpoint(run, evaluator) if finished and cfg.eval.test_at_end else {}
    summary = summarize(run, test, train_seconds)
    if finished and rt.is_main:
        report = write_run_report(cfg, out, summary, data.name, evaluator.test_note())
        summary["report"] = str(report)
        log.info("report: %s", report)
    out.metrics.close()
    # The DDP wrapper (its reducer holds the process group) and the loader's workers go now,
    # not at interpreter exit: a gloo group torn down at exit can abort a rank.
    del run, step, loader
    gc.collect()
    finish_runtime()
    return summary


def parse_args(argv: Sequence[str] | None) -> tuple[Config, str | None, dict[str, Any] | None]:
    """The run's config, the TOML path it came from, and the checkpoint to resume (if any).

    A resumed run takes its checkpoint's config; ``--set`` overrides still apply on top.
    ``--print-config`` prints the resolved config and exits. A checkpoint that cannot be resumed,
    or a run directory that already holds a run this one neither resumes nor overwrites, is a
    usage error: nothing is written.
    """
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
        "--overwrite",
        action="store_true",
        help="start over in a run directory that holds a run, deleting its files first "
        "(= --set output.overwrite=true)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *(["output.overwrite=true"] if args.overwrite else [])]
    checkpoint: dict[str, Any] | None = None
    try:
        cfg = load_config(args.config, overrides)
        resume = args.resume or cfg.checkpoint.resume
        if resume:
            cfg, checkpoint = read_resume_checkpoint(resume, overrides)
        if not args.print_config:
            check_run_directory(cfg, args.config)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        parser.error(str(err))
    if args.print_config:
        print(config_toml(cfg))
        parser.exit()
    return cfg, args.config, checkpoint


if __name__ == "__main__":
    result = main(sys.argv[1:])
    if result["report"]:
        print(f"report written to {result['report']}")
