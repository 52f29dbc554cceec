"""Benchmark: sdm_loss (default, compiled, chunked) against IRRA's SDM formula, in one run.

Configuration: B=256 queries, N=256 gallery + M=768 memory columns, d=512, forward + backward,
float32, on CPU (and CUDA when available). All variants run in the same process, interleaved
round by round, with gc disabled, after warm-up; the median is reported.

* ``irra`` (the baseline): IRRA's ``compute_sdm`` on full matrices (softmax + log_softmax +
  log(q + ε) for both directions, label matrix normalised per row), extended as little as needed
  for this batch: memory appended as columns, rows without a positive masked.
* ``floor``: only the similarity matmuls and the two of their backward on pre-normalised inputs
  (``q̂ · [ĝ; m̂]ᵀ``, ``dq = G · [ĝ; m̂]``, ``dg = G[:, :N]ᵀ · q̂``): work no implementation avoids.
* ``default``: :func:`sdmreid.losses.sdm_loss` (validation, normalisation, both directions, the
  finiteness check's one read).
* ``compiled``: ``sdm_loss(..., compiled=True)`` (compiled during warm-up; compile time is not in
  the table). On CUDA also ``on_nonfinite="ignore"`` variants and ``compiled="reduce-overhead"``.
* ``chunk=B/8``: ``sdm_loss(..., chunk_size=B // 8)``.

Per query modality (second table): one batch of B queries spread evenly over the 4 query
modalities (NIR, SKETCH, CPENCIL, TEXT) and N RGB rows, shuffled, with M RGB memory rows, d=512;
every identity has RGB rows and one row of each query modality.

* ``sdm_loss, split``: today's pooled call as a trainer makes it: the batch split into query and
  RGB rows by ``nonzero`` + ``index_select`` (a host synchronisation on a GPU), then one
  ``sdm_loss`` — "one pooled call", the baseline.
* ``pooled`` / ``per_modality``: :func:`sdmreid.losses.sdm_per_modality` in either mode on the
  whole batch (rows chosen by masks: no host read, so one block over every batch row);
  ``compiled`` variants run the same body under ``torch.compile``.
* ``loop of 4 sdm_loss``: what a pipeline does without it: one split and one ``sdm_loss`` per
  query modality, averaged (four host synchronisations on a GPU).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the
call. On CPU (where tracemalloc cannot see torch's allocator) the PyTorch profiler's allocation
records (``profile_memory=True``: every allocation and free of the c10 CPU allocator, with its
timestamp) are replayed in time order; the peak of the running sum is the extra memory the call
needed on top of its inputs. "Beyond the gradient outputs" subtracts ``q.grad`` and ``g.grad``,
which every variant must produce.

Usage::

    python benchmarks/bench_sdm.py [--quick] [--json out.json] [--device cpu|cuda|all]
        [--part all|sdm|per-modality]
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

from sdmreid.losses import sdm_loss, sdm_per_modality


def irra_sdm(
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
    ck = f"chunk={chunk}"

    # floor inputs: pre-normalised, plus a fixed upstream gradient for the similarity block
    qn, cols = F.normalize(q.detach(), dim=1), F.normalize(torch.cat([g.detach(), mf]), dim=1)
    upstream = torch.randn(b, n + m, generator=gen).to(device)

    def sdm(**kwargs: Any) -> Callable[[], None]:
        def fn() -> None:
            q.grad = g.grad = None
            sdm_loss(q, g, ql, gl, (mf, ml), **kwargs).loss.backward()

        return fn

    def irra() -> None:
        q.grad = g.grad = None
        irra_sdm(q, g, ql, gl, mf, ml).backward()

    def floor() -> None:
        _sim = qn @ cols.t()
        _dq = upstream @ cols
        _dg = upstream[:, :n].t() @ qn

    fns: dict[str, Callable[[], None]] = {
        "irra": irra,
        "floor": floor,
        "default": sdm(),
        "compiled": sdm(compiled=True),
        ck: sdm(chunk_size=chunk),
    }
    if device.type == "cuda":  # where the finiteness read is a synchronisation
        fns["default, ignore"] = sdm(on_nonfinite="ignore")
        fns["compiled, ignore"] = sdm(compiled=True, on_nonfinite="ignore")
        fns["reduce-overhead, ignore"] = sdm(compiled="reduce-overhead", on_nonfinite="ignore")

    # agreement check (so that the benchmark cannot time a wrong implementation)
    check: dict[str, float] = {}
    q.grad = g.grad = None
    ref = irra_sdm(q, g, ql, gl, mf, ml)
    ref.backward()
    ref_gq = q.grad.clone()  # type: ignore[union-attr]
    for name, kwargs in (
        ("default", {}),
        ("compiled", {"compiled": True}),
        (ck, {"chunk_size": chunk}),
    ):
        q.grad = g.grad = None
        got = sdm_loss(q, g, ql, gl, (mf, ml), **kwargs)
        got.loss.backward()
        check[f"{name}: |Δloss|"] = float((got.loss - ref).detach().abs())
        check[f"{name}: max |Δgrad|"] = float((q.grad - ref_gq).abs().max())  # type: ignore[operator]

    times = _time_all(fns, device, warmup, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}

    def measured(fn: Callable[[], Any]) -> int:
        # free the previous call's gradients before the measurement starts: a free of a block
        # allocated earlier would otherwise enter the replay as a negative allocation
        q.grad = g.grad = None
        gc.collect()
        return _peak_bytes(fn, device)

    mem = {k: measured(fns[k]) for k in ("irra", "default", "compiled", ck)}
    grad_bytes = (q.numel() + g.numel()) * q.element_size()
    work = {k: v - grad_bytes for k, v in mem.items()}  # beyond the gradient outputs

    ratios: dict[str, dict[str, float]] = {}
    for stat, t in (("median", med), ("min", best)):
        ratios[stat] = {
            "irra / default (speed-up)": t["irra"] / t["default"],
            "irra / compiled (speed-up)": t["irra"] / t["compiled"],
            "default / floor (time)": t["default"] / t["floor"],
            "compiled / floor (time)": t["compiled"] / t["floor"],
            f"{ck} / default (time)": t[ck] / t["default"],
        }
        for k in ("default, ignore", "compiled, ignore", "reduce-overhead, ignore"):
            if k in t:
                ratios[stat][f"irra / {k} (speed-up)"] = t["irra"] / t[k]
    mem_ratios = {
        "default / irra (peak memory)": mem["default"] / mem["irra"],
        "compiled / irra (peak memory)": mem["compiled"] / mem["irra"],
        f"{ck} / default (peak memory beyond the gradient outputs)": work[ck]
        / max(1, work["default"]),
    }
    speed_targets = {"default": 1.0, "compiled": 1.5}
    targets: dict[str, bool] = {}
    for stat in ("median", "min"):
        r = ratios[stat]
        for name, target in speed_targets.items():
            targets[f"irra/{name} >= {target} ({stat})"] = r[f"irra / {name} (speed-up)"] >= target
    targets["default peak <= irra peak"] = mem_ratios["default / irra (peak memory)"] <= 1.0
    targets[f"{ck} peak beyond gradients <= 0.25 x default"] = (
        mem_ratios[f"{ck} / default (peak memory beyond the gradient outputs)"] <= 0.25
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
        "ratios": ratios,
        "memory_ratios": mem_ratios,
        "targets": targets,
        "check": check,
    }


QUERY_MODALITIES = (1, 2, 3, 4)  # NIR, SKETCH, CPENCIL, TEXT


def per_modality_batch(
    b: int, n: int, m: int, d: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``b`` query rows over 4 query modalities and ``n`` RGB rows, shuffled; ``m`` memory rows.
    Identities have 4 RGB rows and one row per query modality (the issue's SDM shape)."""
    gen = torch.Generator().manual_seed(0)
    mods = torch.cat(
        [torch.arange(b) % len(QUERY_MODALITIES) + 1, torch.zeros(n, dtype=torch.long)]
    )
    labels = torch.cat([torch.arange(b) // len(QUERY_MODALITIES), torch.arange(n) // 4])
    perm = torch.randperm(b + n, generator=gen)
    x = torch.randn(b + n, d, generator=gen)[perm].to(device).requires_grad_()
    mf = torch.randn(m, d, generator=gen).to(device)
    ml = torch.randint(0, 2 * max(1, n // 4), (m,), generator=gen).to(device)
    return x, labels[perm].to(device), mods[perm].to(device), mf, ml


def run_per_modality(
    device: torch.device, b: int, n: int, m: int, d: int, warmup: int, repeats: int
) -> dict[str, Any]:
    x, labels, mods, mf, ml = per_modality_batch(b, n, m, d, device)
    mem = (mf, ml)

    def split() -> None:
        x.grad = None
        rgb = mods == 0
        qi, gi = (~rgb).nonzero()[:, 0], rgb.nonzero()[:, 0]
        sdm_loss(x.index_select(0, qi), x.index_select(0, gi), labels.index_select(0, qi),
                 labels.index_select(0, gi), mem).loss.backward()  # fmt: skip

    def loop() -> None:
        x.grad = None
        rgb = mods == 0
        gi = rgb.nonzero()[:, 0]
        g, gl = x.index_select(0, gi), labels.index_select(0, gi)
        losses = []
        for code in QUERY_MODALITIES:
            qi = (mods == code).nonzero()[:, 0]
            losses.append(sdm_loss(x.index_select(0, qi), g, labels.index_select(0, qi), gl,
                                   mem).loss)  # fmt: skip
        torch.stack(losses).mean().backward()

    def per(**kwargs: Any) -> Callable[[], None]:
        def fn() -> None:
            x.grad = None
            sdm_per_modality(x, labels, mods, mem, **kwargs).loss.backward()

        return fn

    fns: dict[str, Callable[[], None]] = {
        "sdm_loss, split": split,
        "pooled": per(mode="pooled"),
        "per_modality": per(),
        "pooled, compiled": per(mode="pooled", compiled=True),
        "per_modality, compiled": per(compiled=True),
        "loop of 4 sdm_loss": loop,
    }
    if device.type == "cuda":  # where a host read is a synchronisation
        fns["per_modality, ignore"] = per(on_nonfinite="ignore")
        fns["per_modality, compiled, ignore"] = per(compiled=True, on_nonfinite="ignore")

    # agreement (so that the benchmark cannot time a wrong implementation)
    check: dict[str, float] = {}
    rgb = mods == 0
    per_mod = sdm_per_modality(x, labels, mods, mem)
    for code in QUERY_MODALITIES:
        q = mods == code
        want = sdm_loss(x[q], x[rgb], labels[q], labels[rgb], mem).loss
        got = per_mod.per_modality[next(k for k in per_mod.per_modality if int(k) == code)].loss
        check[f"per_modality[{code}] vs sdm_loss"] = float((got - want).detach().abs())
    want = sdm_loss(x[~rgb], x[rgb], labels[~rgb], labels[rgb], mem).loss
    got = sdm_per_modality(x, labels, mods, mem, mode="pooled").loss
    check["pooled vs sdm_loss"] = float((got - want).detach().abs())
    got = sdm_per_modality(x, labels, mods, mem, compiled=True).loss
    check["per_modality compiled vs eager"] = float((got - per_mod.loss).detach().abs())

    times = _time_all(fns, device, warmup, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}

    def measured(fn: Callable[[], Any]) -> int:
        x.grad = None
        gc.collect()
        return _peak_bytes(fn, device)

    mem_names = ("sdm_loss, split", "pooled", "per_modality", "per_modality, compiled")
    peak = {k: measured(fns[k]) for k in mem_names}
    ratios: dict[str, dict[str, float]] = {}
    for stat, t in (("median", med), ("min", best)):
        ratios[stat] = {
            "per_modality / pooled (time)": t["per_modality"] / t["pooled"],
            "per_modality, compiled / pooled, compiled (time)": t["per_modality, compiled"]
            / t["pooled, compiled"],
            "per_modality / sdm_loss, split (time)": t["per_modality"] / t["sdm_loss, split"],
            "per_modality, compiled / sdm_loss, split (time)": t["per_modality, compiled"]
            / t["sdm_loss, split"],
            "loop of 4 sdm_loss / sdm_loss, split (time)": t["loop of 4 sdm_loss"]
            / t["sdm_loss, split"],
        }
    targets: dict[str, bool] = {}
    for stat in ("median", "min"):
        r = ratios[stat]
        targets[f"per_modality <= 1.5 x pooled ({stat})"] = r["per_modality / pooled (time)"] <= 1.5
        targets[f"per_modality, compiled <= 1.5 x pooled, compiled ({stat})"] = (
            r["per_modality, compiled / pooled, compiled (time)"] <= 1.5
        )
    return {
        "device": str(device),
        "config": {"B": b, "N": n, "M": m, "d": d, "repeats": repeats,
                   "query_modalities": len(QUERY_MODALITIES)},
        "median_s": med,
        "min_s": best,
        "all_s": times,
        "peak_extra_bytes": peak,
        "malloc": _MALLOC_MODE,
        "ratios": ratios,
        "targets": targets,
        "check": check,
    }  # fmt: skip


def _print_per_modality(res: dict[str, Any]) -> None:
    c = res["config"]
    print(
        f"\n### SDM per query modality, fwd+bwd on {res['device']} — {c['B']} queries over "
        f"{c['query_modalities']} query modalities, N={c['N']} RGB, M={c['M']}, d={c['d']}, "
        f"float32, median of {c['repeats']} (torch threads: {torch.get_num_threads()}, "
        f"malloc: {res['malloc']})\n"
    )
    print("| variant | median ms | min ms | peak extra MiB |")
    print("|---|---:|---:|---:|")
    for k, v in res["median_s"].items():
        mem = res["peak_extra_bytes"].get(k)
        peak = "-" if mem is None else f"{mem / 2**20:.2f}"
        print(f"| {k} | {v * 1e3:.2f} | {res['min_s'][k] * 1e3:.2f} | {peak} |")
    print("\n| ratio | from medians | from minima |")
    print("|---|---:|---:|")
    for k, v in res["ratios"]["median"].items():
        print(f"| {k} | {v:.2f} | {res['ratios']['min'][k]:.2f} |")
    print("\n| target | met |")
    print("|---|---|")
    for k, v in res["targets"].items():
        print(f"| {k} | {'yes' if v else 'NO'} |")
    print("\nagreement: " + ", ".join(f"{k} {v:.1e}" for k, v in res["check"].items()))


def _print(res: dict[str, Any]) -> None:
    c = res["config"]
    print(
        f"\n### SDM fwd+bwd on {res['device']} — B={c['B']} N={c['N']} M={c['M']} d={c['d']}, "
        f"float32, median of {c['repeats']} (torch threads: {torch.get_num_threads()}, "
        f"malloc: {res['malloc']})\n"
    )
    grad = res["gradient_output_bytes"]
    print("| variant | median ms | min ms | peak extra MiB | beyond gradient outputs MiB |")
    print("|---|---:|---:|---:|---:|")
    for k, v in res["median_s"].items():
        mem = res["peak_extra_bytes"].get(k)
        peak = "-" if mem is None else f"{mem / 2**20:.2f}"
        beyond = "-" if mem is None else f"{(mem - grad) / 2**20:.2f}"
        print(f"| {k} | {v * 1e3:.2f} | {res['min_s'][k] * 1e3:.2f} | {peak} | {beyond} |")
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
    print("\nagreement with irra: " + ", ".join(f"{k} {v:.1e}" for k, v in res["check"].items()))
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
    parser.add_argument(
        "--part",
        choices=["all", "sdm", "per-modality"],
        default="all",
        help="sdm: sdm_loss against IRRA; per-modality: sdm_per_modality against the pooled "
        "call; all: both",
    )
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
    results: dict[str, Any] = {"benchmark": "sdm", "results": [], "per_modality": []}
    for dev in devices:
        if args.part in ("all", "sdm"):
            res = run_device(dev, b, n, m, d, warmup, repeats)
            _print(res)
            results["results"].append(res)
        if args.part in ("all", "per-modality"):
            res = run_per_modality(dev, b, n, m, d, warmup, repeats)
            _print_per_modality(res)
            results["per_modality"].append(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
