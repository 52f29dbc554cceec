"""Benchmark the reference trainer's training step: operators, host synchronisations, images/s.

Everything is built and run by the trainer itself (``examples/train.py``'s ``main`` with its
builders): the script only marks where each training step starts and counts what happens in
between. For each configuration (``demo``, ``default``; SDM on from the first step, the memory
on, evaluation off) and each data path it reports:

* **operators per step**: every ATen operator dispatched in the main process (a
  ``TorchDispatchMode``), from the start of one step to the start of the next, so the step's
  duties (metrics, health readings, the logging read) are included; split into the forward pass
  and the losses, the backward pass, the optimiser (gradient norm and update) and the rest. Data
  loading in worker processes is not counted; the on-device data path is.
* **host synchronisations per step**, on logged and on other steps (``train.log_every``):
  operators that make the host wait for the device — ``aten._local_scalar_dense`` (``.item()``,
  ``float()``, ``int()``, ``bool()`` of a tensor), ``aten.nonzero`` and what is built on it
  (boolean-mask indexing, ``masked_select``, ``unique``, ``repeat_interleave`` without an output
  size), ``aten.equal``, and copies from an accelerator to the host (``.cpu()``, ``.tolist()``,
  ``.numpy()``; on a CPU tensor these dispatch no operator, so they are counted by call with a
  ``TorchFunctionMode``). A CPU run cannot tell device memory from host memory, so the reads
  made inside the trainer's step and epoch duties (``reid_example.run._after_step`` and
  ``_epoch_stats``: coverage meter, health monitor, metric rows, epoch means) are counted
  apart: now they read host state only (the meter is fed Python numbers from the logging
  step's one read); in the trainer before it they read the meter and the classifier weight on
  the device.
* **images/s**: with the data already in memory (the step alone, replayed on batches the run's
  data path produced, one synchronisation at the end; the best of three rounds) and through the
  data path of the run (loader, or the on-device cache: the trainer's own loop, its logging reads
  included, over the timed steps).

The operator counts need eager execution (a dispatch mode turns ``torch.compile`` off), so the
compiled variant (``--compile``) reports images/s only.

Usage::

    python benchmarks/bench_trainer.py [--quick] [--json out.json] [--configs demo,default]
        [--device cpu|cuda] [--steps N] [--variants loader,device_cache] [--compile]
        [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

#: operators whose result the host must wait for, whatever the device
SYNC_OPS = {
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
    "aten.nonzero.out",
    "aten.masked_select.default",
    "aten.equal.default",
    "aten.is_nonzero.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",
}
#: indexing operators that synchronise when an index is a boolean mask
MASK_INDEX_OPS = {"aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default"}
#: copies that synchronise when they go from an accelerator to the host
COPY_OPS = {"aten._to_copy.default", "aten.copy_.default"}
PHASES = ("forward", "backward", "optimizer", "duties", "other")


def _is_mask(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in (torch.bool, torch.uint8)


def _device_to_host(func_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if func_name == "aten._to_copy.default":
        src, dst = args[0], kwargs.get("device")
        return src.device.type != "cpu" and dst is not None and torch.device(dst).type == "cpu"
    dst, src = args[0], args[1]
    return src.device.type != "cpu" and dst.device.type == "cpu"


class StepCounter(TorchDispatchMode):
    """Counts operators and synchronising operators, per window and phase."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "other"
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        #: reads made inside the step duties (phase "duties")
        self.duty_reads: Counter[str] = Counter()

    def read(self, kind: str) -> None:
        (self.duty_reads if self.phase == "duties" else self.syncs)[kind] += 1

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = str(func)
        self.ops[self.phase] += 1
        if name in SYNC_OPS:
            self.read(name.split(".")[1])
        elif name in MASK_INDEX_OPS and any(
            _is_mask(i) for i in (args[1] if len(args) > 1 else []) if i is not None
        ):
            self.read("mask_index")
        elif name in COPY_OPS and _device_to_host(name, args, kwargs):
            self.read("device_to_host")
        return func(*args, **kwargs)


class HostReadCounter(TorchFunctionMode):
    """Counts ``.tolist()`` / ``.numpy()`` calls (no operator on a CPU tensor)."""

    def __init__(self, counter: StepCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in (torch.Tensor.tolist, torch.Tensor.numpy) and args[0].device.type == "cpu":
            self.counter.read("tolist_numpy")
        return func(*args, **(kwargs or {}))


class StepProbe:
    """Wraps the trainer's ``train_step``: marks step boundaries, keeps the context and the
    first batches, records per-window wall times and (when counting) operator counts."""

    def __init__(self, step_fn: Callable[..., Any], keep_batches: int) -> None:
        self.step_fn = step_fn
        self.keep_batches = keep_batches
        self.counter: StepCounter | None = None
        self.windows: list[dict[str, Any]] = []
        self.starts: list[float] = []
        self.batches: list[Any] = []
        self.ctx: Any = None
        self.args: tuple[int, int] = (1, 0)
        self._hooked = False

    def _close_window(self) -> None:
        if self.counter is not None and self.starts:
            c = self.counter
            self.windows.append(
                {"ops": dict(c.ops), "syncs": dict(c.syncs), "duty_reads": dict(c.duty_reads)}
            )
            c.ops.clear()
            c.syncs.clear()
            c.duty_reads.clear()

    def __call__(self, ctx: Any, batch: Any, epoch: int, global_step: int) -> Any:
        self._close_window()
        self.starts.append(time.perf_counter())
        if len(self.batches) < self.keep_batches:
            self.batches.append(batch)
        self.ctx, self.args = ctx, (epoch, global_step)
        if not self._hooked:
            self._install_hooks(ctx)
        if self.counter is not None:
            self.counter.phase = "other"
        return self.step_fn(ctx, batch, epoch, global_step)

    def set_phase(self, phase: str) -> None:
        if self.counter is not None:
            self.counter.phase = phase

    def duties(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (the trainer's step duties) with its operators and reads counted apart."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before = self.counter.phase if self.counter is not None else "other"
            self.set_phase("duties")
            try:
                return fn(*args, **kwargs)
            finally:
                self.set_phase(before)

        return wrapped

    def _install_hooks(self, ctx: Any) -> None:
        self._hooked = True
        ctx.model.register_forward_pre_hook(lambda *_: self.set_phase("forward"))
        ctx.optimizer.register_step_post_hook(lambda *_: self.set_phase("other"))

    def finish(self) -> None:
        self._close_window()
        self.starts.append(time.perf_counter())


@contextlib.contextmanager
def _phase_marks(probe: StepProbe) -> Iterator[None]:
    """Backward and optimiser phases: around ``torch.autograd.backward``."""
    original = torch.autograd.backward

    def backward(*args: Any, **kwargs: Any) -> Any:
        probe.set_phase("backward")
        try:
            return original(*args, **kwargs)
        finally:
            probe.set_phase("optimizer")

    torch.autograd.backward = backward  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.autograd.backward = original  # type: ignore[assignment]


def _run_trainer(
    config: str, overrides: list[str], probe: StepProbe, counting: bool
) -> dict[str, Any]:
    import reid_example.run as run_module
    import train

    argv = ["--config", str(ROOT / "examples" / "configs" / f"{config}.toml"), "--overwrite"]
    for item in overrides:
        argv += ["--set", item]
    original, duties, epoch_duties = (
        run_module.train_step,
        run_module._after_step,
        run_module._epoch_stats,
    )
    run_module.train_step = probe  # type: ignore[assignment]
    run_module._after_step = probe.duties(duties)
    run_module._epoch_stats = probe.duties(epoch_duties)
    try:
        if counting:
            probe.counter = StepCounter()
            with _phase_marks(probe), probe.counter, HostReadCounter(probe.counter):
                summary: dict[str, Any] = dict(train.main(argv))
        else:
            summary = dict(train.main(argv))
        probe.finish()
    finally:
        run_module.train_step = original  # type: ignore[assignment]
        run_module._after_step = duties
        run_module._epoch_stats = epoch_duties
    return summary


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _replay_in_memory(probe: StepProbe, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps alone (one synchronisation at the end), on the batches the
    run's data path produced; the best of three rounds."""
    import reid_example.run as run_module

    step_fn = run_module.train_step
    epoch, global_step = probe.args
    rounds: list[float] = []
    for r in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            batch = probe.batches[i % len(probe.batches)]
            step_fn(probe.ctx, batch, epoch, global_step + 1 + r * steps + i)
        _sync(device)
        rounds.append(time.perf_counter() - t0)
    return min(rounds)


def _batch_size(cfg: Any) -> int:
    return int(cfg.sampler.num_identities * cfg.sampler.num_instances)


def measure(
    config: str,
    variant: str,
    device: str,
    steps: int,
    warmup: int,
    extra: list[str],
    out_dir: Path,
    compile_model: bool,
    timing: bool = True,
) -> dict[str, Any]:
    from reid_example.config import load_config

    stop = warmup + steps + 1
    overrides = [
        f"train.device={device}",
        "loss.sdm_warmup_epochs=0",  # SDM (and the memory) on from the first step
        f"train.stop_after_steps={stop}",
        "eval.every=100000",
        "eval.test_at_end=false",
        "output.plots=false",
        "output.tensorboard=false",
        "output.progress=off",
        f"output.root={out_dir}",
        f"output.name={config}-{variant}",
        "checkpoint.every_epochs=100000",
    ]
    if variant == "device_cache":
        overrides.append("data.device_cache=true")
    overrides += extra
    cfg = load_config(ROOT / "examples" / "configs" / f"{config}.toml", overrides)
    result: dict[str, Any] = {
        "config": config,
        "variant": variant,
        "batch": _batch_size(cfg),
        "log_every": cfg.train.log_every,
    }
    dev = torch.device("cuda" if device == "cuda" else device)
    if not compile_model:
        probe = StepProbe(run_step_fn(), keep_batches=0)
        _run_trainer(config, overrides, probe, counting=True)
        result.update(_summarise_counts(probe.windows, warmup, cfg.train.log_every))
    result["compiled"] = compile_model
    if not timing:
        return result
    # timing: the same run without counting (and optionally compiled)
    timed = overrides + (["train.compile=true"] if compile_model else [])
    probe = StepProbe(run_step_fn(), keep_batches=min(steps, 16))
    _run_trainer(config, timed, probe, counting=False)
    # the trainer's own loop over the measured steps (reads at its logging steps included)
    walls = [b - a for a, b in zip(probe.starts[:-1], probe.starts[1:], strict=True)]
    timed_walls = walls[warmup:-1] or walls
    result["images_per_s_data_path"] = result["batch"] * len(timed_walls) / sum(timed_walls)
    seconds = _replay_in_memory(probe, steps, dev)
    result["images_per_s_in_memory"] = result["batch"] * steps / seconds
    del probe
    gc.collect()
    return result


def run_step_fn() -> Callable[..., Any]:
    import reid_example.run as run_module

    return run_module.train_step  # type: ignore[no-any-return]


def _summarise_counts(windows: list[dict[str, Any]], warmup: int, log_every: int) -> dict[str, Any]:
    """Means over the counted windows, logged and other steps apart. Window ``k`` starts at
    step ``k`` (from 0) and holds that step's duties, logged when ``(k + 1) % log_every == 0``;
    the first ``warmup`` windows and the last (the stop) are left out."""
    kept = list(enumerate(windows))[warmup:-1]
    out: dict[str, Any] = {}
    for kind, logged in (("logged", True), ("other", False)):
        sel = [w for k, w in kept if ((k + 1) % log_every == 0) == logged]
        if not sel:
            continue
        n = len(sel)
        ops = {p: sum(w["ops"].get(p, 0) for w in sel) / n for p in PHASES}
        syncs: Counter[str] = Counter()
        duty_reads: Counter[str] = Counter()
        for w in sel:
            syncs.update(w["syncs"])
            duty_reads.update(w["duty_reads"])
        out[f"ops_{kind}"] = sum(ops.values())
        out[f"ops_by_phase_{kind}"] = ops
        out[f"syncs_{kind}"] = sum(syncs.values()) / n
        out[f"syncs_by_kind_{kind}"] = {k: v / n for k, v in sorted(syncs.items())}
        out[f"duty_reads_{kind}"] = sum(duty_reads.values()) / n
        out[f"duty_reads_by_kind_{kind}"] = {k: v / n for k, v in sorted(duty_reads.items())}
        out[f"steps_{kind}"] = n
    return out


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def print_table(results: list[dict[str, Any]], device: str) -> None:
    print(
        f"Training steps on {device}; SDM and memory on; means over the counted steps. "
        "Operators on the other steps, split into forward + losses / backward / optimiser / "
        "step duties / the rest (data, logging read); host synchronisations outside the step "
        "duties, and the reads inside them (after this issue: of host state only).\n"
    )
    print(
        "| config | data path | batch | ops/step (other / logged) | "
        "fwd+loss / bwd / optim / duties / rest | syncs, logged step | syncs, other steps | "
        "sync kinds (logged; other) | reads in the duties (logged / other) | "
        "img/s in memory | img/s data path |"
    )
    print("|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|")
    for r in results:
        phases = r.get("ops_by_phase_other")
        split = " / ".join(_fmt(phases.get(p, 0)) for p in PHASES) if phases else "—"
        kinds = "; ".join(
            ", ".join(f"{k} {v:.1f}" for k, v in (r.get(f"syncs_by_kind_{w}") or {}).items())
            or "none"
            for w in ("logged", "other")
        )
        duty = f"{_fmt(r.get('duty_reads_logged'), 1)} / {_fmt(r.get('duty_reads_other'), 1)}"
        name = r["variant"] + (" (compiled)" if r.get("compiled") else "")
        ops = f"{_fmt(r.get('ops_other'))} / {_fmt(r.get('ops_logged'))}"
        print(
            f"| {r['config']} | {name} | {r['batch']} | {ops} | {split} | "
            f"{_fmt(r.get('syncs_logged'), 1)} | {_fmt(r.get('syncs_other'), 1)} | {kinds} | "
            f"{duty} | {_fmt(r.get('images_per_s_in_memory'))} | "
            f"{_fmt(r.get('images_per_s_data_path'))} |"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo configuration, few steps")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--configs", default=None, help="comma-separated: demo,default")
    parser.add_argument("--variants", default="loader", help="comma-separated: loader,device_cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="counted/timed steps")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out at the start")
    parser.add_argument("--compile", action="store_true", help="also time train.compile=true")
    parser.add_argument("--counts-only", action="store_true", help="no timing runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    configs = (args.configs or ("demo" if args.quick else "demo,default")).split(",")
    variants = [v for v in args.variants.split(",") if v]
    steps = args.steps or (12 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as tmp:
        for config in configs:
            for variant in variants:
                results.append(
                    measure(
                        config, variant, args.device, steps, warmup, args.overrides, Path(tmp),
                        compile_model=False, timing=not args.counts_only,
                    )
                )  # fmt: skip
                if args.compile:
                    results.append(
                        measure(
                            config, variant, args.device, steps, warmup, args.overrides,
                            Path(tmp), compile_model=True,
                        )
                    )  # fmt: skip
    print_table(results, args.device)
    out = {
        "benchmark": "trainer",
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
