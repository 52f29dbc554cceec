"""Tests for PairCoverageMeter and HealthMonitor (contract: DESIGN §4, recipe health rules)."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmreid.monitoring import (
    RULES,
    Action,
    Finding,
    HealthMonitor,
    PairCoverageMeter,
    Severity,
)
from sdmreid.schedules import SDMWeightScheduler


def roundtrip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --- naive reference ------------------------------------------------------------------------------


def ref_coverage(updates: list[tuple[int, int]], window: int) -> float:
    last = updates[-window:]
    rows = sum(r for r, _ in last)
    without = sum(w for _, w in last)
    return math.nan if rows == 0 else 1.0 - without / rows


@st.composite
def count_pairs(draw: st.DrawFn, max_rows: int = 200) -> tuple[int, int]:
    rows = draw(st.integers(0, max_rows))
    return rows, draw(st.integers(0, rows))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# --- PairCoverageMeter ---------------------------------------------------------------------


def test_nan_before_first_update() -> None:
    m = PairCoverageMeter()
    assert math.isnan(m.value)
    assert m.log_line() == "[dbg] pair_coverage_mavg=nan"
    assert m.below_target is False
    assert m.num_updates == 0


def test_log_line_format() -> None:
    m = PairCoverageMeter()
    m.update(1000, 88)
    assert m.log_line() == "[dbg] pair_coverage_mavg=0.912"
    assert m.value == 1 - 88 / 1000


def test_all_zero_rows_is_nan() -> None:
    m = PairCoverageMeter(window=2)
    m.update(0, 0)
    assert math.isnan(m.value)
    m.update(4, 1)
    assert m.value == 0.75


@given(
    st.integers(1, 12),
    st.lists(st.tuples(count_pairs(), st.booleans()), min_size=1, max_size=40),
)
def test_window_matches_naive_reference(window: int, steps: list[Any]) -> None:
    m = PairCoverageMeter(window=window)
    seen: list[tuple[int, int]] = []
    for (rows, without), as_tensor in steps:
        if as_tensor:
            m.update(torch.tensor(rows), torch.tensor(without, dtype=torch.int32))
        else:
            m.update(rows, without)
        seen.append((rows, without))
        expected = ref_coverage(seen, window)
        assert same(m.value, expected)
        assert m.below_target is (expected < 0.85)
    assert m.num_updates == len(steps)


@given(
    st.integers(1, 10),
    st.integers(1, 10),
    st.lists(count_pairs(), min_size=0, max_size=30),
    st.lists(count_pairs(), min_size=0, max_size=15),
)
def test_resume_from_state(
    window: int, new_window: int, before: list[tuple[int, int]], after: list[tuple[int, int]]
) -> None:
    a = PairCoverageMeter(window=window)
    for r, w in before:
        a.update(r, w)
    state = roundtrip(a.state_dict())
    assert state["rows"] == [r for r, _ in before[-window:]]
    b = PairCoverageMeter(window=new_window)
    b.load_state_dict(state)
    # the resumed meter holds the last min(window, new_window) saved updates
    kept = before[-min(window, new_window) :] if before else []
    assert same(b.value, ref_coverage(kept, new_window) if kept else math.nan)
    for r, w in after:
        b.update(r, w)
    if kept or after:
        assert same(b.value, ref_coverage(kept + after, new_window))
    assert b.num_updates == len(before) + len(after)


def test_reset() -> None:
    m = PairCoverageMeter(window=3)
    m.update(10, 5)
    m.reset()
    assert math.isnan(m.value)
    m.update(10, 1)
    assert m.value == 0.9


@pytest.mark.parametrize(
    ("rows", "without", "exc", "match"),
    [
        (-1, 0, ValueError, "rows must be >= 0"),
        (3, -1, ValueError, "rows_without_positive must be >= 0"),
        (3, 4, ValueError, "rows_without_positive must be <= rows"),
        (torch.tensor(3), torch.tensor(4), ValueError, "<= rows"),
        (torch.tensor(-3), 0, ValueError, "rows must be >= 0"),
        (3.0, 1, TypeError, "rows"),
        (3, 1.5, TypeError, "rows_without_positive"),
        (True, 0, TypeError, "rows"),
        (torch.tensor(3.0), 1, TypeError, "integer tensor"),
        (torch.tensor([3, 4]), 1, ValueError, "0-dim"),
        ("3", 1, TypeError, "rows"),
    ],
)
def test_update_validation(rows: Any, without: Any, exc: type, match: str) -> None:
    m = PairCoverageMeter()
    with pytest.raises(exc, match=match):
        m.update(rows, without)
    assert m.num_updates == 0
    assert math.isnan(m.value)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="window"):
        PairCoverageMeter(window=0)
    with pytest.raises(TypeError, match="window"):
        PairCoverageMeter(window=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        PairCoverageMeter(target=1.5)
    with pytest.raises(ValueError, match="target"):
        PairCoverageMeter(target=math.nan)


def test_update_from_duck_typing() -> None:
    m = PairCoverageMeter()
    m.update_from(SimpleNamespace(rows=torch.tensor(20), rows_without_positive=torch.tensor(3)))
    m.update_from(SimpleNamespace(rows=10, rows_without_positive=0, loss=1.0))
    assert m.value == 1 - 3 / 30
    with pytest.raises(TypeError, match="rows_without_positive"):
        m.update_from(SimpleNamespace(rows=3))


def test_load_state_validation() -> None:
    m = PairCoverageMeter()
    with pytest.raises(ValueError, match="state"):
        m.load_state_dict({"rows": [1]})
    with pytest.raises(ValueError, match="<= rows"):
        m.load_state_dict({"rows": [1], "rows_without_positive": [2], "num_updates": 1})


def test_sync_single_process_is_identity() -> None:
    m = PairCoverageMeter(window=2)
    m.update(10, 1)
    m.update(10, 3)
    assert m.sync() is m
    assert m.synced
    assert m.value == 0.8
    m.update(10, 0)
    assert not m.synced
    assert m.value == 1 - 3 / 20


def test_compute_is_tensor_on_buffer_device() -> None:
    m = PairCoverageMeter()
    m.update(torch.tensor(8), torch.tensor(2))
    out = m.compute()
    assert out.dtype == torch.float64
    assert out.device.type == "cpu"
    assert out.item() == 0.75


@pytest.mark.gpu
def test_cuda_counts_stay_on_device_without_sync() -> None:
    dev = torch.device("cuda")
    m = PairCoverageMeter(window=4)
    m.update(5, 1)  # int first: CPU buffer, migrates on the first tensor update
    ref: list[tuple[int, int]] = [(5, 1)]
    steps = [(8, 2), (16, 0), (4, 4), (10, 3)]
    # made before the check: a tensor from a Python number is a host-to-device copy
    counts = [(torch.tensor(r, device=dev), torch.tensor(w, device=dev)) for r, w in steps]
    # the first device update moves the window to the device: one copy, once per meter
    m.update(*counts[0])
    ref.append(steps[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for (r, w), (rt, wt) in zip(steps[1:], counts[1:], strict=True):
            m.update(rt, wt)
            ref.append((r, w))
        m.update(7, counts[0][1])  # int rows + device count (what a trainer passes)
        ref.append((7, 2))
        m.update(3, 1)  # ints after the switch are written on the device too
        ref.append((3, 1))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert m.device.type == "cuda"
    assert m.compute().device.type == "cuda"
    assert m.value == ref_coverage(ref, 4)
    bad = PairCoverageMeter()
    bad.update(torch.tensor(3, device=dev), torch.tensor(5, device=dev))  # no error yet
    with pytest.raises(ValueError, match="rows_without_positive > rows"):
        _ = bad.value
    with pytest.raises(ValueError, match="reset"):
        bad.state_dict()
    bad.reset()
    bad.update(torch.tensor(3, device=dev), torch.tensor(1, device=dev))
    assert bad.value == 1 - 1 / 3
    state = roundtrip(m.state_dict())
    cpu = PairCoverageMeter(window=4)
    cpu.load_state_dict(state)
    assert cpu.value == m.value


# --- HealthMonitor -------------------------------------------------------------------------

NUM_CLASSES = 365  # ln 365 ≈ 5.90, the recipe's "CE back at ~5.9"
noise = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)


def run_epochs(
    mon: HealthMonitor,
    ce: list[float],
    sdm_on: list[bool],
    train: list[float] | None = None,
    val: list[float] | None = None,
) -> list[Finding]:
    out: list[Finding] = []
    for i, c in enumerate(ce):
        kw: dict[str, Any] = {}
        if train is not None and val is not None:
            kw = {"train_score": train[i], "val_score": val[i]}
        out += mon.observe_epoch(i + 1, train_ce=c, sdm_on=sdm_on[i], **kw)
    return out


def healthy_epoch_curves(
    eps: list[float],
) -> tuple[list[float], list[bool], list[float], list[float]]:
    """A healthy run: CE falls from ~4 after SDM starts at epoch 2; val tracks train."""
    n = len(eps)
    ce = [1.0 + 3.0 * 0.6**e + 0.05 * eps[e] for e in range(n)]
    sdm = [e >= 1 for e in range(n)]
    train = [min(0.95, 0.3 + 0.05 * e) + 0.004 * eps[e] for e in range(n)]
    val = [t - 0.1 - 0.004 * eps[(e + 3) % n] for e, t in enumerate(train)]
    return ce, sdm, train, val


@given(st.lists(noise, min_size=12, max_size=12))
def test_healthy_epoch_curve_is_silent(eps: list[float]) -> None:
    mon = HealthMonitor(NUM_CLASSES)
    ce, sdm, train, val = healthy_epoch_curves(eps)
    assert run_epochs(mon, ce, sdm, train, val) == []
    assert mon.findings == ()


@given(st.lists(noise, min_size=400, max_size=400))
@settings(max_examples=25)
def test_healthy_step_curve_is_silent(eps: list[float]) -> None:
    mon = HealthMonitor(NUM_CLASSES)
    for step in range(400):
        epoch = 1 + step // 100
        cov = 0.92 + 0.05 * eps[step]
        norm = 7.0 * (1.0 + 0.002 * step) * (1.0 + 0.1 * eps[(step * 7) % 400])
        assert mon.observe_step(epoch, step, coverage=cov, classifier_weight_norm=norm) == []


def test_ce_near_chance_fires_and_rolls_back() -> None:
    sched = SDMWeightScheduler()
    mon = HealthMonitor(NUM_CLASSES)
    out = run_epochs(mon, [5.5, 2.0], [False, True])
    assert out == []  # near chance in warm-up is not a finding (SDM off)
    got = mon.observe_epoch(3, train_ce=5.85, sdm_on=sched.use_sdm(3), scheduler=sched)
    assert [f.rule for f in got] == ["ce_near_chance"]
    f = got[0]
    assert (f.severity, f.action, f.epoch, f.step) == (
        Severity.CRITICAL,
        Action.ROLLBACK_SDM,
        3,
        None,
    )
    assert "sampler" in f.message
    assert [sched.weight(e) for e in (2, 3, 4, 5)] == [0.1, 0.1, 0.1, 0.1]
    # without a scheduler nothing is applied
    sched2 = SDMWeightScheduler()
    HealthMonitor(NUM_CLASSES).observe_epoch(3, train_ce=5.85, sdm_on=True)
    assert sched2.rollbacks == ()


@given(st.floats(0.0, 12.0, allow_nan=False), st.integers(2, 5000), st.floats(0.0, 0.5))
def test_ce_near_chance_threshold(ce: float, num_classes: int, tol: float) -> None:
    mon = HealthMonitor(num_classes, chance_tolerance=tol)
    got = mon.observe_epoch(2, train_ce=ce, sdm_on=True)
    fires = ce >= (1 - tol) * math.log(num_classes)
    assert ("ce_near_chance" in [f.rule for f in got]) is fires


def test_ce_not_recovering() -> None:
    mon = HealthMonitor(NUM_CLASSES)
    got = run_epochs(mon, [4.0, 2.8, 2.9, 2.85], [False, True, True, True])
    assert [(f.rule, f.epoch, f.severity) for f in got] == [
        ("ce_not_recovering", 4, Severity.WARNING)
    ]
    # a rise that falls again within 2 epochs is allowed
    mon = HealthMonitor(NUM_CLASSES)
    assert run_epochs(mon, [4.0, 2.8, 2.9, 2.7, 2.2], [False] + [True] * 4) == []
    # high CE before SDM is not this rule's business
    mon = HealthMonitor(NUM_CLASSES)
    assert run_epochs(mon, [4.0, 3.9, 3.95, 4.1], [False] * 4) == []


@given(st.lists(st.floats(2.0, 4.0, allow_nan=False), min_size=3, max_size=8))
def test_ce_not_recovering_matches_predicate(ce: list[float]) -> None:
    mon = HealthMonitor(NUM_CLASSES, ce_recovery_epochs=2)
    got = run_epochs(mon, ce, [True] * len(ce))
    expected = [
        e + 1 for e in range(2, len(ce)) if min(ce[e - 2 : e + 1]) > 2.5 and ce[e] >= ce[e - 2]
    ]
    assert [f.epoch for f in got if f.rule == "ce_not_recovering"] == expected


def test_coverage_floor_fires_after_a_whole_window() -> None:
    mon = HealthMonitor(NUM_CLASSES)
    fired: list[Finding] = []
    for step in range(150):
        fired += mon.observe_step(1, step, coverage=0.6)
        if step < 99:
            assert fired == []
    assert [(f.rule, f.step, f.action) for f in fired] == [
        ("coverage_floor", 99, Action.REDUCE_PK_OR_RAISE_FALLBACK)
    ]
    assert "fallback_ratio" in fired[0].message
    # still low in the next epoch: fires once more (once per epoch)
    nxt = [f for s in range(150, 400) for f in mon.observe_step(2, s, coverage=0.6)]
    assert [(f.rule, f.epoch) for f in nxt] == [("coverage_floor", 2)]


def test_coverage_below_target_warning() -> None:
    mon = HealthMonitor(NUM_CLASSES)
    fired = [f for s in range(120) for f in mon.observe_step(1, s, coverage=0.8)]
    assert [(f.rule, f.step, f.severity) for f in fired] == [
        ("coverage_below_target", 99, Severity.WARNING)
    ]


def test_coverage_sparse_readings_and_interruptions() -> None:
    # read every 100 steps, as the recipe logs: two low readings span a whole window
    mon = HealthMonitor(NUM_CLASSES)
    assert mon.observe_step(1, 100, coverage=0.5) == []
    assert [f.rule for f in mon.observe_step(1, 200, coverage=0.5)] == ["coverage_floor"]
    # a healthy reading breaks the streak; nan readings neither extend nor break it
    mon = HealthMonitor(NUM_CLASSES, coverage_window=10)
    out = []
    for s in range(40):
        cov = 0.95 if s % 9 == 8 else (math.nan if s % 5 == 0 else 0.5)
        out += mon.observe_step(1, s, coverage=cov)
    assert out == []


def test_head_weight_norm_growth() -> None:
    mon = HealthMonitor(NUM_CLASSES)
    norms = [7.0, 7.5, 9.0, 15.0, 20.9, 21.0, 35.0, 36.0]  # the recipe's 7 -> 35
    fired = [
        f for s, n in enumerate(norms) for f in mon.observe_step(2, s, classifier_weight_norm=n)
    ]
    assert [(f.rule, f.step, f.action) for f in fired] == [
        ("head_weight_norm_growth", 5, Action.DROP_HEAD_LR)
    ]
    assert fired[0].suggested == (("head_lr", 3e-3),)
    # the base of a new epoch is the norm at its start (the previous epoch's last reading)
    assert mon.observe_step(3, 100, classifier_weight_norm=100.0) == []
    assert [f.rule for f in mon.observe_step(3, 101, classifier_weight_norm=108.0)] == [
        "head_weight_norm_growth"
    ]


def test_overfitting_gap_growth() -> None:
    mon = HealthMonitor(NUM_CLASSES)
    train = [0.5, 0.6, 0.7, 0.8, 0.9]
    val = [0.45, 0.5, 0.52, 0.53, 0.53]
    got = run_epochs(mon, [3.0, 2.0, 1.8, 1.5, 1.2], [False] + [True] * 4, train, val)
    assert [(f.rule, f.epoch, f.action) for f in got] == [
        ("overfitting", 4, Action.REGULARIZE),
        ("overfitting", 5, Action.REGULARIZE),
    ]
    assert dict(got[0].suggested) == {
        "label_smoothing": 0.15,
        "head_lr": 1e-3,
        "weight_decay": 5e-4,
    }


@given(st.lists(st.floats(-0.2, 0.6, allow_nan=False), min_size=4, max_size=10))
def test_overfitting_matches_predicate(gaps: list[float]) -> None:
    mon = HealthMonitor(NUM_CLASSES, gap_epochs=3, gap_min_growth=0.02)
    n = len(gaps)
    train = [0.8] * n
    val = [0.8 - g for g in gaps]
    got = run_epochs(mon, [1.0] * n, [True] * n, train, val)
    real = [t - v for t, v in zip(train, val, strict=True)]
    expected = [
        e + 1
        for e in range(3, n)
        if all(real[i + 1] > real[i] for i in range(e - 3, e)) and real[e] - real[e - 3] >= 0.02
    ]
    assert [f.epoch for f in got] == expected


def test_findings_are_typed_frozen_and_serialisable() -> None:
    mon = HealthMonitor(NUM_CLASSES)
    f = mon.observe_epoch(2, train_ce=6.0, sdm_on=True)[0]
    with pytest.raises(AttributeError):
        f.rule = "x"  # type: ignore[misc]
    assert Finding.from_dict(roundtrip(f.to_dict())) == f
    assert str(f).startswith("[health] critical ce_near_chance epoch=2")
    assert set(RULES) == {
        "ce_near_chance",
        "ce_not_recovering",
        "coverage_floor",
        "coverage_below_target",
        "overfitting",
        "head_weight_norm_growth",
    }
    assert all(RULES[r].severity == f.severity for r in ["ce_near_chance"])


@given(st.integers(0, 300), st.lists(noise, min_size=300, max_size=300))
@settings(max_examples=20)
def test_state_round_trip_resumes_identically(split: int, eps: list[float]) -> None:
    def feed(mon: HealthMonitor, lo: int, hi: int) -> list[Finding]:
        out: list[Finding] = []
        for s in range(lo, hi):
            epoch = 1 + s // 50
            out += mon.observe_step(
                epoch, s, coverage=0.75 + 0.1 * eps[s], classifier_weight_norm=5 + s * 0.2
            )
            if s % 50 == 49:
                out += mon.observe_epoch(epoch, train_ce=2.6 + 0.2 * eps[s], sdm_on=epoch > 1)
        return out

    ref = HealthMonitor(NUM_CLASSES, coverage_window=20)
    full = feed(ref, 0, 300)
    a = HealthMonitor(NUM_CLASSES, coverage_window=20)
    first = feed(a, 0, split)
    b = HealthMonitor(NUM_CLASSES, coverage_window=20)
    b.load_state_dict(roundtrip(a.state_dict()))
    second = feed(b, split, 300)
    assert first + second == full
    assert b.findings == ref.findings


def test_monitor_validation() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        HealthMonitor(1)
    with pytest.raises(ValueError, match="coverage_floor"):
        HealthMonitor(10, coverage_floor=0.9, coverage_target=0.85)
    with pytest.raises(ValueError, match="chance_tolerance"):
        HealthMonitor(10, chance_tolerance=-0.1)
    mon = HealthMonitor(10)
    mon.observe_step(1, 5, coverage=0.9)
    with pytest.raises(ValueError, match="global step"):
        mon.observe_step(1, 5)
    with pytest.raises(ValueError, match="epoch"):
        mon.observe_step(0, 6)
    with pytest.raises(ValueError, match="coverage"):
        mon.observe_step(1, 7, coverage=1.2)
    with pytest.raises(ValueError, match="classifier_weight_norm"):
        mon.observe_step(1, 8, classifier_weight_norm=math.inf)
    with pytest.raises(ValueError, match="train_ce"):
        mon.observe_epoch(1, train_ce=math.nan, sdm_on=False)
    with pytest.raises(TypeError, match="sdm_on"):
        mon.observe_epoch(1, train_ce=1.0, sdm_on=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both"):
        mon.observe_epoch(1, train_ce=1.0, sdm_on=False, train_score=0.5)
    mon.observe_epoch(1, train_ce=1.0, sdm_on=False)
    with pytest.raises(ValueError, match="increase"):
        mon.observe_epoch(1, train_ce=1.0, sdm_on=False)
    with pytest.raises(ValueError, match="state"):
        mon.load_state_dict({"epochs": [1]})


def test_tensor_readings_accepted() -> None:
    mon = HealthMonitor(10, coverage_window=1)
    got = mon.observe_step(
        1, 0, coverage=torch.tensor(0.5), classifier_weight_norm=torch.tensor(3.0)
    )
    assert [f.rule for f in got] == ["coverage_floor"]
    assert mon.observe_epoch(1, train_ce=torch.tensor(1.0), sdm_on=True) == []


@given(
    st.lists(st.floats(-0.2, 0.6, allow_nan=False), min_size=4, max_size=8),
    st.integers(1, 4),
)
def test_overfitting_counts_scored_epochs_only(gaps: list[float], every: int) -> None:
    """Scores every ``every`` epochs (as a trainer validating every N epochs gives them): the
    rule runs over the scored epochs, fires only at a scored epoch, unaffected by the others."""
    mon = HealthMonitor(NUM_CLASSES, gap_epochs=3, gap_min_growth=0.02)
    fired: list[int] = []
    scored_epochs = []
    for i, gap in enumerate(gaps):
        for j in range(every):
            epoch = i * every + j + 1
            kw: dict[str, Any] = {}
            if j == every - 1:
                kw = {"train_score": 0.8, "val_score": 0.8 - gap}
                scored_epochs.append(epoch)
            fired += [
                f.epoch
                for f in mon.observe_epoch(epoch, train_ce=1.0, sdm_on=True, **kw)
                if f.rule == "overfitting"
            ]
    real = [0.8 - (0.8 - g) for g in gaps]
    expected = [
        scored_epochs[e]
        for e in range(3, len(gaps))
        if all(real[i + 1] > real[i] for i in range(e - 3, e)) and real[e] - real[e - 3] >= 0.02
    ]
    assert fired == expected


def test_ce_near_chance_needs_a_return_or_a_stall() -> None:
    """CE still leaving chance when SDM starts is not a collapse; coming back or stalling is."""
    limit = 0.9 * math.log(120)  # 4.31
    # leaving chance slowly through the end of the warm-up: no finding, no rollback
    sched = SDMWeightScheduler(warmup_epochs=5)
    mon = HealthMonitor(120)
    ces = [4.78, 4.75, 4.70, 4.66, 4.63, 4.58, 4.47, 4.30, 4.10]
    for e, c in enumerate(ces, start=1):
        assert mon.observe_epoch(e, train_ce=c, sdm_on=sched.use_sdm(e), scheduler=sched) == []
    assert sched.rollbacks == ()
    # stalling at chance with SDM on fires
    mon = HealthMonitor(120)
    run_epochs(mon, [4.7, 4.6], [False, True])
    assert [f.rule for f in mon.observe_epoch(3, train_ce=4.6, sdm_on=True)] == ["ce_near_chance"]
    # coming back above the limit fires even while falling from a spike
    mon = HealthMonitor(120)
    run_epochs(mon, [4.7, 4.0, 4.7], [False, True, True])
    got = mon.observe_epoch(4, train_ce=limit + 0.1, sdm_on=True)
    assert "ce_near_chance" in [f.rule for f in got]


@given(st.lists(st.floats(3.5, 5.0, allow_nan=False), min_size=1, max_size=8))
def test_ce_near_chance_matches_predicate(ces: list[float]) -> None:
    mon = HealthMonitor(120)
    limit = 0.9 * math.log(120)
    got = [
        e
        for e, c in enumerate(ces, start=1)
        for f in mon.observe_epoch(e, train_ce=c, sdm_on=True)
        if f.rule == "ce_near_chance"
    ]
    want = [
        e
        for e, c in enumerate(ces, start=1)
        if c >= limit and (any(x < limit for x in ces[: e - 1]) or e == 1 or c >= ces[e - 2])
    ]
    assert got == want
