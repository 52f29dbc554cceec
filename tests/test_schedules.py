"""Tests for SDMWeightScheduler and HeadLRSwitch (contract: DESIGN §4)."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sdmreid.schedules import STAGE_OFF, HeadLRSwitch, Rollback, SDMWeightScheduler
from tests.strategies import corrupted_states

# --- independent references -------------------------------------------------------------------


def ref_stages(
    warmup: int,
    n_stages: int,
    n_epochs: int,
    rollback_epochs: list[int],
    readvance_after: int | None = None,
) -> list[int]:
    """Simulate a training run epoch by epoch: rollbacks at the given epochs; with
    ``readvance_after=N``, the cap rises one stage once N epochs ran under it without a rollback."""
    out: list[int] = []
    cap: int | None = None
    stable = 0  # epochs trained under the current cap since it last changed
    pending = sorted(rollback_epochs)
    for epoch in range(1, n_epochs + 1):
        if cap is not None and readvance_after is not None and stable == readvance_after:
            cap, stable = cap + 1, 0
        stage = -1 if epoch <= warmup else min(epoch - warmup - 1, n_stages - 1)
        if cap is not None:
            stage = min(stage, cap)
        while pending and pending[0] == epoch:
            pending.pop(0)
            stage = max(stage - 1, -1)
            cap, stable = stage, 0
        out.append(stage)
        if cap is not None:
            stable += 1
    return out


def ref_weights(
    warmup: int, schedule: list[float], n_epochs: int, rollback_epochs: list[int]
) -> list[float]:
    """Weights of the simulated run (sticky rollbacks)."""
    stages = ref_stages(warmup, len(schedule), n_epochs, rollback_epochs)
    return [0.0 if s < 0 else schedule[s] for s in stages]


def roundtrip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


weights = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)
schedules = st.lists(weights, min_size=1, max_size=6)


# --- mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "weight", "use"),
    [(1, 0.0, False), (2, 0.1, True), (3, 0.3, True), (4, 0.5, True), (5, 0.5, True),
     (100, 0.5, True)],
)  # fmt: skip
def test_default_mapping_table(epoch: int, weight: float, use: bool) -> None:
    s = SDMWeightScheduler()
    assert s.weight(epoch) == weight
    assert s.use_sdm(epoch) is use


@pytest.mark.parametrize(
    ("warmup", "schedule", "expected"),
    [
        (0, (0.1, 0.3, 0.5), [0.1, 0.3, 0.5, 0.5]),
        (2, (0.1, 0.3, 0.5), [0.0, 0.0, 0.1, 0.3, 0.5, 0.5]),
        (1, (0.7,), [0.0, 0.7, 0.7]),
        (3, (0.2, 0.2), [0.0, 0.0, 0.0, 0.2, 0.2]),
    ],
)
def test_mapping_table(warmup: int, schedule: tuple[float, ...], expected: list[float]) -> None:
    s = SDMWeightScheduler(warmup_epochs=warmup, schedule=schedule)
    assert [s.weight(e) for e in range(1, len(expected) + 1)] == expected


@given(st.integers(0, 8), schedules, st.integers(1, 40))
def test_mapping_matches_reference(warmup: int, schedule: list[float], epoch: int) -> None:
    s = SDMWeightScheduler(warmup_epochs=warmup, schedule=schedule)
    expected = ref_weights(warmup, schedule, epoch, [])[-1]
    assert s.weight(epoch) == expected
    assert s.use_sdm(epoch) is (expected > 0)
    assert s.log_line(epoch) == (
        f"[sdm] epoch={epoch} weight={expected:.3f} use_sdm={expected > 0}"
    )


def test_log_line_contract() -> None:
    s = SDMWeightScheduler()
    assert s.log_line(2) == "[sdm] epoch=2 weight=0.100 use_sdm=True"
    assert s.log_line(1) == "[sdm] epoch=1 weight=0.000 use_sdm=False"
    assert s.log_line(4) == "[sdm] epoch=4 weight=0.500 use_sdm=True"


def test_zero_weight_stage_is_off() -> None:
    s = SDMWeightScheduler(warmup_epochs=0, schedule=(0.0, 0.2))
    assert not s.use_sdm(1)
    assert s.use_sdm(2)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"schedule": ()}, ValueError, "schedule must be non-empty"),
        ({"schedule": (0.1, -0.1)}, ValueError, r"schedule\[1\]"),
        ({"schedule": (0.1, math.inf)}, ValueError, r"schedule\[1\]"),
        ({"schedule": (math.nan,)}, ValueError, r"schedule\[0\]"),
        ({"schedule": ("0.1",)}, TypeError, r"schedule\[0\]"),
        ({"schedule": 0.1}, TypeError, "schedule"),
        ({"warmup_epochs": -1}, ValueError, "warmup_epochs"),
        ({"warmup_epochs": 1.0}, TypeError, "warmup_epochs"),
        ({"ramp_steps": -2}, ValueError, "ramp_steps"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        SDMWeightScheduler(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("epoch", [0, -3])
def test_epoch_numbered_from_one(epoch: int) -> None:
    with pytest.raises(ValueError, match="epoch"):
        SDMWeightScheduler().weight(epoch)
    with pytest.raises(ValueError, match="epoch"):
        SDMWeightScheduler().rollback(epoch)


def test_epoch_type_and_step_validation() -> None:
    s = SDMWeightScheduler(ramp_steps=3)
    with pytest.raises(TypeError, match="epoch"):
        s.weight(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step"):
        s.weight(2, step=-1)
    with pytest.raises(ValueError, match="step"):
        SDMWeightScheduler().weight(2, step=-1)


# --- rollback -----------------------------------------------------------------------------------


def test_rollback_is_sticky_and_recorded() -> None:
    s = SDMWeightScheduler()
    rb = s.rollback(3)  # 0.3 misbehaved at epoch 3
    assert rb == Rollback(epoch=3, from_stage=1, to_stage=0)
    assert [s.weight(e) for e in range(1, 8)] == [0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert s.rollbacks == (rb,)
    # past the first stage: SDM off for good
    assert s.rollback(5) == Rollback(epoch=5, from_stage=0, to_stage=STAGE_OFF)
    assert [s.use_sdm(e) for e in range(1, 9)] == [False, True, True, True] + [False] * 4
    assert s.rollback(6) == Rollback(epoch=6, from_stage=-1, to_stage=-1)
    assert not s.use_sdm(50)


def test_rollback_in_warmup_keeps_sdm_off() -> None:
    s = SDMWeightScheduler()
    s.rollback(1)
    assert not any(s.use_sdm(e) for e in range(1, 20))


def test_rollback_history_is_append_only() -> None:
    s = SDMWeightScheduler()
    s.rollback(4)
    with pytest.raises(ValueError, match="last rollback"):
        s.rollback(3)
    s.rollback(4)  # same epoch: one more stage down
    assert s.weight(4) == 0.1


@given(
    st.integers(0, 4),
    schedules,
    st.lists(st.integers(1, 15), max_size=5).map(sorted),
)
def test_rollbacks_match_reference_simulation(
    warmup: int, schedule: list[float], rb_epochs: list[int]
) -> None:
    s = SDMWeightScheduler(warmup_epochs=warmup, schedule=schedule)
    for e in rb_epochs:
        s.rollback(e)
    assert [s.weight(e) for e in range(1, 21)] == ref_weights(warmup, schedule, 20, rb_epochs)


@given(st.integers(0, 4), schedules, st.lists(st.integers(1, 15), max_size=5).map(sorted))
def test_state_round_trip(warmup: int, schedule: list[float], rb_epochs: list[int]) -> None:
    a = SDMWeightScheduler(warmup_epochs=warmup, schedule=schedule, ramp_steps=3)
    for e in rb_epochs:
        a.rollback(e)
    state = roundtrip(a.state_dict())
    b = SDMWeightScheduler(warmup_epochs=warmup, schedule=schedule, ramp_steps=3)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    assert b.rollbacks == a.rollbacks
    for e in range(1, 21):
        assert b.weight(e) == a.weight(e)
        assert b.weight(e, step=1) == a.weight(e, step=1)


def test_load_state_strict_config_mismatch() -> None:
    a = SDMWeightScheduler()
    a.rollback(3)
    b = SDMWeightScheduler(schedule=(0.2, 0.4))
    with pytest.raises(ValueError, match="schedule"):
        b.load_state_dict(a.state_dict())
    b.load_state_dict(a.state_dict(), strict=False)
    assert b.schedule == (0.2, 0.4)
    assert [b.weight(e) for e in (2, 3, 4)] == [0.2, 0.2, 0.2]  # capped at stage 0 from epoch 3
    with pytest.raises(ValueError, match=r"state\[.rollbacks.\]\[0\]: to_stage"):
        a.load_state_dict({**a.state_dict(), "rollbacks": [[3, 2, 0]]})


# --- ramp ---------------------------------------------------------------------------------------


def test_ramp_linear_within_epoch() -> None:
    s = SDMWeightScheduler(ramp_steps=4)
    # epoch 3: from 0.1 to 0.3 over 4 steps
    got = [s.weight(3, step=i) for i in range(6)]
    expected = [0.1 + 0.2 * min(1.0, (i + 1) / 4) for i in range(6)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[3:] == [0.3, 0.3, 0.3]
    assert s.weight(1, step=0) == 0.0
    assert 0.0 < s.weight(2, step=0) < 0.1


def test_ramp_does_not_delay_a_rollback() -> None:
    s = SDMWeightScheduler(ramp_steps=100)
    s.rollback(4)
    assert s.weight(4, step=0) == 0.3  # lower weight applies at once


@given(st.integers(0, 3), schedules, st.integers(1, 10), st.integers(1, 12), st.integers(0, 30))
def test_ramp_bounded_by_neighbouring_epochs(
    warmup: int, schedule: list[float], ramp: int, epoch: int, step: int
) -> None:
    s = SDMWeightScheduler(warmup_epochs=warmup, schedule=schedule, ramp_steps=ramp)
    ref = ref_weights(warmup, schedule, epoch, [])
    cur, prev = ref[-1], (ref[-2] if epoch > 1 else 0.0)
    w = s.weight(epoch, step=step)
    assert min(prev, cur) - 1e-12 <= w <= max(prev, cur) + 1e-12
    if step >= ramp - 1:
        assert w == cur


# --- re-advance after stable epochs ---------------------------------------------------------------

readvances = st.one_of(st.none(), st.integers(1, 5))
scale_values = st.floats(min_value=0.5, max_value=100.0, allow_nan=False, allow_infinity=False)


@given(
    st.integers(0, 4),
    st.integers(1, 5),
    readvances,
    st.lists(st.integers(1, 18), max_size=6).map(sorted),
    st.data(),
)
def test_stages_match_reference_under_rollbacks_and_readvances(
    warmup: int,
    n_stages: int,
    readvance: int | None,
    rb_epochs: list[int],
    data: st.DataObject,
) -> None:
    schedule = data.draw(st.lists(weights, min_size=n_stages, max_size=n_stages))
    scales = data.draw(st.lists(scale_values, min_size=n_stages, max_size=n_stages))
    s = SDMWeightScheduler(
        warmup_epochs=warmup, schedule=schedule, logit_scales=scales, readvance_after=readvance
    )
    for e in rb_epochs:
        s.rollback(e)
    expected = ref_stages(warmup, n_stages, 30, rb_epochs, readvance)
    assert [s.stage(e) for e in range(1, 31)] == expected
    assert [s.weight(e) for e in range(1, 31)] == [
        0.0 if st_ < 0 else schedule[st_] for st_ in expected
    ]
    assert [s.logit_scale(e) for e in range(1, 31)] == [scales[max(st_, 0)] for st_ in expected]
    # each record names the stage in force at its epoch under the same rules
    for rb in s.rollbacks:
        before = [r for r in rb_epochs if r < rb.epoch]
        same_epoch = [r for r in s.rollbacks if r.epoch == rb.epoch]
        if same_epoch[0] is rb:
            ref = ref_stages(warmup, n_stages, rb.epoch, before, readvance)[-1]
            assert rb.from_stage == ref


def test_without_readvance_a_rollback_from_the_first_stage_is_final() -> None:
    s = SDMWeightScheduler()
    s.rollback(2)
    assert not any(s.use_sdm(e) for e in range(2, 60))


def test_readvance_retries_one_stage_after_stable_epochs() -> None:
    s = SDMWeightScheduler(readvance_after=3)  # epochs 1 → 0.0, 2 → 0.1, 3 → 0.3, ≥ 4 → 0.5
    assert s.rollback(2) == Rollback(epoch=2, from_stage=0, to_stage=STAGE_OFF)
    # epochs 2, 3, 4 are off; 5 retries the first stage; 8 the second; 11 the third
    assert [s.weight(e) for e in range(1, 13)] == (
        [0.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.3, 0.3, 0.3, 0.5, 0.5]
    )
    # the retried stage misbehaves again at epoch 6: the count starts afresh from there
    assert s.rollback(6) == Rollback(epoch=6, from_stage=0, to_stage=STAGE_OFF)
    assert [s.weight(e) for e in range(5, 13)] == [0.1, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.3]


def test_readvance_never_exceeds_the_nominal_schedule() -> None:
    s = SDMWeightScheduler(warmup_epochs=2, readvance_after=1)
    s.rollback(1)  # during warm-up: SDM stays off until the warm-up ends anyway
    assert [s.stage(e) for e in range(1, 8)] == [s.nominal_stage(e) for e in range(1, 8)]


def test_readvance_is_ramped_like_any_increase() -> None:
    s = SDMWeightScheduler(ramp_steps=2, readvance_after=1)
    s.rollback(4)  # 0.5 → 0.3 at once; epoch 5 climbs back to 0.5 over two steps
    assert s.weight(4, step=0) == 0.3
    assert s.weight(5, step=0) == pytest.approx(0.4)
    assert s.weight(5, step=1) == 0.5


@given(
    st.integers(0, 3),
    st.integers(1, 4),
    st.integers(1, 4),
    st.lists(st.integers(1, 15), max_size=5).map(sorted),
)
def test_readvance_state_round_trip_replays_the_history(
    warmup: int, n_stages: int, readvance: int, rb_epochs: list[int]
) -> None:
    schedule = [0.1 * (i + 1) for i in range(n_stages)]
    scales = [5.0 + i for i in range(n_stages)]

    def make() -> SDMWeightScheduler:
        return SDMWeightScheduler(
            warmup_epochs=warmup,
            schedule=schedule,
            logit_scales=scales,
            readvance_after=readvance,
        )

    a = make()
    for e in rb_epochs:
        a.rollback(e)
    state = roundtrip(a.state_dict())
    assert state["readvance_after"] == readvance and state["logit_scales"] == scales
    b = make()
    b.load_state_dict(state)
    assert b.rollbacks == a.rollbacks and b.state_dict() == a.state_dict()
    assert [b.stage(e) for e in range(1, 25)] == ref_stages(
        warmup, n_stages, 24, rb_epochs, readvance
    )


def test_replay_checks_records_against_the_readvanced_stage() -> None:
    a = SDMWeightScheduler(readvance_after=2)
    a.rollback(4)  # 2 → 1
    assert a.rollback(6) == Rollback(epoch=6, from_stage=2, to_stage=1)  # re-advanced at 6
    sticky = SDMWeightScheduler()
    with pytest.raises(ValueError, match="readvance_after"):
        sticky.load_state_dict(a.state_dict())
    # the same records are not what a sticky scheduler would have recorded at epoch 6
    forged = {**a.state_dict(), "readvance_after": None}
    with pytest.raises(ValueError, match=r"state\['rollbacks'\]\[1\]: from_stage 2"):
        sticky.load_state_dict(forged)
    assert sticky.rollbacks == ()
    sticky.load_state_dict(a.state_dict(), strict=False)  # history only, own configuration
    assert sticky.rollbacks == a.rollbacks and sticky.readvance_after is None


def test_a_foreign_history_never_lifts_an_earlier_cap() -> None:
    # strict=False restores records made under another configuration; a later record with a
    # higher stage does not lift the cap an earlier one set (without re-advance)
    s = SDMWeightScheduler()
    s.load_state_dict({"rollbacks": [[3, 0, -1], [5, 2, 1]]}, strict=False)
    assert [s.stage(e) for e in range(1, 8)] == [-1, 0, -1, -1, -1, -1, -1]
    r = SDMWeightScheduler(readvance_after=2)
    r.load_state_dict({"rollbacks": [[3, 0, -1], [5, 2, 1]]}, strict=False)
    # cap -1 from epoch 3, re-advanced to 0 at epoch 5, then min(0, 1) = 0 from epoch 5 on
    assert [r.stage(e) for e in range(1, 10)] == [-1, 0, -1, -1, 0, 0, 1, 1, 2]


def test_states_saved_before_the_options_still_load() -> None:
    old = {
        "warmup_epochs": 1,
        "schedule": [0.1, 0.3, 0.5],
        "ramp_steps": 0,
        "rollbacks": [[3, 1, 0]],
    }
    s = SDMWeightScheduler()
    s.load_state_dict(old)
    assert s.rollbacks == (Rollback(3, 1, 0),) and s.logit_scale(3) is None
    with pytest.raises(ValueError, match="readvance_after"):
        SDMWeightScheduler(readvance_after=2).load_state_dict(old)
    with pytest.raises(ValueError, match="logit_scales"):
        SDMWeightScheduler(logit_scales=(1.0, 2.0, 3.0)).load_state_dict(old)


# --- logit-scale schedule -------------------------------------------------------------------------


def test_logit_scale_follows_the_stages() -> None:
    # the seed pipeline's temperatures: 0.12 for its first epochs, 0.10 once stable
    s = SDMWeightScheduler(logit_scales=(1 / 0.12, 1 / 0.12, 1 / 0.10))
    assert [s.logit_scale(e) for e in (1, 2, 3, 4, 9)] == [1 / 0.12] * 3 + [10.0, 10.0]
    assert s.log_line(4) == "[sdm] epoch=4 weight=0.500 use_sdm=True logit_scale=10.000"
    assert s.log_line(1) == "[sdm] epoch=1 weight=0.000 use_sdm=False logit_scale=8.333"
    s.rollback(5)  # a rollback also falls back to the softer scale of the lower stage
    assert s.logit_scale(5) == 1 / 0.12 and s.weight(5) == 0.3


def test_without_logit_scales_the_caller_keeps_its_scale() -> None:
    s = SDMWeightScheduler()
    assert all(s.logit_scale(e) is None for e in range(1, 6))
    assert s.log_line(3) == "[sdm] epoch=3 weight=0.300 use_sdm=True"
    with pytest.raises(ValueError, match="epoch"):
        s.logit_scale(0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"logit_scales": (1.0, 2.0)}, ValueError, r"logit_scales must have one value per stage"),
        ({"logit_scales": (1.0, 0.0, 2.0)}, ValueError, r"logit_scales\[1\] must be finite"),
        ({"logit_scales": (1.0, -2.0, 2.0)}, ValueError, r"logit_scales\[1\]"),
        ({"logit_scales": (1.0, 2.0, math.nan)}, ValueError, r"logit_scales\[2\]"),
        ({"logit_scales": (math.inf, 2.0, 3.0)}, ValueError, r"logit_scales\[0\]"),
        ({"logit_scales": (1.0, "2", 3.0)}, TypeError, r"logit_scales\[1\]"),
        ({"logit_scales": (1.0, True, 3.0)}, TypeError, r"logit_scales\[1\]"),
        ({"logit_scales": 5.0}, TypeError, "logit_scales"),
        ({"logit_scales": "abc"}, TypeError, "logit_scales"),
        ({"readvance_after": 0}, ValueError, "readvance_after"),
        ({"readvance_after": -1}, ValueError, "readvance_after"),
        ({"readvance_after": 1.5}, TypeError, "readvance_after"),
        ({"readvance_after": True}, TypeError, "readvance_after"),
    ],
)
def test_option_validation(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        SDMWeightScheduler(**kwargs)  # type: ignore[arg-type]


# --- HeadLRSwitch ---------------------------------------------------------------------------------


def _make_opt(lr: float = 0.1) -> torch.optim.Optimizer:
    body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
    return torch.optim.SGD(
        [
            {"params": body.parameters(), "name": "backbone"},
            {"params": head.parameters(), "name": "head", "lr": 1e-2},
        ],
        lr=lr,
        momentum=0.9,
    )


SCHEDULERS = {
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6),
    "lambda": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.9**e),
    "multistep": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 5]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_switch_coexists_with_torch_scheduler(name: str) -> None:
    ref_opt = _make_opt()
    ref_sched = SCHEDULERS[name](ref_opt)
    opt = _make_opt()
    sched = SCHEDULERS[name](opt)
    switch = HeadLRSwitch(opt, group="head", lr=3e-3, from_epoch=3)
    for epoch in range(1, 9):
        switch.step(epoch)
        # the other group follows the scheduler exactly as without the switch
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
        if epoch < 3:
            assert opt.param_groups[1]["lr"] == ref_opt.param_groups[1]["lr"]
        else:
            assert opt.param_groups[1]["lr"] == 3e-3
        opt.step()
        ref_opt.step()
        sched.step()
        ref_sched.step()
    assert switch.switched_at == 3


def test_switch_idempotent_and_returns_change() -> None:
    opt = _make_opt()
    sw = HeadLRSwitch(opt, lr=3e-3, from_epoch=2)
    assert sw.step(1) is False
    assert opt.param_groups[1]["lr"] == 1e-2
    assert sw.step(2) is True
    assert sw.step(2) is False
    assert sw.step(3) is False
    assert opt.param_groups[1]["lr"] == 3e-3
    assert sw.replaced_lr == 1e-2


def test_switch_by_index_and_state_round_trip() -> None:
    opt = _make_opt()
    sw = HeadLRSwitch(opt, group=1, lr=1e-3, from_epoch=2)
    sw.step(4)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sw": sw.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = _make_opt()
    opt2.load_state_dict(state["opt"])
    sw2 = HeadLRSwitch(opt2, group=1, lr=5.0, from_epoch=9)
    sw2.load_state_dict(state["sw"])
    assert (sw2.lr, sw2.from_epoch, sw2.switched_at, sw2.replaced_lr) == (1e-3, 2, 4, 1e-2)
    assert opt2.param_groups[1]["lr"] == 1e-3
    assert opt2.param_groups[1]["name"] == "head"


def test_switch_errors() -> None:
    opt = _make_opt()
    with pytest.raises(ValueError, match=r"'classifier'.*\['backbone', 'head'\]"):
        HeadLRSwitch(opt, group="classifier")
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "name": "head"})
    with pytest.raises(ValueError, match="more than one"):
        HeadLRSwitch(opt, group="head")
    with pytest.raises(ValueError, match="group index"):
        HeadLRSwitch(opt, group=7)
    with pytest.raises(ValueError, match="lr"):
        HeadLRSwitch(opt, group=0, lr=-1.0)
    with pytest.raises(ValueError, match="from_epoch"):
        HeadLRSwitch(opt, group=0, from_epoch=0)
    with pytest.raises(TypeError, match="optimizer"):
        HeadLRSwitch(object(), group=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch"):
        HeadLRSwitch(opt, group=0).step(0)


# --- epochs are passed, never remembered ---------------------------------------------------------


def test_rollback_requires_its_epoch() -> None:
    s = SDMWeightScheduler()
    s.weight(3)  # asking about an epoch records nothing a later rollback could use
    with pytest.raises(TypeError, match="epoch"):
        s.rollback()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="epoch"):
        s.rollback(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="epoch"):
        s.rollback("3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"epoch \(numbered from 1\) must be >= 1"):
        s.rollback(0)
    assert s.rollbacks == ()
    assert "latest_epoch" not in s.state_dict()


QUERIES = st.lists(
    st.tuples(
        st.sampled_from(
            ["weight", "weight_step", "use_sdm", "log_line", "stage", "nominal", "logit_scale"]
        ),
        st.integers(1, 20),
        st.integers(0, 12),
    ),
    max_size=12,
)


def ask(s: SDMWeightScheduler, query: tuple[str, int, int]) -> object:
    kind, epoch, step = query
    if kind == "weight":
        return s.weight(epoch)
    if kind == "weight_step":
        return s.weight(epoch, step=step)
    if kind == "use_sdm":
        return s.use_sdm(epoch)
    if kind == "log_line":
        return s.log_line(epoch, step)
    if kind == "stage":
        return s.stage(epoch)
    if kind == "logit_scale":
        return s.logit_scale(epoch)
    return s.nominal_stage(epoch)


@given(
    st.integers(0, 3),
    schedules,
    st.integers(0, 4),
    readvances,
    st.lists(st.integers(1, 15), max_size=3).map(sorted),
    QUERIES,
    st.randoms(use_true_random=False),
)
def test_queries_are_pure(
    warmup: int,
    schedule: list[float],
    ramp: int,
    readvance: int | None,
    rb_epochs: list[int],
    queries: list[tuple[str, int, int]],
    random: Any,
) -> None:
    def build() -> SDMWeightScheduler:
        s = SDMWeightScheduler(
            warmup_epochs=warmup,
            schedule=schedule,
            ramp_steps=ramp,
            logit_scales=[1.0 + i for i in range(len(schedule))],
            readvance_after=readvance,
        )
        for e in rb_epochs:
            s.rollback(e)
        return s

    s = build()
    before = s.state_dict()
    answers = [ask(s, q) for q in queries]
    assert s.state_dict() == before  # asking records nothing
    order = list(range(len(queries)))
    random.shuffle(order)
    fresh = build()
    shuffled = {i: ask(fresh, queries[i]) for i in order}
    assert [shuffled[i] for i in range(len(queries))] == answers  # nor depends on the order


# --- a refused load_state_dict changes nothing -------------------------------------------------


SCHEDULER_BAD_VALUES: dict[str, st.SearchStrategy[object]] = {
    "warmup_epochs": st.sampled_from([-1, 1.5, "1", None, True, 7]),
    "schedule": st.sampled_from([[], [-1.0, 0.3, 0.5], "abc", [0.2], [0.1, math.nan, 0.5], 3]),
    "ramp_steps": st.sampled_from([-1, 2.5, "2", 99]),
    "logit_scales": st.sampled_from(
        [
            [0.0, 1.0, 2.0],
            [-1.0, 1.0, 2.0],
            [1.0],
            "abc",
            3.0,
            [1.0, math.nan, 2.0],
            [1.0, 2.0, 3.0],
        ]
    ),
    "readvance_after": st.sampled_from([0, -1, 1.5, "2", True, 4]),
    "rollbacks": st.sampled_from(
        [
            "abc",
            None,
            [[3, 2, 0]],  # to_stage is not one below from_stage
            [[3, 0, -1]],  # from_stage is not the stage in force at epoch 3 (1)
            [[0, -1, -1]],
            [["3", 1, 0]],
            [[3.0, 1, 0]],
            [[3, 1]],
            [[5, 2, 1], [3, 1, 0]],  # epochs decrease
            [[3, 1, 0], "x"],
        ]
    ),
}
SCHEDULER_KEYS = ("warmup_epochs", "schedule", "ramp_steps", "rollbacks")
SCHEDULER_DEFECTS = [*({k: v} for k, v in SCHEDULER_BAD_VALUES.items()), "missing", "unknown"]


@pytest.mark.parametrize("defect", SCHEDULER_DEFECTS, ids=str)
@given(
    st.lists(st.integers(1, 12), max_size=4).map(sorted),
    st.lists(st.integers(1, 12), min_size=1, max_size=4).map(sorted),
    st.data(),
)
def test_scheduler_refused_load_leaves_state_unchanged(
    defect: Any, mine: list[int], theirs: list[int], data: st.DataObject
) -> None:
    target, other = SDMWeightScheduler(ramp_steps=2), SDMWeightScheduler(ramp_steps=2)
    for e in mine:
        target.rollback(e)
    for e in theirs:
        other.rollback(e)
    before = target.state_dict()
    bad = data.draw(
        corrupted_states(
            other.state_dict(),
            defect if isinstance(defect, dict) else {},
            required=SCHEDULER_KEYS if defect == "missing" else (),
            unknown_key=defect == "unknown",
        )
    )
    with pytest.raises((ValueError, TypeError)):
        target.load_state_dict(bad)
    assert target.state_dict() == before


@pytest.mark.parametrize("latest", ["abc", 3, None])
def test_scheduler_refuses_a_latest_epoch_key(latest: object) -> None:
    other = SDMWeightScheduler()
    other.rollback(3)
    target = SDMWeightScheduler()
    with pytest.raises(ValueError, match="latest_epoch"):
        target.load_state_dict({**other.state_dict(), "latest_epoch": latest})
    assert target.rollbacks == ()


def test_scheduler_non_strict_load_needs_only_the_history() -> None:
    a = SDMWeightScheduler(schedule=(0.1, 0.3, 0.5))
    a.rollback(4)
    b = SDMWeightScheduler(schedule=(0.2, 0.4, 0.6, 0.8))
    b.load_state_dict({"rollbacks": a.state_dict()["rollbacks"]}, strict=False)
    assert b.rollbacks == a.rollbacks
    with pytest.raises(ValueError, match="missing 'warmup_epochs'"):
        b.load_state_dict({"rollbacks": []})
    with pytest.raises(TypeError, match=r"state\['ramp_steps'\]"):
        b.load_state_dict({"rollbacks": [], "ramp_steps": "0"}, strict=False)
    assert b.rollbacks == a.rollbacks


def _switch_with_state() -> tuple[torch.optim.Optimizer, HeadLRSwitch]:
    opt = _make_opt()
    sw = HeadLRSwitch(opt, group="head", lr=3e-3, from_epoch=2)
    return opt, sw


SWITCH_BAD_VALUES: dict[str, st.SearchStrategy[object]] = {
    "group": st.sampled_from(["classifier", 7, -1, True, None, 1.5]),
    "lr": st.sampled_from([-1.0, math.nan, math.inf, "0.1", None, True]),
    "from_epoch": st.sampled_from([0, -1, 2.0, None, "3"]),
    # other's state below has from_epoch=3, switched_at=4, replaced_lr=0.1
    "switched_at": st.sampled_from([0, 1, 2, "4", 4.0, True, None]),
    "replaced_lr": st.sampled_from([-1.0, math.nan, "x", None]),
}
SWITCH_KEYS = ("group", "lr", "from_epoch", "switched_at", "replaced_lr")
SWITCH_DEFECTS = [*({k: v} for k, v in SWITCH_BAD_VALUES.items()), "missing", "unknown"]


@pytest.mark.parametrize("defect", SWITCH_DEFECTS, ids=str)
@given(st.integers(1, 4), st.data())
def test_switch_refused_load_leaves_state_unchanged(
    defect: Any, stepped: int, data: st.DataObject
) -> None:
    opt, target = _switch_with_state()
    target.step(stepped)
    before = target.state_dict()
    other = HeadLRSwitch(_make_opt(), group="backbone", lr=1e-3, from_epoch=3)
    other.step(4)
    bad = data.draw(
        corrupted_states(
            other.state_dict(),
            defect if isinstance(defect, dict) else {},
            required=SWITCH_KEYS if defect == "missing" else (),
            unknown_key=defect == "unknown",
        )
    )
    with pytest.raises((ValueError, TypeError)):
        target.load_state_dict(bad)
    assert target.state_dict() == before
    assert target.param_group is opt.param_groups[1]  # still switches the head group


def test_switch_keeps_its_group_after_refusing_a_bad_name() -> None:
    opt, sw = _switch_with_state()
    with pytest.raises(ValueError, match="classifier"):
        sw.load_state_dict({**sw.state_dict(), "group": "classifier"})
    assert sw.group == "head"
    sw.step(2)
    assert opt.param_groups[1]["lr"] == 3e-3
    assert opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("bad", ["no", 0, 1, None])
def test_scheduler_load_refuses_a_non_bool_strict(bad: object) -> None:
    other = SDMWeightScheduler()
    other.rollback(3)
    target = SDMWeightScheduler()
    with pytest.raises(TypeError, match="strict must be a bool"):
        target.load_state_dict(other.state_dict(), strict=bad)  # type: ignore[arg-type]
    assert target.rollbacks == ()
