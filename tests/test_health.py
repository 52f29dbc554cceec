"""Tests for sdmreid.health.HealthMonitor: the recipe's rules, checked against naive predicates."""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import re
from typing import Any

import numpy as np
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
        loss = 1.0 + 3.0 * 0.995**step + 0.05 * eps[(step * 3) % 400]
        assert (
            mon.update_step(epoch, step, coverage=cov, classifier_weight_norm=norm, loss=loss) == []
        )


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
        "loss_spike",
        "frequent_loss_spikes",
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
                epoch,
                s,
                coverage=0.75 + 0.1 * eps[s],
                classifier_weight_norm=5 + s * 0.2,
                loss=3.0 + 0.3 * eps[s] + (5.0 if s % 37 == 36 else 0.0),
            )
            if s % 50 == 49:
                out += mon.update_epoch(epoch, train_ce=2.6 + 0.2 * eps[s], sdm_on=epoch > 1)
        return out

    kw: dict[str, Any] = {"coverage_window": 20, "spike_window": 30, "spike_min_readings": 10}
    ref = HealthMonitor(NUM_CLASSES, **kw)
    full = feed(ref, 0, 300)
    assert any(f.rule == "loss_spike" for f in full)
    a = HealthMonitor(NUM_CLASSES, **kw)
    first = feed(a, 0, split)
    b = HealthMonitor(NUM_CLASSES, **kw)
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
        mon.update_step(
            1 + s // 6, s, coverage=0.5, classifier_weight_norm=1.0 + s, loss=2.0 + 0.01 * s
        )
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
    "loss_window": [["1.0"], [math.nan], [math.inf], "x", [True], None],
    "spike_epoch": [0, "1", 1.0, True],
    "spike_checked": [-1, "1", True, None],
    "spike_count": [-1, "1", 10**6, None],
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


# --- loss spikes ----------------------------------------------------------------------------------


def ref_spikes(
    losses: list[float], window: int, min_readings: int, mads: float, floor: float, rise: float
) -> list[tuple[bool, bool, float]]:
    """NumPy reference: per reading, (checked, spike, threshold) from the finite readings before
    it (threshold nan while fewer than ``min_readings``)."""
    history: list[float] = []
    out: list[tuple[bool, bool, float]] = []
    for x in losses:
        threshold = math.nan
        if len(history) >= min_readings:
            w = np.asarray(history[-window:], dtype=np.float64)
            med = np.median(w)
            mad = np.median(np.abs(w - med))
            threshold = float(med + max(mads * 1.4826 * max(mad, floor), rise * abs(med)))
        if not np.isfinite(x):
            out.append((True, True, threshold))
            continue
        checked = not math.isnan(threshold)
        out.append((checked, checked and bool(x > threshold), threshold))
        history.append(x)
    return out


spike_losses = st.lists(
    st.one_of(
        st.floats(-5.0, 20.0, allow_nan=False, allow_infinity=False),
        st.floats(0.9, 1.1),  # clusters, so that spikes happen
        st.sampled_from([math.nan, math.inf, -math.inf, 50.0]),
    ),
    min_size=1,
    max_size=60,
)


@given(
    losses=spike_losses,
    epoch_steps=st.lists(st.booleans(), min_size=60, max_size=60),
    window=st.integers(2, 25),
    data=st.data(),
    mads=st.floats(0.5, 8.0),
    floor=st.floats(0.0, 0.2),
    rise=st.floats(0.0, 0.3),
    rate=st.sampled_from([0.0, 0.2, 0.5, 0.9]),
)
def test_loss_spikes_match_numpy_reference(
    losses: list[float],
    epoch_steps: list[bool],
    window: int,
    data: st.DataObject,
    mads: float,
    floor: float,
    rise: float,
    rate: float,
) -> None:
    min_readings = data.draw(st.integers(2, window))
    mon = HealthMonitor(
        NUM_CLASSES,
        spike_window=window,
        spike_min_readings=min_readings,
        spike_mads=mads,
        spike_floor=floor,
        spike_min_rise=rise,
        spike_rate=rate,
    )
    sched = SDMWeightScheduler(warmup_epochs=0)
    flags = ref_spikes(losses, window, min_readings, mads, floor, rise)
    epochs = [1 + sum(epoch_steps[: i + 1]) for i in range(len(losses))]
    expected_steps: list[tuple[int, int]] = []  # (epoch, step) of each expected loss_spike
    expected_rollbacks: list[int] = []
    for i, x in enumerate(losses):
        e = epochs[i]
        threshold = mon.spike_threshold()
        assert (math.isnan(threshold) and math.isnan(flags[i][2])) or threshold == pytest.approx(
            flags[i][2], rel=1e-12, abs=1e-12
        )
        found = mon.update_step(e, i, loss=x)
        if flags[i][1] and all(ep != e for ep, _ in expected_steps):
            expected_steps.append((e, i))  # fires at the epoch's first spike
        assert [(f.epoch, f.step) for f in found] == [p for p in expected_steps if p[1] == i]
        last_of_epoch = i + 1 == len(losses) or epochs[i + 1] != e
        if last_of_epoch:
            mine = [flags[j] for j in range(len(losses)) if epochs[j] == e]
            checked = sum(c for c, _, _ in mine)
            spikes = sum(sp for _, sp, _ in mine)
            fired = mon.update_epoch(e, train_ce=1.0, sdm_on=True, scheduler=sched)
            frequent = checked > 0 and spikes / checked > rate
            assert [f.rule for f in fired] == (["frequent_loss_spikes"] if frequent else [])
            if frequent:
                expected_rollbacks.append(e)
    assert [rb.epoch for rb in sched.rollbacks] == expected_rollbacks


@given(
    window=st.integers(2, 40),
    data=st.data(),
    mads=st.floats(3.0, 10.0),
    floor=st.floats(0.0, 0.2),
    rise=st.floats(0.0, 0.3),
    kind=st.sampled_from(["constant", "falling", "linear"]),
    start=st.floats(-50.0, 50.0),
    slope=st.floats(0.0, 10.0),
    n=st.integers(1, 120),
)
def test_no_false_spike_on_a_constant_falling_or_linear_loss(
    window: int,
    data: st.DataObject,
    mads: float,
    floor: float,
    rise: float,
    kind: str,
    start: float,
    slope: float,
    n: int,
) -> None:
    if kind == "constant":
        losses = [start] * n
    elif kind == "falling":  # any non-increasing sequence
        steps = data.draw(st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n))
        losses = list(itertools.accumulate(steps, lambda acc, d: acc - d, initial=start))[1:]
    else:  # a steady rise is not a spike
        losses = [start + slope * i for i in range(n)]
    mon = HealthMonitor(
        NUM_CLASSES,
        spike_window=window,
        spike_min_readings=data.draw(st.integers(2, window)),
        spike_mads=mads,
        spike_floor=floor,
        spike_min_rise=rise,
    )
    for i, x in enumerate(losses):
        assert mon.update_step(1, i, loss=x) == [], (i, x)
    assert mon.update_epoch(1, train_ce=1.0, sdm_on=True) == []


def test_loss_spike_rule_in_numbers() -> None:
    mon = HealthMonitor(NUM_CLASSES)  # the seed's: 100 readings, from 20 on, 6 MADs
    for s in range(20):
        assert mon.update_step(1, s, loss=2.0 + (0.1 if s % 2 else -0.1)) == []
    # median 2.0, MAD 0.1 → threshold 2.0 + 6 · 1.4826 · 0.1 = 2.88956
    assert mon.spike_threshold() == pytest.approx(2.0 + 6 * 1.4826 * 0.1)
    below = HealthMonitor(NUM_CLASSES)
    below.load_state_dict(mon.state_dict())
    assert below.update_step(1, 20, loss=2.88) == []
    (spike,) = mon.update_step(1, 20, loss=2.9)
    assert (spike.rule, spike.severity, spike.action, spike.step) == (
        "loss_spike",
        Severity.WARNING,
        Action.WATCH,
        20,
    )
    assert "2.9 > 2.89" in spike.message
    assert mon.update_step(1, 21, loss=9.0) == []  # once per epoch
    (bad,) = mon.update_step(2, 22, loss=math.nan)
    assert bad.rule == "loss_spike" and "step loss is nan" in bad.message
    assert len(mon.state_dict()["loss_window"]) == 22  # the NaN stays out of the window


def test_frequent_loss_spikes_roll_sdm_back_once_per_epoch() -> None:
    sched = SDMWeightScheduler()
    mon = HealthMonitor(NUM_CLASSES, spike_min_readings=5)
    for s in range(5):
        mon.update_step(1, s, loss=4.0)
    assert mon.update_epoch(1, train_ce=4.0, sdm_on=sched.use_sdm(1), scheduler=sched) == []
    for s in range(5, 11):  # 4 of 6 readings spike in epoch 2
        mon.update_step(2, s, loss=50.0 if s % 3 else 4.0)
    (found,) = mon.update_epoch(2, train_ce=3.0, sdm_on=sched.use_sdm(2), scheduler=sched)
    assert (found.rule, found.severity, found.action, found.step) == (
        "frequent_loss_spikes",
        Severity.CRITICAL,
        Action.ROLLBACK_SDM,
        None,
    )
    assert "4 of 6" in found.message
    assert [rb.epoch for rb in sched.rollbacks] == [2]
    # CE back at chance and frequent spikes in one epoch: both reported, one rollback
    for s in range(11, 15):
        mon.update_step(3, s, loss=500.0)
    found = mon.update_epoch(3, train_ce=5.9, sdm_on=True, scheduler=sched)
    assert [f.rule for f in found] == ["ce_near_chance", "frequent_loss_spikes"]
    assert [rb.epoch for rb in sched.rollbacks] == [2, 3]


def test_frequent_loss_spikes_need_sdm_on_and_more_than_the_rate() -> None:
    mon = HealthMonitor(NUM_CLASSES, spike_min_readings=2)
    for s, x in enumerate([1.0, 1.0, 9.0, 1.0]):  # 1 of 2 checked readings: 50 %, not more
        mon.update_step(1, s, loss=x)
    assert mon.update_epoch(1, train_ce=1.0, sdm_on=True) == []
    for s, x in enumerate([9.0, 9.0, 1.0], start=4):
        mon.update_step(2, s, loss=x)
    sched = SDMWeightScheduler()
    assert mon.update_epoch(2, train_ce=1.0, sdm_on=False, scheduler=sched) == []
    assert sched.rollbacks == ()  # SDM off (e.g. warm-up): nothing to soften


def test_loss_readings_are_read_together_and_refused_by_name() -> None:
    mon = HealthMonitor(NUM_CLASSES, coverage_window=1, spike_min_readings=2)
    got = mon.update_step(
        1, 0, coverage=torch.tensor(0.5), classifier_weight_norm=3.0, loss=torch.tensor(2.0)
    )
    assert [f.rule for f in got] == ["coverage_floor"]
    before = mon.state_dict()
    for bad, exc, match in [
        ("2.0", TypeError, "loss must be a float"),
        (True, TypeError, "loss must be a float"),
        (torch.ones(2), TypeError, "loss must be a float or a one-element tensor"),
        (torch.tensor(1 + 1j), TypeError, "loss must be a float or a one-element tensor"),
        (torch.tensor(1.0, device="meta"), ValueError, "loss is on meta"),
    ]:
        with pytest.raises(exc, match=match):
            mon.update_step(1, 1, coverage=0.9, loss=bad)  # type: ignore[arg-type]
    assert mon.state_dict() == before  # a refused reading changes nothing


def test_a_state_saved_before_the_spike_rule_still_loads() -> None:
    source = _monitor_with_history()
    old = {k: v for k, v in source.state_dict().items() if not k.startswith(("loss_", "spike_"))}
    target = HealthMonitor(NUM_CLASSES, coverage_window=3)
    target.load_state_dict(old)
    state = target.state_dict()
    assert state["loss_window"] == [] and state["spike_epoch"] is None
    assert target.compute() == source.compute()
    partial = {**old, "loss_window": [1.0]}
    with pytest.raises(ValueError, match="state"):
        target.load_state_dict(partial)
    assert target.state_dict() == state


def test_a_longer_saved_loss_window_keeps_its_last_readings() -> None:
    a = HealthMonitor(NUM_CLASSES, spike_window=10, spike_min_readings=2)
    for s in range(10):
        a.update_step(1, s, loss=float(s))
    b = HealthMonitor(NUM_CLASSES, spike_window=4, spike_min_readings=2)
    b.load_state_dict(roundtrip(a.state_dict()))
    assert b.state_dict()["loss_window"] == [6.0, 7.0, 8.0, 9.0]
    assert b.spike_threshold() == pytest.approx(7.5 + 6 * 1.4826 * 1.0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"spike_window": 1}, ValueError, "spike_window"),
        ({"spike_window": 10.0}, TypeError, "spike_window"),
        ({"spike_min_readings": 1}, ValueError, "spike_min_readings"),
        ({"spike_window": 5, "spike_min_readings": 6}, ValueError, "spike_min_readings must be <="),
        ({"spike_mads": 0.0}, ValueError, "spike_mads"),
        ({"spike_mads": -1.0}, ValueError, "spike_mads"),
        ({"spike_mads": math.nan}, ValueError, "spike_mads"),
        ({"spike_floor": -0.1}, ValueError, "spike_floor"),
        ({"spike_min_rise": math.inf}, ValueError, "spike_min_rise"),
        ({"spike_rate": 1.0}, ValueError, "spike_rate"),
        ({"spike_rate": -0.1}, ValueError, "spike_rate"),
        ({"spike_rate": "0.5"}, TypeError, "spike_rate"),
    ],
)
def test_spike_options_are_validated(kwargs: dict[str, Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        HealthMonitor(NUM_CLASSES, **kwargs)
