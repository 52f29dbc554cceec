"""Every stateful component: a refused ``load_state_dict`` leaves ``state_dict()`` unchanged.

For each component, a target with some history is offered a corrupted state: the valid state of
*another* instance (with another history, so a loader that assigns part of the state before it
refuses the rest is caught) with one defect drawn by :func:`tests.strategies.corrupted_states` —
one key set to a value the loader must refuse, one required key dropped, or an unknown key
added. The load must raise, and the target's ``state_dict()`` must equal the one taken before
(tensors compared by dtype, shape and value, NaN equal to NaN).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmreid import (
    CrossBatchMemory,
    HealthMonitor,
    ModalAwarePKSampler,
    ModalAwarePKSampler_Strict,
    PairCoverageMeter,
    SDMLoss,
    SDMWeightScheduler,
)
from sdmreid.schedules import HeadLRSwitch
from tests.samplers.test_pk import LABELS, MODS, SAMPLER_BAD_VALUES
from tests.strategies import corrupted_states
from tests.test_health import MONITOR_BAD_VALUES
from tests.test_schedules import SCHEDULER_BAD_VALUES, SWITCH_BAD_VALUES

BadValues = Mapping[str, st.SearchStrategy[object] | Callable[[Any], st.SearchStrategy[object]]]


def states_equal(a: object, b: object) -> bool:
    """Equality of nested states; tensors by dtype, shape and value, NaN equal to NaN."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
            return False
        same = a == b
        if a.is_floating_point():
            same |= a.isnan() & b.isnan()
        return bool(same.all())
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(states_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class Stateful:
    """How the property drives one component.

    Attributes:
        build: ``history -> component`` (the target, and, unless ``other`` is given, the
            instance whose state is corrupted).
        bad_values: per key, values (or a function of the valid value giving values) the loader
            must refuse.
        required: keys the loader must refuse to do without.
        other: ``history -> component`` whose state is corrupted, when the bad values assume a
            particular one.
    """

    build: Callable[[int], Any]
    bad_values: BadValues
    required: tuple[str, ...]
    other: Callable[[int], Any] | None = field(default=None)


# --- CrossBatchMemory ---------------------------------------------------------------------------

DIM = 3


def _memory(item_mode: bool) -> Callable[[int], CrossBatchMemory]:
    def build(history: int) -> CrossBatchMemory:
        mem = (
            CrossBatchMemory(DIM, max_items=7) if item_mode else CrossBatchMemory(DIM, max_steps=3)
        )
        rng = np.random.default_rng(history)
        for _ in range(history):
            n = int(rng.integers(0, 5))
            mem.enqueue(
                torch.from_numpy(rng.standard_normal((n, DIM)).astype(np.float32)),
                torch.from_numpy(rng.integers(0, 9, n)),
                modalities=torch.from_numpy(rng.integers(0, 3, n)),
            )
        return mem

    return build


def _one(values: list[object]) -> st.SearchStrategy[object]:
    return st.sampled_from(values)


def _with(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = value
    return t


MEMORY_BAD_VALUES: BadValues = {
    "features": lambda f: _one(
        [f.long(), torch.zeros(f.shape[0], DIM + 1)]
        + ([_with(f, math.nan), _with(f, -math.inf), f[1:]] if f.shape[0] else [])
    ),
    "labels": lambda y: _one([y.double(), y > 0, y[None], torch.cat([y, y.new_zeros(1)])]),
    "modalities": lambda m: _one(
        [m.float(), torch.cat([m, m.new_zeros(1)])]
        + ([_with(m, 9), _with(m, -2)] if len(m) else [])
    ),
    "step_ids": lambda s: _one(
        [s.float(), torch.cat([s, s.new_zeros(1)])] + ([s + 100] if len(s) else [])
    ),
    "counters": lambda c: _one([c[:2], c.float(), _with(c, -1)]),
    "config": lambda c: _one([c + 1, c.float(), c[:2]]),
}
MEMORY_KEYS = ("features", "labels", "modalities", "step_ids", "counters", "config")


# --- samplers -----------------------------------------------------------------------------------


def _sampler(cls: type) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    def build(history: int) -> Any:
        s = cls(LABELS, MODS, 2, 2, seed=0)
        s.set_epoch(1 + history)
        for _ in zip(range(history % 3), s, strict=False):
            pass
        return s

    def other(history: int) -> Any:
        s = cls(LABELS, MODS, 2, 2, seed=0)
        s.load_state_dict({"epoch": history + 3, "next_batch": 1})
        return s

    return build, other


# --- schedules ----------------------------------------------------------------------------------


def _scheduler(history: int) -> SDMWeightScheduler:
    s = SDMWeightScheduler(ramp_steps=2)
    for epoch in range(2, 2 + 3 * history, 3):
        s.rollback(epoch)
    return s


def _optimizer() -> torch.optim.Optimizer:
    body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
    return torch.optim.SGD(
        [
            {"params": body.parameters(), "name": "backbone"},
            {"params": head.parameters(), "name": "head", "lr": 1e-2},
        ],
        lr=0.1,
    )


def _switch(history: int) -> HeadLRSwitch:
    sw = HeadLRSwitch(_optimizer(), group="head", lr=3e-3, from_epoch=2)
    sw.step(1 + history)
    return sw


def _other_switch(history: int) -> HeadLRSwitch:
    # SWITCH_BAD_VALUES assume this state: from_epoch=3, switched_at=4, replaced_lr=0.1
    sw = HeadLRSwitch(_optimizer(), group="backbone", lr=1e-3, from_epoch=3)
    sw.step(4)
    return sw


# --- meters and monitors ------------------------------------------------------------------------


def _meter(history: int) -> PairCoverageMeter:
    m = PairCoverageMeter(window=5)
    for i in range(history * 2):
        m.update(rows=10 + i, rows_without_positive=i % 4)
    return m


METER_BAD_VALUES: BadValues = {
    "rows": _one(["x", [1.5], [-1], [True], 3, None]),
    "rows_without_positive": _one(["x", [-1], [1.5], None]),
    "num_updates": _one([-1, "1", 1.5, True, None]),
    "window": _one(["x", 0, True, 2.5, None]),
    "target": _one([math.nan, 2.0, -0.1, "x", True, None]),
}


def _monitor(history: int) -> HealthMonitor:
    mon = HealthMonitor(365, coverage_window=3)
    for s in range(history * 4):
        mon.update_step(1 + s // 4, s, coverage=0.5, classifier_weight_norm=1.0 + s)
        if s % 4 == 3:
            mon.update_epoch(1 + s // 4, train_ce=5.9, sdm_on=True, train_score=0.9, val_score=0.5)
    return mon


# --- SDMLoss with a tensor scale ----------------------------------------------------------------


def _criterion(parameter: bool) -> Callable[[int], SDMLoss]:
    def build(history: int) -> SDMLoss:
        scale = torch.tensor(5.0 + history)
        return SDMLoss(logit_scale=torch.nn.Parameter(scale) if parameter else scale)

    return build


SCALE_BAD_VALUES: BadValues = {
    "logit_scale": _one(
        [
            torch.tensor(math.nan),
            torch.tensor(math.inf),
            torch.tensor(0.0),
            torch.tensor(-1.0),
            torch.tensor(1e39, dtype=torch.float64),  # Inf once stored as float32
            torch.tensor(7),
            torch.ones(2),
            "x",
        ]
    )
}

_SAMPLER_KEYS = ("epoch", "next_batch")
_sampler_build, _sampler_other = _sampler(ModalAwarePKSampler)
_strict_build, _strict_other = _sampler(ModalAwarePKSampler_Strict)

COMPONENTS: dict[str, Stateful] = {
    "CrossBatchMemory(max_steps)": Stateful(_memory(False), MEMORY_BAD_VALUES, MEMORY_KEYS),
    "CrossBatchMemory(max_items)": Stateful(_memory(True), MEMORY_BAD_VALUES, MEMORY_KEYS),
    "ModalAwarePKSampler": Stateful(
        _sampler_build, SAMPLER_BAD_VALUES, _SAMPLER_KEYS, _sampler_other
    ),
    "ModalAwarePKSampler_Strict": Stateful(
        _strict_build,
        {**SAMPLER_BAD_VALUES, "max_fallback": _one([2, -1, 1.0, "1"])},
        _SAMPLER_KEYS,
        _strict_other,
    ),
    "SDMWeightScheduler": Stateful(
        _scheduler, SCHEDULER_BAD_VALUES, ("warmup_epochs", "schedule", "ramp_steps", "rollbacks")
    ),
    "HeadLRSwitch": Stateful(
        _switch,
        SWITCH_BAD_VALUES,
        ("group", "lr", "from_epoch", "switched_at", "replaced_lr"),
        _other_switch,
    ),
    "PairCoverageMeter": Stateful(
        _meter, METER_BAD_VALUES, ("rows", "rows_without_positive", "num_updates")
    ),
    "HealthMonitor": Stateful(
        _monitor,
        {k: _one(v) for k, v in MONITOR_BAD_VALUES.items()},
        tuple(HealthMonitor(2).state_dict()),
    ),
    "SDMLoss(buffer scale)": Stateful(_criterion(False), SCALE_BAD_VALUES, ("logit_scale",)),
    "SDMLoss(parameter scale)": Stateful(_criterion(True), SCALE_BAD_VALUES, ("logit_scale",)),
}

# One kind of defect per case, so that each is tried often.
CASES = [
    (name, defect)
    for name, comp in COMPONENTS.items()
    for defect in [*(f"bad {k}" for k in comp.bad_values), "missing key", "unknown key"]
]


@pytest.mark.parametrize(("name", "defect"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
@given(mine=st.integers(0, 4), theirs=st.integers(0, 4), data=st.data())
@settings(max_examples=8, deadline=None)
def test_a_refused_load_state_dict_leaves_state_dict_unchanged(
    name: str, defect: str, mine: int, theirs: int, data: st.DataObject
) -> None:
    comp = COMPONENTS[name]
    target = comp.build(mine)
    before = copy.deepcopy(target.state_dict())  # a module's state_dict shares its tensors
    source = (comp.other or comp.build)(theirs)
    key = defect.removeprefix("bad ")
    bad = data.draw(
        corrupted_states(
            source.state_dict(),
            {key: comp.bad_values[key]} if defect.startswith("bad ") else {},
            required=comp.required if defect == "missing key" else (),
            unknown_key=defect == "unknown key",
        )
    )
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        target.load_state_dict(bad)
    assert states_equal(target.state_dict(), before)
