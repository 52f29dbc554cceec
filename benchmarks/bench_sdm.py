"""Benchmark: fused SDM loss vs the naive IRRA-style formula and vs the matmul floor.

Configuration (issue default): B=256 queries, N=256 gallery + M=768 memory columns, d=512,
forward + backward, float32, on CPU (and CUDA when available). All variants run in the same
process, interleaved round by round, with gc disabled, after warm-up; the median is reported.

* ``naive``: IRRA's formula on full matrices (softmax + log_softmax + log(q + ε) for both
  directions, label matrix normalised per row, memory appended as columns, rows without a
  positive masked), differentiated by autograd.
* ``floor``: only the similarity matmul ``q̂ · [ĝ; m̂]ᵀ`` and the two matmuls of its backward
  (``dq = G · [ĝ; m̂]``, ``dg = G[:, :N]ᵀ · q̂``) on pre-normalised inputs — the work no
  implementation can avoid.
* ``fused`` / ``fused chunk=B/8``: :func:`sdmreid.losses.sdm_loss` (normalisation, validation
  and both directions included).
* ``compiled``: ``sdm_loss(..., compiled=True)``, the one-block kernel under ``torch.compile``
  (compiled during warm-up; its compile time is not in the table). On CUDA also
  ``fused check_finite=False`` (the finiteness check is one host synchronisation).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the
call. On CPU (where tracemalloc cannot see torch's allocator) the PyTorch profiler's allocation
records (``profile_memory=True``: every allocation and free of the c10 CPU allocator, with its
timestamp) are replayed in time order; the peak of the running sum is the extra memory the call
needed on top of its inputs (gradients of the inputs included).

Usage::

    python benchmarks/bench_sdm.py [--quick] [--json out.json] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from sdmreid.losses import sdm_loss


def naive_sdm(
    q: torch.Tensor,
    g: torch.Tensor,
    ql: torch.Tensor,
    gl: torch.Tensor,
    mf: torch.Tensor,
    ml: torch.Tensor,
    scale: float = 50.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """IRRA's compute_sdm on full matrices, extended to rectangular batches, memory and masking."""
    n = g.shape[0]
    qn, gn, mn = F.normalize(q, dim=1), F.normalize(g, dim=1), F.normalize(mf.detach(), dim=1)
    cols = torch.cat([gn, mn])
    sim = scale * qn @ cols.t()
    lab = (ql[:, None] == torch.cat([gl, ml])[None, :]).to(sim.dtype)

    def direction(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = labels.sum(1, keepdim=True)
        dist = labels / k.clamp(min=1)
        pred = F.softmax(logits, dim=1)
        rows = torch.sum(pred * (F.log_softmax(logits, dim=1) - torch.log(dist + eps)), dim=1)
        valid = (k.squeeze(1) > 0).to(rows.dtype)
        return (rows * valid).sum() / valid.sum().clamp(min=1)

    return direction(sim, lab) + direction(sim[:, :n].t(), lab[:, :n].t())


_MALLOC_MODE = "default"


def _malloc_from_heap() -> None:
    """Keep glibc from serving (and returning) large blocks with mmap: no page faults per call."""
    global _MALLOC_MODE
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        raise SystemExit("--malloc heap needs glibc")
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    if not ok:
        raise SystemExit("mallopt failed (not glibc?)")
    _MALLOC_MODE = "heap (mallopt)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_all(
    fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):  # interleave so background load hits every variant alike
            for name, fn in fns.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _peak_cpu_bytes(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]" and e.device_type() == torch.device("cpu").type.upper()
    ] or [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]  # type: ignore[union-attr]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        gc.collect()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return _peak_cpu_bytes(fn)


def run_device(
    device: torch.device, b: int, n: int, m: int, d: int, warmup: int, repeats: int
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, d, generator=gen).to(device).requires_grad_()
    g = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    mf = torch.randn(m, d, generator=gen).to(device)
    n_ids = max(1, b // 4)
    ql = (torch.arange(b) % n_ids).to(device)
    gl = (torch.randperm(n, generator=gen) % n_ids).to(device)
    ml = (torch.randint(0, 2 * n_ids, (m,), generator=gen)).to(device)
    chunk = max(1, b // 8)

    # floor inputs: pre-normalised, plus a fixed upstream gradient for the similarity block
    qn, cols = F.normalize(q.detach(), dim=1), F.normalize(torch.cat([g.detach(), mf]), dim=1)
    upstream = torch.randn(b, n + m, generator=gen).to(device)

    def fused() -> None:
        q.grad = g.grad = None
        sdm_loss(q, g, ql, gl, (mf, ml)).loss.backward()

    def fused_unchecked() -> None:
        q.grad = g.grad = None
        sdm_loss(q, g, ql, gl, (mf, ml), check_finite=False).loss.backward()

    def fused_compiled() -> None:
        q.grad = g.grad = None
        sdm_loss(q, g, ql, gl, (mf, ml), compiled=True).loss.backward()

    def fused_chunked() -> None:
        q.grad = g.grad = None
        sdm_loss(q, g, ql, gl, (mf, ml), chunk_size=chunk).loss.backward()

    def naive() -> None:
        q.grad = g.grad = None
        naive_sdm(q, g, ql, gl, mf, ml).backward()

    def floor() -> None:
        _sim = qn @ cols.t()
        _dq = upstream @ cols
        _dg = upstream[:, :n].t() @ qn

    def floor_chunked() -> None:
        # the same three products, ``chunk`` query rows at a time (what row-chunking must do)
        dg = torch.empty_like(g)
        for i in range(0, b, chunk):
            _sim = qn[i : i + chunk] @ cols.t()
            _dq = upstream[i : i + chunk] @ cols
            if i == 0:
                torch.mm(upstream[i : i + chunk, :n].t(), qn[i : i + chunk], out=dg)
            else:
                dg.addmm_(upstream[i : i + chunk, :n].t(), qn[i : i + chunk])

    # agreement check (so the benchmark cannot time a wrong implementation)
    q.grad = g.grad = None
    ref = naive_sdm(q, g, ql, gl, mf, ml)
    ref.backward()
    ref_gq = q.grad.clone()  # type: ignore[union-attr]
    q.grad = g.grad = None
    got = sdm_loss(q, g, ql, gl, (mf, ml))
    got.loss.backward()
    value_diff = float((got.loss - ref).detach().abs())
    grad_diff = float((q.grad - ref_gq).abs().max())  # type: ignore[operator]

    def fwd_only(size: int | None) -> Callable[[], None]:
        def fn() -> None:
            with torch.no_grad():
                sdm_loss(q, g, ql, gl, (mf, ml), chunk_size=size)

        return fn

    fns = {
        "naive": naive,
        "floor": floor,
        "fused": fused,
        **({"fused check_finite=False": fused_unchecked} if device.type == "cuda" else {}),
        "compiled": fused_compiled,
        f"floor chunk={chunk}": floor_chunked,
        f"fused chunk={chunk}": fused_chunked,
    }
    times = _time_all(fns, device, warmup, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}

    def measured(fn: Callable[[], Any]) -> int:
        # free the previous call's gradients before the measurement starts: a free of a block
        # allocated earlier would otherwise enter the replay as a negative allocation
        q.grad = g.grad = None
        gc.collect()
        return _peak_bytes(fn, device)

    mem = {k: measured(fns[k]) for k in ("naive", "fused", "compiled", f"fused chunk={chunk}")}
    mem_fwd = {
        "fused": measured(fwd_only(None)),
        f"fused chunk={chunk}": measured(fwd_only(chunk)),
    }
    ck = f"fused chunk={chunk}"
    ratios: dict[str, dict[str, float]] = {}
    for stat, t in (("median", med), ("min", best)):
        ratios[stat] = {
            "naive / fused (speed-up)": t["naive"] / t["fused"],
            "fused / floor": t["fused"] / t["floor"],
            "chunked / fused (time)": t[ck] / t["fused"],
            "chunked floor / floor (matmuls alone)": t[f"floor chunk={chunk}"] / t["floor"],
            "chunked / chunked floor": t[ck] / t[f"floor chunk={chunk}"],
        }
        ratios[stat]["naive / compiled (speed-up)"] = t["naive"] / t["compiled"]
        ratios[stat]["compiled / floor"] = t["compiled"] / t["floor"]
        if "fused check_finite=False" in t:
            ratios[stat]["naive / fused check_finite=False"] = (
                t["naive"] / t["fused check_finite=False"]
            )
    # q.grad + g.grad, which every variant produces: a floor under the fwd+bwd peak of any of them
    grad_bytes = (q.numel() + g.numel()) * q.element_size()
    work = {k: v - grad_bytes for k, v in mem.items()}  # beyond the gradient outputs
    mem_ratios = {
        "chunked / fused (peak memory, fwd+bwd)": mem[ck] / mem["fused"],
        "chunked / fused (fwd+bwd peak beyond the gradient outputs)": work[ck]
        / max(1, work["fused"]),
        "chunked / fused (peak memory, forward without grad)": mem_fwd[ck] / mem_fwd["fused"],
        "naive / fused (peak memory, fwd+bwd)": mem["naive"] / mem["fused"],
    }
    speed_target = 2.0 if device.type == "cuda" else 1.3
    targets: dict[str, bool] = {}
    for stat in ("median", "min"):
        r = ratios[stat]
        targets[f"naive/fused >= {speed_target} ({stat})"] = (
            r["naive / fused (speed-up)"] >= speed_target
        )
        targets[f"naive/compiled >= {speed_target} ({stat})"] = (
            r["naive / compiled (speed-up)"] >= speed_target
        )
        if device.type == "cpu":
            targets[f"fused/floor <= 1.5 ({stat})"] = r["fused / floor"] <= 1.5
            targets[f"compiled/floor <= 1.5 ({stat})"] = r["compiled / floor"] <= 1.5
        targets[f"chunked/fused time <= 1.25 ({stat})"] = r["chunked / fused (time)"] <= 1.25
    targets["chunked/fused memory <= 0.25 (fwd+bwd)"] = (
        mem_ratios["chunked / fused (peak memory, fwd+bwd)"] <= 0.25
    )
    return {
        "device": str(device),
        "config": {"B": b, "N": n, "M": m, "d": d, "chunk": chunk, "repeats": repeats},
        "median_s": med,
        "min_s": best,
        "all_s": times,
        "peak_extra_bytes": mem,
        "gradient_output_bytes": grad_bytes,
        "malloc": _MALLOC_MODE,
        "peak_extra_bytes_forward_no_grad": mem_fwd,
        "ratios": ratios,
        "memory_ratios": mem_ratios,
        "targets": targets,
        "check": {"abs_loss_diff_vs_naive": value_diff, "max_abs_grad_diff_vs_naive": grad_diff},
    }


def _print(res: dict[str, Any]) -> None:
    c = res["config"]
    print(
        f"\n### SDM fwd+bwd on {res['device']} — B={c['B']} N={c['N']} M={c['M']} d={c['d']}, "
        f"float32, median of {c['repeats']} (torch threads: {torch.get_num_threads()}, "
        f"malloc: {res['malloc']})\n"
    )
    print("| variant | median ms | min ms | peak extra MiB (fwd+bwd) | peak MiB (fwd, no grad) |")
    print("|---|---:|---:|---:|---:|")
    for k, v in res["median_s"].items():
        mem = res["peak_extra_bytes"].get(k)
        mf = res["peak_extra_bytes_forward_no_grad"].get(k)
        print(
            f"| {k} | {v * 1e3:.2f} | {res['min_s'][k] * 1e3:.2f} | "
            f"{'-' if mem is None else f'{mem / 2**20:.2f}'} | "
            f"{'-' if mf is None else f'{mf / 2**20:.2f}'} |"
        )
    print("\n| ratio | from medians | from minima |")
    print("|---|---:|---:|")
    for k, v in res["ratios"]["median"].items():
        print(f"| {k} | {v:.2f} | {res['ratios']['min'][k]:.2f} |")
    for k, v in res["memory_ratios"].items():
        print(f"| {k} | {v:.2f} | |")
    print("\n| target | met |")
    print("|---|---|")
    for k, v in res["targets"].items():
        print(f"| {k} | {'yes' if v else 'NO'} |")
    chk = res["check"]
    print(
        f"\nagreement with naive: |Δloss| = {chk['abs_loss_diff_vs_naive']:.2e}, "
        f"max |Δgrad| = {chk['max_abs_grad_diff_vs_naive']:.2e}"
    )
    mem_method = (
        "torch.cuda.max_memory_allocated minus allocated before the call"
        if res["device"].startswith("cuda")
        else "replay of the torch profiler's CPU allocation records (profile_memory=True)"
    )
    print(f"peak memory method: {mem_method}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small, fast smoke configuration")
    parser.add_argument("--json", type=str, default=None, help="write results to this path")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--shape",
        type=str,
        default=None,
        metavar="B,N,M,d",
        help="queries, gallery rows, memory rows, feature dim (default 256,256,768,512)",
    )
    parser.add_argument(
        "--malloc",
        choices=["default", "heap"],
        default="default",
        help="heap: glibc mallopt so that block-sized temporaries come from the heap instead of "
        "fresh mmap pages (what jemalloc/tcmalloc do; the PyTorch CPU tuning guide's advice), "
        "for every variant alike",
    )
    args = parser.parse_args(argv)
    if args.malloc == "heap":
        _malloc_from_heap()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        b, n, m, d, warmup, repeats = 64, 64, 192, 128, 1, 3
    else:
        b, n, m, d, warmup, repeats = 256, 256, 768, 512, 3, 25
    repeats = args.repeats or repeats
    if args.shape:
        try:
            b, n, m, d = (int(x) for x in args.shape.split(","))
        except ValueError:
            parser.error(f"--shape expects four integers B,N,M,d, got {args.shape!r}")
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    results: dict[str, Any] = {"benchmark": "sdm", "results": []}
    for dev in devices:
        res = run_device(dev, b, n, m, d, warmup, repeats)
        _print(res)
        results["results"].append(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
