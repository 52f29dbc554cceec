"""Tests for sdmreid.health.HealthMonitor: the recipe's rules, checked against naive predicates."""

from __future__ import annotations

import dataclasses
import io
import math
import re
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmreid.health import (
    RULES,
    Action,
    Finding,
    HealthMonitor,
    RunSettings,
    Severity,
)
from sdmreid.schedules import SDMWeightScheduler


def roundtrip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


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
        out += mon.update_epoch(i + 1, train_ce=c, sdm_on=sdm_on[i], **kw)
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
    assert mon.compute() == []


@given(st.lists(noise, min_size=400, max_size=400))
@settings(max_examples=25)
def test_healthy_step_curve_is_silent(eps: list[float]) -> None:
    mon = HealthMonitor(NUM_CLASSES)
    for step in range(400):
        epoch = 1 + step // 100
        cov = 0.92 + 0.05 * eps[step]
        norm = 7.0 * (1.0 + 0.002 * step) * (1.0 + 0.1 * eps[(step * 7) % 400])
        assert mon.update_step(epoch, step, coverage=cov, classifier_weight_norm=norm) == []


def test_ce_near_chance_fires_and_rolls_back() -> None:
    sched = SDMWeightScheduler()
    mon = HealthMonitor(NUM_CLASSES)
    out = run_epochs(mon, [5.5, 2.0], [False, True])
    assert out == []  # near chance in warm-up is not a finding (SDM off)
    got = mon.update_epoch(3, train_ce=5.85, sdm_on=sched.use_sdm(3), scheduler=sched)
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
    HealthMonitor(NUM_CLASSES).update_epoch(3, train_ce=5.85, sdm_on=True)
    assert sched2.rollbacks == ()


@given(st.floats(0.0, 12.0, allow_nan=False), st.integers(2, 5000), st.floats(0.0, 0.5))
def test_ce_near_chance_threshold(ce: float, num_classes: int, tol: float) -> None:
    mon = HealthMonitor(num_classes, chance_tolerance=tol)
    got = mon.update_epoch(2, train_ce=ce, sdm_on=True)
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
        fired += mon.update_step(1, step, coverage=0.6)
        if step < 99:
            assert fired == []
    assert [(f.rule, f.step, f.action) for f in fired] == [
        ("coverage_floor", 99, Action.REDUCE_PK_OR_RAISE_FALLBACK)
    ]
    assert "fallback_ratio" in fired[0].message
    # still low in the next epoch: fires once more (once per epoch)
    nxt = [f for s in range(150, 400) for f in mon.update_step(2, s, coverage=0.6)]
    assert [(f.rule, f.epoch) for f in nxt] == [("coverage_floor", 2)]


def test_coverage_below_target_warning() -> None:
    mon = HealthMonitor(NUM_CLASSES)
    fired = [f for s in range(120) for f in mon.update_step(1, s, coverage=0.8)]
    assert [(f.rule, f.step, f.severity) for f in fired] == [
        ("coverage_below_target", 99, Severity.WARNING)
    ]


def test_coverage_sparse_readings_and_interruptions() -> None:
    # read every 100 steps, as the recipe logs: two low readings span a whole window
    mon = HealthMonitor(NUM_CLASSES)
    assert mon.update_step(1, 100, coverage=0.5) == []
    assert [f.rule for f in mon.update_step(1, 200, coverage=0.5)] == ["coverage_floor"]
    # a healthy reading breaks the streak; nan readings neither extend nor break it
    mon = HealthMonitor(NUM_CLASSES, coverage_window=10)
    out = []
    for s in range(40):
        cov = 0.95 if s % 9 == 8 else (math.nan if s % 5 == 0 else 0.5)
        out += mon.update_step(1, s, coverage=cov)
    assert out == []


def test_head_weight_norm_growth() -> None:
    mon = HealthMonitor(NUM_CLASSES, settings=RunSettings(head_lr=0.009))
    norms = [7.0, 7.5, 9.0, 15.0, 20.9, 21.0, 35.0, 36.0]  # the recipe's 7 -> 35
    fired = [
        f for s, n in enumerate(norms) for f in mon.update_step(2, s, classifier_weight_norm=n)
    ]
    assert [(f.rule, f.step, f.action) for f in fired] == [
        ("head_weight_norm_growth", 5, Action.DROP_HEAD_LR)
    ]
    assert fired[0].suggested == (("head_lr", pytest.approx(0.003)),)
    assert "head LR 0.009 -> 0.003" in fired[0].message
    # the base of a new epoch is the norm at its start (the previous epoch's last reading)
    assert mon.update_step(3, 100, classifier_weight_norm=100.0) == []
    assert [f.rule for f in mon.update_step(3, 101, classifier_weight_norm=108.0)] == [
        "head_weight_norm_growth"
    ]


def test_overfitting_gap_growth() -> None:
    run = RunSettings(weight_decay=0.05, label_smoothing=0.1, head_lr=3e-3)  # an AdamW run
    mon = HealthMonitor(NUM_CLASSES, settings=run)
    train = [0.5, 0.6, 0.7, 0.8, 0.9]
    val = [0.45, 0.5, 0.52, 0.53, 0.53]
    got = run_epochs(mon, [3.0, 2.0, 1.8, 1.5, 1.2], [False] + [True] * 4, train, val)
    assert [(f.rule, f.epoch, f.action) for f in got] == [
        ("overfitting", 4, Action.REGULARIZE),
        ("overfitting", 5, Action.REGULARIZE),
    ]
    assert dict(got[0].suggested) == pytest.approx(
        {"label_smoothing": 0.15, "head_lr": 1e-3, "weight_decay": 0.1}
    )
    for advice in ("label smoothing 0.1 -> 0.15", "head LR 0.003 -> 0.001", "0.05 -> 0.1"):
        assert advice in got[0].message


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
    f = mon.update_epoch(2, train_ce=6.0, sdm_on=True)[0]
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
            out += mon.update_step(
                epoch, s, coverage=0.75 + 0.1 * eps[s], classifier_weight_norm=5 + s * 0.2
            )
            if s % 50 == 49:
                out += mon.update_epoch(epoch, train_ce=2.6 + 0.2 * eps[s], sdm_on=epoch > 1)
        return out

    ref = HealthMonitor(NUM_CLASSES, coverage_window=20)
    full = feed(ref, 0, 300)
    a = HealthMonitor(NUM_CLASSES, coverage_window=20)
    first = feed(a, 0, split)
    b = HealthMonitor(NUM_CLASSES, coverage_window=20)
    b.load_state_dict(roundtrip(a.state_dict()))
    second = feed(b, split, 300)
    assert first + second == full
    assert b.compute() == ref.compute()


def test_monitor_validation() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        HealthMonitor(1)
    with pytest.raises(ValueError, match="coverage_floor"):
        HealthMonitor(10, coverage_floor=0.9, coverage_target=0.85)
    with pytest.raises(ValueError, match="chance_tolerance"):
        HealthMonitor(10, chance_tolerance=-0.1)
    mon = HealthMonitor(10)
    mon.update_step(1, 5, coverage=0.9)
    with pytest.raises(ValueError, match="global step"):
        mon.update_step(1, 5)
    with pytest.raises(ValueError, match="epoch"):
        mon.update_step(0, 6)
    with pytest.raises(ValueError, match="coverage"):
        mon.update_step(1, 7, coverage=1.2)
    with pytest.raises(ValueError, match="classifier_weight_norm"):
        mon.update_step(1, 8, classifier_weight_norm=math.inf)
    with pytest.raises(ValueError, match="train_ce"):
        mon.update_epoch(1, train_ce=math.nan, sdm_on=False)
    with pytest.raises(TypeError, match="sdm_on"):
        mon.update_epoch(1, train_ce=1.0, sdm_on=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both"):
        mon.update_epoch(1, train_ce=1.0, sdm_on=False, train_score=0.5)
    mon.update_epoch(1, train_ce=1.0, sdm_on=False)
    with pytest.raises(ValueError, match="increase"):
        mon.update_epoch(1, train_ce=1.0, sdm_on=False)
    with pytest.raises(ValueError, match="state"):
        mon.load_state_dict({"epochs": [1]})


def test_tensor_readings_accepted() -> None:
    mon = HealthMonitor(10, coverage_window=1)
    got = mon.update_step(
        1, 0, coverage=torch.tensor(0.5), classifier_weight_norm=torch.tensor(3.0)
    )
    assert [f.rule for f in got] == ["coverage_floor"]
    assert mon.update_epoch(1, train_ce=torch.tensor(1.0), sdm_on=True) == []


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
                for f in mon.update_epoch(epoch, train_ce=1.0, sdm_on=True, **kw)
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
        assert mon.update_epoch(e, train_ce=c, sdm_on=sched.use_sdm(e), scheduler=sched) == []
    assert sched.rollbacks == ()
    # stalling at chance with SDM on fires
    mon = HealthMonitor(120)
    run_epochs(mon, [4.7, 4.6], [False, True])
    assert [f.rule for f in mon.update_epoch(3, train_ce=4.6, sdm_on=True)] == ["ce_near_chance"]
    # coming back above the limit fires even while falling from a spike
    mon = HealthMonitor(120)
    run_epochs(mon, [4.7, 4.0, 4.7], [False, True, True])
    got = mon.update_epoch(4, train_ce=limit + 0.1, sdm_on=True)
    assert "ce_near_chance" in [f.rule for f in got]


@given(st.lists(st.floats(3.5, 5.0, allow_nan=False), min_size=1, max_size=8))
def test_ce_near_chance_matches_predicate(ces: list[float]) -> None:
    mon = HealthMonitor(120)
    limit = 0.9 * math.log(120)
    got = [
        e
        for e, c in enumerate(ces, start=1)
        for f in mon.update_epoch(e, train_ce=c, sdm_on=True)
        if f.rule == "ce_near_chance"
    ]
    want = [
        e
        for e, c in enumerate(ces, start=1)
        if c >= limit and (any(x < limit for x in ces[: e - 1]) or e == 1 or c >= ces[e - 2])
    ]
    assert got == want


# --- advice relative to the run's settings -----------------------------------------------------

GROWING_GAP = ([0.5, 0.6, 0.7, 0.8], [0.45, 0.5, 0.52, 0.53])  # the gap grows at every epoch


def overfitting_finding(mon: HealthMonitor) -> Finding:
    train, val = GROWING_GAP
    got = run_epochs(mon, [1.0] * 4, [True] * 4, train, val)
    assert [f.rule for f in got] == ["overfitting"]
    return got[0]


def norm_growth_finding(mon: HealthMonitor) -> Finding:
    mon.update_step(1, 0, classifier_weight_norm=1.0)
    (got,) = mon.update_step(1, 1, classifier_weight_norm=10.0)
    assert got.rule == "head_weight_norm_growth"
    return got


def advice(message: str) -> str:
    """The part of a message after the observation (the first ';')."""
    return message.split(";", 1)[1]


@settings(max_examples=40)
@given(
    weight_decay=st.floats(1e-6, 1.0),
    label_smoothing=st.floats(0.0, 0.9),
    head_lr=st.floats(1e-6, 1.0),
    wd_factor=st.floats(1.1, 10.0),
    ls_step=st.floats(0.01, 0.2),
    lr_factor=st.floats(0.05, 0.9),
)
def test_overfitting_advice_scales_the_runs_own_settings(
    weight_decay: float,
    label_smoothing: float,
    head_lr: float,
    wd_factor: float,
    ls_step: float,
    lr_factor: float,
) -> None:
    run = RunSettings(weight_decay=weight_decay, label_smoothing=label_smoothing, head_lr=head_lr)
    mon = HealthMonitor(
        NUM_CLASSES,
        settings=run,
        weight_decay_factor=wd_factor,
        label_smoothing_step=ls_step,
        head_lr_factor=lr_factor,
    )
    got = dict(overfitting_finding(mon).suggested)
    expected = {"weight_decay": weight_decay * wd_factor, "head_lr": head_lr * lr_factor}
    if label_smoothing + ls_step < 1.0:
        expected["label_smoothing"] = label_smoothing + ls_step
    assert got == pytest.approx(expected, rel=1e-9)
    assert got["weight_decay"] > weight_decay and got["head_lr"] < head_lr


@pytest.mark.parametrize("weight_decay", [5e-4, 0.05, 0.2])
def test_weight_decay_advice_is_relative_whatever_the_optimiser(weight_decay: float) -> None:
    """An SGD run (5e-4) and AdamW runs (0.05, 0.2) are each told to double their own value."""
    mon = HealthMonitor(NUM_CLASSES, settings=RunSettings(weight_decay=weight_decay))
    f = overfitting_finding(mon)
    assert dict(f.suggested) == pytest.approx({"weight_decay": 2 * weight_decay})
    assert f"weight decay {weight_decay:g} -> {2 * weight_decay:g}" in f.message


def test_unknown_settings_give_directions_without_numbers() -> None:
    for f in (
        overfitting_finding(HealthMonitor(NUM_CLASSES)),
        norm_growth_finding(HealthMonitor(NUM_CLASSES)),
    ):
        assert f.suggested == ()
        assert not re.search(r"\d", advice(f.message)), f.message
    f = overfitting_finding(HealthMonitor(NUM_CLASSES))
    for words in ("raise label smoothing", "lower the head LR", "raise weight decay"):
        assert words in f.message
    assert "lower the head LR" in norm_growth_finding(HealthMonitor(NUM_CLASSES)).message


def test_partly_known_settings_give_numbers_only_where_known() -> None:
    f = overfitting_finding(HealthMonitor(NUM_CLASSES, settings=RunSettings(label_smoothing=0.1)))
    assert dict(f.suggested) == pytest.approx({"label_smoothing": 0.15})
    assert "lower the head LR," in f.message and "raise weight decay" in f.message


def test_a_run_without_weight_decay_is_told_to_add_some() -> None:
    f = overfitting_finding(HealthMonitor(NUM_CLASSES, settings=RunSettings(weight_decay=0.0)))
    assert "add weight decay" in f.message and f.suggested == ()


def test_label_smoothing_near_one_gets_no_number() -> None:
    run = RunSettings(label_smoothing=0.98)
    f = overfitting_finding(HealthMonitor(NUM_CLASSES, settings=run))
    assert f.suggested == () and "raise label smoothing" in f.message


def test_settings_can_follow_the_run() -> None:
    """A trainer that switches the head LR tells the monitor; later advice starts from it."""
    mon = HealthMonitor(NUM_CLASSES, settings=RunSettings(head_lr=0.01))
    mon.settings = dataclasses.replace(mon.settings, head_lr=0.003)
    assert dict(norm_growth_finding(mon).suggested) == pytest.approx({"head_lr": 0.001})


def test_run_settings_validation() -> None:
    for name in ("weight_decay", "label_smoothing", "head_lr"):
        for bad in (-0.1, math.nan, math.inf):
            with pytest.raises(ValueError, match=name):
                RunSettings(**{name: bad})
        with pytest.raises(TypeError, match=name):
            RunSettings(**{name: True})
        with pytest.raises(TypeError, match=name):
            RunSettings(**{name: "0.1"})
    with pytest.raises(ValueError, match="label_smoothing"):
        RunSettings(label_smoothing=1.0)
    with pytest.raises(ValueError, match="head_lr"):
        RunSettings(head_lr=0.0)
    run = RunSettings(weight_decay=0.05)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.weight_decay = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError, match="settings"):
        HealthMonitor(10, settings={"weight_decay": 0.1})  # type: ignore[arg-type]
    for name, bad in (
        ("weight_decay_factor", 1.0),
        ("head_lr_factor", 1.0),
        ("head_lr_factor", 0.0),
        ("label_smoothing_step", 0.0),
    ):
        with pytest.raises(ValueError, match=name):
            HealthMonitor(10, **{name: bad})


# --- update / compute / reset ------------------------------------------------------------------


def test_update_returns_new_findings_and_compute_returns_all() -> None:
    mon = HealthMonitor(NUM_CLASSES, coverage_window=2)
    first = mon.update_epoch(1, train_ce=5.8, sdm_on=True)
    assert [f.rule for f in first] == ["ce_near_chance"]
    assert mon.update_step(2, 10, coverage=0.5) == []
    second = mon.update_step(2, 11, coverage=0.5)
    assert [f.rule for f in second] == ["coverage_floor"]
    everything = mon.compute()
    assert everything == first + second
    everything.clear()  # the caller's list; the monitor keeps its own
    assert mon.compute() == first + second
    mon.reset()
    assert mon.compute() == []
    assert mon.update_step(1, 0, coverage=0.5) == []  # history is gone too: steps start over


@given(
    steps=st.integers(0, 30),
    bad=st.sampled_from(
        [
            {"epochs": [1]},
            None,
            "state",
            {"findings": [{"rule": "x"}]},
        ]
    ),
)
@settings(max_examples=20)
def test_a_refused_load_state_dict_leaves_the_monitor_unchanged(steps: int, bad: Any) -> None:
    mon = HealthMonitor(NUM_CLASSES, coverage_window=3)
    for s in range(steps):
        mon.update_step(1 + s // 10, s, coverage=0.5 + 0.01 * s, classifier_weight_norm=1.0 + s)
        if s % 10 == 9:
            mon.update_epoch(1 + s // 10, train_ce=3.0, sdm_on=True)
    state = mon.state_dict()
    corrupt = dict(state, **bad) if isinstance(bad, dict) and "findings" in bad else bad
    with pytest.raises(ValueError, match="state"):
        mon.load_state_dict(corrupt)  # type: ignore[arg-type]
    assert mon.state_dict() == state


def _monitor_with_history() -> HealthMonitor:
    mon = HealthMonitor(NUM_CLASSES, coverage_window=3)
    for s in range(12):
        mon.update_step(1 + s // 6, s, coverage=0.5, classifier_weight_norm=1.0 + s)
        if s % 6 == 5:
            mon.update_epoch(1 + s // 6, train_ce=5.9, sdm_on=True, train_score=0.9, val_score=0.5)
    assert mon.compute()  # the history includes findings
    return mon


#: Values of the right shape but the wrong type or range, which a loader that coerces (int("3"),
#: bool(1), float("nan")) would take.
MONITOR_BAD_VALUES: dict[str, list[object]] = {
    "epochs": [["1", "2"], [1.0, 2.0], [True, 2], [2, 1], [0, 1]],
    "ce": [["5.9", "5.9"], [math.nan, 5.9], [-1.0, 5.9], [True, 5.9]],
    "sdm_on": [[1, 1], ["yes", True]],
    "gap": [["0.4", 0.4], [math.inf, 0.4]],
    "last_step": ["11", -1, 11.0, True],
    "last_step_epoch": [0, "2"],
    "floor_start": [-1, "0"],
    "norm_base": [-1.0, math.nan, "1.0"],
    "fired": [[["coverage_floor", "1"]], [[3, 1]], "x"],
    "findings": [[{"rule": "x"}], "x", [None]],
}


@pytest.mark.parametrize(
    ("key", "bad"),
    [(k, v) for k, values in MONITOR_BAD_VALUES.items() for v in values] + [("__unknown_key__", 1)],
    ids=repr,
)
def test_monitor_load_refuses_coerced_values_and_unknown_keys(key: str, bad: object) -> None:
    source = _monitor_with_history()
    target = HealthMonitor(NUM_CLASSES, coverage_window=3)
    target.update_epoch(1, train_ce=1.0, sdm_on=False)
    before = target.state_dict()
    with pytest.raises(ValueError, match="state"):
        target.load_state_dict({**source.state_dict(), key: bad})
    assert target.state_dict() == before


def test_monitor_load_refuses_a_finding_with_a_string_epoch() -> None:
    state = _monitor_with_history().state_dict()
    state["findings"][0]["epoch"] = str(state["findings"][0]["epoch"])
    target = HealthMonitor(NUM_CLASSES, coverage_window=3)
    with pytest.raises(ValueError, match="state"):
        target.load_state_dict(state)
    assert target.state_dict() == HealthMonitor(NUM_CLASSES).state_dict()


def test_a_meta_reading_is_refused_by_name() -> None:
    mon = HealthMonitor(NUM_CLASSES)
    with pytest.raises(ValueError, match="coverage is on meta"):
        mon.update_step(1, 0, coverage=torch.tensor(0.5, device="meta"))
    assert mon.state_dict() == HealthMonitor(NUM_CLASSES).state_dict()
