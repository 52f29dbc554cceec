"""Tests for sdmreid.coverage.PairCoverageMeter against a naive list-based reference."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmreid.coverage import PairCoverageMeter


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


def value(m: PairCoverageMeter, **kwargs: Any) -> float:
    out = m.compute(**kwargs)
    assert out.dim() == 0 and out.is_floating_point()
    return float(out)


FORMS = ["ints", "tensors", "int32_tensors", "result", "result_tensors"]


def feed(m: PairCoverageMeter, rows: int, without: int, form: str) -> None:
    """One update in one of the accepted forms."""
    if form == "ints":
        m.update(rows=rows, rows_without_positive=without)
    elif form == "tensors":
        m.update(rows=torch.tensor(rows), rows_without_positive=torch.tensor(without))
    elif form == "int32_tensors":
        m.update(
            rows=torch.tensor(rows, dtype=torch.int32),
            rows_without_positive=torch.tensor(without, dtype=torch.int32),
        )
    elif form == "result":
        m.update(SimpleNamespace(rows=rows, rows_without_positive=without, loss=0.0))
    else:
        m.update(
            SimpleNamespace(rows=torch.tensor(rows), rows_without_positive=torch.tensor(without))
        )


# --- reading -------------------------------------------------------------------------------------


def test_nan_before_the_first_update() -> None:
    m = PairCoverageMeter()
    assert math.isnan(value(m))
    assert m.log_line() == "[dbg] pair_coverage_mavg=nan"
    assert m.below_target() is False
    assert m.num_updates == 0


def test_log_line_format() -> None:
    m = PairCoverageMeter()
    m.update(rows=1000, rows_without_positive=88)
    assert m.log_line() == "[dbg] pair_coverage_mavg=0.912"
    assert value(m) == 1 - 88 / 1000
    assert m.below_target() is False


def test_a_window_without_rows_is_nan() -> None:
    m = PairCoverageMeter(window=2)
    m.update(rows=0, rows_without_positive=0)
    assert math.isnan(value(m))
    m.update(rows=4, rows_without_positive=1)
    assert value(m) == 0.75


@given(
    window=st.integers(1, 12),
    target=st.floats(0.0, 1.0),
    steps=st.lists(st.tuples(count_pairs(), st.sampled_from(FORMS)), min_size=1, max_size=40),
)
def test_window_matches_naive_reference(
    window: int, target: float, steps: list[tuple[tuple[int, int], str]]
) -> None:
    m = PairCoverageMeter(window=window, target=target)
    seen: list[tuple[int, int]] = []
    for (rows, without), form in steps:
        feed(m, rows, without, form)
        seen.append((rows, without))
        expected = ref_coverage(seen, window)
        assert same(value(m), expected)
        assert m.below_target() is (expected < target)
        shown = "nan" if math.isnan(expected) else f"{expected:.3f}"
        assert m.log_line() == f"[dbg] pair_coverage_mavg={shown}"
    assert m.num_updates == len(steps)


def test_update_takes_an_sdm_result() -> None:
    sdm = pytest.importorskip("sdmreid.losses")
    g = torch.Generator().manual_seed(0)
    q_labels = [0, 1, 2, 2, 7]
    g_labels = [0, 1, 1, 3]
    result = sdm.sdm_loss(
        torch.randn(5, 8, generator=g),
        torch.randn(4, 8, generator=g),
        torch.tensor(q_labels),
        torch.tensor(g_labels),
    )
    # brute force: a query row needs a same-label gallery item and vice versa
    without = sum(y not in g_labels for y in q_labels) + sum(y not in q_labels for y in g_labels)
    m = PairCoverageMeter()
    m.update(result)
    assert value(m) == 1 - without / (len(q_labels) + len(g_labels))


def test_update_takes_a_sampler_coverage_report() -> None:
    samplers = pytest.importorskip("sdmreid.samplers")
    labels = np.array([0, 0, 1, 1, 2, 2])
    mods = np.array([0, 1, 0, 0, 1, 1])  # identity 0 pairs, 1 is RGB only, 2 non-RGB only
    report = samplers.coverage_report([[0, 1, 2, 3, 4, 5]], labels, mods)
    m = PairCoverageMeter()
    m.update(report)
    assert value(m) == 1 - 4 / 6


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "result"),
        ((), {"rows": 3}, "rows_without_positive"),
        ((), {"rows_without_positive": 3}, "rows"),
        ((SimpleNamespace(rows=3, rows_without_positive=1),), {"rows": 3}, "not both"),
        ((SimpleNamespace(rows=3),), {}, "rows_without_positive"),
        ((3,), {}, "result"),
    ],
)
def test_update_argument_errors(args: Any, kwargs: Any, match: str) -> None:
    m = PairCoverageMeter()
    with pytest.raises(TypeError, match=match):
        m.update(*args, **kwargs)
    assert m.num_updates == 0


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
        (torch.tensor(True), 1, TypeError, "integer tensor"),
        (torch.tensor([3, 4]), 1, ValueError, "0-dim"),
        ("3", 1, TypeError, "rows"),
    ],
)
def test_invalid_counts_are_refused_and_change_nothing(
    rows: Any, without: Any, exc: type, match: str
) -> None:
    m = PairCoverageMeter(window=3)
    m.update(rows=10, rows_without_positive=1)
    before = m.state_dict()
    with pytest.raises(exc, match=match):
        m.update(rows=rows, rows_without_positive=without)
    with pytest.raises(exc, match=match):
        m.update(SimpleNamespace(rows=rows, rows_without_positive=without))
    assert m.state_dict() == before
    assert value(m) == 0.9


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="window"):
        PairCoverageMeter(window=0)
    with pytest.raises(TypeError, match="window"):
        PairCoverageMeter(window=2.0)  # type: ignore[arg-type]
    for bad in (1.5, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="target"):
            PairCoverageMeter(target=bad)
    for wrong in (True, "0.8", None):
        with pytest.raises(TypeError, match="target"):
            PairCoverageMeter(target=wrong)  # type: ignore[arg-type]


def test_reset_forgets_every_update() -> None:
    m = PairCoverageMeter(window=3)
    m.update(rows=10, rows_without_positive=5)
    m.reset()
    assert math.isnan(value(m)) and m.num_updates == 0
    m.update(rows=10, rows_without_positive=1)
    assert value(m) == 0.9


def test_gather_without_a_process_group_reads_the_local_window() -> None:
    m = PairCoverageMeter(window=2, target=0.9)
    for rows, without in [(10, 0), (10, 1), (10, 3)]:
        m.update(rows=rows, rows_without_positive=without)
    assert value(m, gather=True) == value(m) == 0.8
    assert m.below_target(gather=True) is True
    assert m.log_line(gather=True) == "[dbg] pair_coverage_mavg=0.800"


# --- checkpoints ---------------------------------------------------------------------------------


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
        a.update(rows=r, rows_without_positive=w)
    state = roundtrip(a.state_dict())
    assert state["rows"] == [r for r, _ in before[-window:]]
    b = PairCoverageMeter(window=new_window)
    b.load_state_dict(state)
    # the resumed meter holds the last min(window, new_window) saved updates
    kept = before[-min(window, new_window) :] if before else []
    assert same(value(b), ref_coverage(kept, new_window))
    for r, w in after:
        b.update(rows=r, rows_without_positive=w)
    assert same(value(b), ref_coverage(kept + after, new_window))
    assert b.num_updates == len(before) + len(after)


BAD_STATES = [
    {"rows": [1]},
    {"rows": [1], "rows_without_positive": [2], "num_updates": 1},
    {"rows": [1, 2], "rows_without_positive": [0], "num_updates": 2},
    {"rows": [-1], "rows_without_positive": [0], "num_updates": 1},
    {"rows": [1.5], "rows_without_positive": [0], "num_updates": 1},
    {"rows": [True], "rows_without_positive": [0], "num_updates": 1},
    {"rows": [1], "rows_without_positive": [0], "num_updates": -1},
    {"rows": [1], "rows_without_positive": [0], "num_updates": "1"},
    {"rows": 1, "rows_without_positive": 0, "num_updates": 1},
    [("rows", [1])],
]


@given(
    before=st.lists(count_pairs(), min_size=0, max_size=12),
    bad=st.sampled_from(BAD_STATES),
)
def test_a_refused_load_state_dict_leaves_state_dict_unchanged(
    before: list[tuple[int, int]], bad: Any
) -> None:
    m = PairCoverageMeter(window=5)
    for r, w in before:
        m.update(rows=r, rows_without_positive=w)
    state = m.state_dict()
    shown = value(m)
    with pytest.raises((ValueError, TypeError), match="state"):
        m.load_state_dict(bad)
    assert m.state_dict() == state
    assert same(value(m), shown)


# --- devices -------------------------------------------------------------------------------------


def test_compute_is_a_tensor_on_the_buffer_device() -> None:
    m = PairCoverageMeter()
    m.update(rows=torch.tensor(8), rows_without_positive=torch.tensor(2))
    out = m.compute()
    assert out.shape == () and out.is_floating_point() and out.device.type == "cpu"
    assert float(out) == 0.75


@pytest.mark.gpu
@settings(max_examples=5)
@given(st.lists(count_pairs(), min_size=2, max_size=12))
def test_cuda_counts_stay_on_the_device_without_a_host_sync(steps: list[tuple[int, int]]) -> None:
    dev = torch.device("cuda")
    m = PairCoverageMeter(window=4)
    m.update(rows=5, rows_without_positive=1)  # ints first: a CPU window, moved once
    ref: list[tuple[int, int]] = [(5, 1)]
    # made before the check: a tensor from a Python number is a host-to-device copy
    counts = [(torch.tensor(r, device=dev), torch.tensor(w, device=dev)) for r, w in steps]
    m.update(rows=counts[0][0], rows_without_positive=counts[0][1])
    ref.append(steps[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for (r, w), (rt, wt) in zip(steps[1:], counts[1:], strict=True):
            m.update(SimpleNamespace(rows=rt, rows_without_positive=wt))
            ref.append((r, w))
        m.update(rows=7, rows_without_positive=counts[0][1].clamp(max=7))  # mixed forms
        ref.append((7, min(steps[0][1], 7)))
        m.update(rows=3, rows_without_positive=1)  # ints are written on the device too
        ref.append((3, 1))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    out = m.compute()  # a read: checks the validity flag on the host
    assert m.device.type == "cuda" and out.device.type == "cuda"
    assert same(float(out), ref_coverage(ref, 4))
    cpu = PairCoverageMeter(window=4)
    cpu.load_state_dict(roundtrip(m.state_dict()))
    assert same(value(cpu), value(m))


@pytest.mark.gpu
def test_invalid_cuda_counts_raise_at_the_next_read() -> None:
    dev = torch.device("cuda")
    bad = PairCoverageMeter()
    bad.update(rows=torch.tensor(3, device=dev), rows_without_positive=torch.tensor(5, device=dev))
    for read in (bad.compute, bad.log_line, bad.below_target, bad.state_dict):
        with pytest.raises(ValueError, match="rows_without_positive > rows"):
            read()
    bad.reset()
    bad.update(rows=torch.tensor(3, device=dev), rows_without_positive=torch.tensor(1, device=dev))
    assert value(bad) == 1 - 1 / 3


@pytest.mark.parametrize("bad", ["no", 0, 1, None, 1.0])
def test_gather_refuses_non_bool_values(bad: object) -> None:
    m = PairCoverageMeter()
    m.update(rows=10, rows_without_positive=1)
    state = m.state_dict()
    for read in (m.compute, m.below_target, m.log_line):
        with pytest.raises(TypeError, match="gather must be a bool"):
            read(gather=bad)  # type: ignore[arg-type]
    assert m.state_dict() == state


def test_a_meta_count_is_refused_and_changes_nothing() -> None:
    m = PairCoverageMeter()
    m.update(rows=10, rows_without_positive=1)
    state = m.state_dict()
    with pytest.raises(ValueError, match="rows is on meta"):
        m.update(rows=torch.tensor(3, device="meta"), rows_without_positive=0)
    assert m.state_dict() == state
