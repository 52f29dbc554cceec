"""Benchmark CrossBatchMemory's enqueue + read against the baselines it replaces.

Every step enqueues one batch and reads the whole memory (features and labels), as a trainer does.
Baselines, run in the same process on the same batches, each with a NaN/Inf check on the batch
(the memory contract requires one):

* ``deque+cat``: the seed's ``deque(maxlen=N)`` of batches, concatenated with ``torch.cat`` on every
  read, checked with ``torch.isfinite(x).all()``;
* ``deque+cat (fused check)``: the same with the one-reduction check CrossBatchMemory uses;
* ``PML``: ``pytorch_metric_learning.losses.CrossBatchMemory.add_to_memory`` (a ring of
  ``memory_size`` rows written through an index tensor) plus its read; compared with item mode of
  the same size (PML has no step mode).

Scenarios: (A) d=512, batches of 32..128 rows (seeded), 6-step memory, 2000 steps: per-call
overhead dominates; (B) d=2048, 16-step memory of 256-row batches: copying dominates. Also counts
the allocations per step after warm-up with the torch profiler (``profile_memory=True``).

Timings use ``--threads`` intra-op threads (default 1: at these sizes more threads only add
synchronisation), gc disabled, a warm-up, and the median of ``--repeats`` runs.

Usage::

    python benchmarks/bench_memory.py [--quick] [--json PATH] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sdmreid.memory import CrossBatchMemory
from sdmreid.modality import Modality

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Step = Callable[[Any, Batch], object]


# --- workloads -------------------------------------------------------------------------------


def make_batches(
    dim: int, sizes: Sequence[int], pool: int, device: torch.device, seed: int
) -> list[Batch]:
    """``len(sizes)`` batches (views into ``pool`` preallocated tensors), with modalities."""
    g = torch.Generator().manual_seed(seed)
    rows = max(sizes)
    feats = [torch.randn(rows, dim, generator=g).to(device) for _ in range(pool)]
    labels = [torch.randint(0, 1000, (rows,), generator=g).to(device) for _ in range(pool)]
    mods = [torch.randint(0, 2, (rows,), generator=g).to(device) for _ in range(pool)]
    return [(feats[i % pool][:n], labels[i % pool][:n], mods[i % pool][:n]) for i, n in
            enumerate(sizes)]  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_impls(
    impls: dict[str, tuple[Callable[[], Any], Step]],
    batches: list[Batch],
    warmup: int,
    repeats: int,
    device: torch.device,
) -> dict[str, float]:
    """Median microseconds per timed step for each implementation.

    Runs are interleaved (every implementation once per round, ``repeats`` rounds) so load
    changes on a shared machine hit all of them alike; each run starts from a fresh state warmed
    up on the first ``warmup`` batches and times the rest.
    """
    runs: dict[str, list[float]] = {name: [] for name in impls}
    timed = batches[warmup:]
    for _ in range(repeats):
        for name, (make, step) in impls.items():
            state = make()
            for b in batches[:warmup]:
                step(state, b)
            _sync(device)
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                for b in timed:
                    step(state, b)
                _sync(device)
                runs[name].append(time.perf_counter() - t0)
            finally:
                gc.enable()
    return {name: statistics.median(r) / len(timed) * 1e6 for name, r in runs.items()}


def count_allocations(
    make: Callable[[], Any], step: Step, batches: list[Batch], warmup: int, steps: int
) -> tuple[float, float]:
    """(allocating ops, bytes allocated) per step after ``warmup`` steps (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    state = make()
    for b in batches[:warmup]:
        step(state, b)
    activities = [ProfilerActivity.CPU]
    if batches[0][0].is_cuda:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, profile_memory=True) as prof:
        for b in batches[warmup : warmup + steps]:
            step(state, b)
    # Allocations are attributed to the innermost op (self_*_memory_usage); frees outside an op
    # appear as separate "[memory]" events with negative sizes and are not counted.
    allocs = [
        e
        for e in prof.events()
        if e.name != "[memory]" and (e.self_cpu_memory_usage > 0 or e.self_device_memory_usage > 0)
    ]
    total = sum(
        max(e.self_cpu_memory_usage, 0) + max(e.self_device_memory_usage, 0) for e in allocs
    )
    return len(allocs) / steps, total / steps


# --- implementations -------------------------------------------------------------------------


def ours(dim: int, max_steps: int = 6, max_items: int | None = None) -> Callable[[], Any]:
    def make() -> CrossBatchMemory:
        if max_items is not None:
            return CrossBatchMemory(dim, max_items=max_items)
        return CrossBatchMemory(dim, max_steps=max_steps)

    return make


def step_ours(mem: CrossBatchMemory, b: Batch) -> object:
    mem.enqueue(b[0], b[1])
    return mem.view()


def step_ours_keep_rgb(mem: CrossBatchMemory, b: Batch) -> object:
    mem.enqueue(b[0], b[1], modalities=b[2], keep=Modality.RGB)
    return mem.view()


def _check_isfinite(x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError("non-finite features")


def _check_fused(x: torch.Tensor) -> None:
    if not math.isfinite(x.sum().item()):
        _check_isfinite(x)  # exact test only when the sum is not finite


def deque_step(check: Callable[[torch.Tensor], None], keep_rgb: bool = False) -> Step:
    def step(q: deque[tuple[torch.Tensor, torch.Tensor]], b: Batch) -> object:
        f, lab = b[0], b[1]
        if keep_rgb:
            rgb = b[2] == int(Modality.RGB)
            f, lab = f[rgb], lab[rgb]
        check(f)
        q.append((f.detach(), lab))
        return torch.cat([e[0] for e in q]), torch.cat([e[1] for e in q])

    return step


def pml_factory(dim: int, memory_size: int, device: torch.device) -> Callable[[], Any]:
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.losses import CrossBatchMemory as PMLMemory

    def make() -> Any:
        return PMLMemory(ContrastiveLoss(), dim, memory_size=memory_size).to(device)

    return make


def step_pml(xbm: Any, b: Batch) -> object:
    f, lab = b[0], b[1]
    _check_isfinite(f)
    with torch.no_grad():
        xbm.add_to_memory(f, lab, len(f))
    if xbm.has_been_filled:
        return xbm.embedding_memory, xbm.label_memory
    return xbm.embedding_memory[: xbm.queue_idx], xbm.label_memory[: xbm.queue_idx]


# --- scenarios -------------------------------------------------------------------------------


def scenario_a(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dim, max_steps = 512, 6
    steps = 300 if args.quick else 2000
    g = torch.Generator().manual_seed(args.seed)
    sizes = torch.randint(32, 129, (steps + 50,), generator=g).tolist()
    batches = make_batches(dim, sizes, pool=16, device=device, seed=args.seed)
    warm, timed = batches[:50], batches[50:]
    items = max_steps * 80  # PML/item mode: the mean window of the step mode
    impls: dict[str, tuple[Callable[[], Any], Step]] = {
        "CrossBatchMemory (step mode)": (ours(dim, max_steps=max_steps), step_ours),
        "deque+cat": (lambda: deque(maxlen=max_steps), deque_step(_check_isfinite)),
        "deque+cat (fused check)": (lambda: deque(maxlen=max_steps), deque_step(_check_fused)),
        f"CrossBatchMemory (item mode, {items})": (ours(dim, max_items=items), step_ours),
    }
    try:
        impls[f"PML CrossBatchMemory ({items})"] = (pml_factory(dim, items, device), step_pml)
    except ImportError:
        print("pytorch-metric-learning is not installed: skipping the PML baseline")
    impls["CrossBatchMemory keep=RGB (mixed batch)"] = (
        ours(dim, max_steps=max_steps),
        step_ours_keep_rgb,
    )
    impls["deque+cat, x[rgb] (mixed batch)"] = (
        lambda: deque(maxlen=max_steps),
        deque_step(_check_isfinite, keep_rgb=True),
    )
    times = time_impls(impls, warm + timed, len(warm), args.repeats, device)
    allocs = {
        name: count_allocations(make, step, warm + timed, len(warm), min(100, len(timed)))
        for name, (make, step) in impls.items()
    }
    return {"config": {"dim": dim, "max_steps": max_steps, "rows": "32..128", "steps": steps,
                       "items": items}, "us_per_step": times, "allocations": allocs}  # fmt: skip


def scenario_b(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dim, max_steps, rows = 2048, 16, 256
    steps = 60 if args.quick else 200
    batches = make_batches(dim, [rows] * (steps + 20), pool=20, device=device, seed=args.seed)
    impls: dict[str, tuple[Callable[[], Any], Step]] = {
        "CrossBatchMemory (step mode)": (ours(dim, max_steps=max_steps), step_ours),
        "deque+cat": (lambda: deque(maxlen=max_steps), deque_step(_check_isfinite)),
        "deque+cat (fused check)": (lambda: deque(maxlen=max_steps), deque_step(_check_fused)),
    }
    times = time_impls(impls, batches, 20, args.repeats, device)
    return {"config": {"dim": dim, "max_steps": max_steps, "rows": rows, "steps": steps},
            "us_per_step": times}  # fmt: skip


def table(result: dict[str, Any], ours_name: str, title: str) -> str:
    t = result["us_per_step"]
    base = t[ours_name]
    lines = [f"### {title}", "", "| implementation | µs / step | time ÷ CrossBatchMemory's |",
             "|---|---:|---:|"]  # fmt: skip
    for name, us in t.items():
        lines.append(f"| {name} | {us:.1f} | {us / base:.2f}× |")
    if "allocations" in result:
        lines += [
            "",
            "| implementation | allocating ops / step | bytes allocated / step |",
            "|---|---:|---:|",
        ]
        for name, (n, nbytes) in result["allocations"].items():
            lines.append(f"| {name} | {n:.2f} | {nbytes:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke configuration")
    parser.add_argument("--json", type=Path, default=None, help="write results to this file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    device = torch.device(args.device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        a = scenario_a(args, device)
        b = scenario_b(args, device)
    finally:
        torch.set_num_threads(old_threads)
    ta, tb = a["us_per_step"], b["us_per_step"]
    ratios = {
        "A: deque+cat / CrossBatchMemory": ta["deque+cat"] / ta["CrossBatchMemory (step mode)"],
        "A: deque+cat (fused check) / CrossBatchMemory": ta["deque+cat (fused check)"]
        / ta["CrossBatchMemory (step mode)"],
        "A keep=RGB: deque+cat, x[rgb] / CrossBatchMemory keep=RGB": ta[
            "deque+cat, x[rgb] (mixed batch)"
        ]
        / ta["CrossBatchMemory keep=RGB (mixed batch)"],
        "B: deque+cat / CrossBatchMemory": tb["deque+cat"] / tb["CrossBatchMemory (step mode)"],
    }
    items = a["config"]["items"]
    pml = ta.get(f"PML CrossBatchMemory ({items})")
    if pml is not None:
        ratios["A: PML / CrossBatchMemory (item mode)"] = (
            pml / ta[f"CrossBatchMemory (item mode, {items})"]
        )
        ratios["A: PML / CrossBatchMemory (step mode)"] = pml / ta["CrossBatchMemory (step mode)"]
    result = {
        "device": str(device),
        "threads": args.threads,
        "quick": args.quick,
        "torch": torch.__version__,
        "scenario_a": a,
        "scenario_b": b,
        "ratios": ratios,
    }
    print(table(a, "CrossBatchMemory (step mode)",
                f"A: d=512, 32..128 rows/step, 6 steps, {a['config']['steps']} steps "
                f"(enqueue + read), {device}, {args.threads} thread(s)"))  # fmt: skip
    print()
    print(table(b, "CrossBatchMemory (step mode)",
                f"B: d=2048, 256 rows/step, 16 steps, {b['config']['steps']} steps "
                f"(copy-dominated), {device}"))  # fmt: skip
    print()
    print("| ratio (higher: CrossBatchMemory faster) | value |")
    print("|---|---:|")
    for name, v in ratios.items():
        print(f"| {name} | {v:.2f}× |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
