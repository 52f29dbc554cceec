"""Tests for sdmreid.coverage.PairCoverageMeter against a naive list-based reference."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmreid.coverage import PairCoverageMeter
from sdmreid.modality import Modality


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


# --- per query modality ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeQueryResult:
    """The query-side counts of one modality's SDM call (an ``SDMResult`` has these)."""

    query_rows: Any
    query_rows_without_positive: Any


@dataclass(frozen=True)
class FakePerModalityResult:
    """A per-modality SDM result: aggregate counts, one result per query modality."""

    rows: Any
    rows_without_positive: Any
    per_modality: Mapping[Any, FakeQueryResult]


PerModality = dict[int, tuple[int, int]]
#: One step: aggregate counts, and the query modalities' counts (``None``: a plain result).
Step = tuple[tuple[int, int], PerModality | None]

QUERY_CODES = [int(m) for m in Modality]  # RGB too: any modality may be a query


def ref_per_modality(window_steps: list[Step], seen: set[int]) -> dict[str, float]:
    """Brute force: per reported modality, 1 - Σ without / Σ query rows over the window's steps."""
    out: dict[str, float] = {}
    for code in sorted(seen):
        rows = sum(per[code][0] for _, per in window_steps if per is not None and code in per)
        without = sum(per[code][1] for _, per in window_steps if per is not None and code in per)
        out[Modality(code).name] = math.nan if rows == 0 else 1.0 - without / rows
    return out


def seen_in(steps: list[Step]) -> set[int]:
    return {code for _, per in steps if per is not None for code in per}


def same_dict(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return list(a) == list(b) and all(same(a[k], b[k]) for k in a)


@st.composite
def steps_with_modalities(draw: st.DrawFn, max_rows: int = 60) -> Step:
    counts = draw(count_pairs())
    if draw(st.booleans()) and draw(st.booleans()):
        return counts, None  # a plain result now and then
    codes = draw(st.lists(st.sampled_from(QUERY_CODES), unique=True, max_size=5))
    return counts, {c: draw(count_pairs(max_rows)) for c in codes}


KEY_FORMS = [
    lambda c: Modality(c),
    lambda c: int(c),
    lambda c: Modality(c).name.lower(),
    lambda c: Modality(c).name,
]


def as_result(step: Step, tensors: bool, key_form: int = 0) -> Any:
    (rows, without), per = step

    def count(x: int) -> Any:
        return torch.tensor(x) if tensors else x

    if per is None:
        return SimpleNamespace(rows=count(rows), rows_without_positive=count(without))
    return FakePerModalityResult(
        rows=count(rows),
        rows_without_positive=count(without),
        per_modality={
            KEY_FORMS[key_form](c): FakeQueryResult(count(r), count(w)) for c, (r, w) in per.items()
        },
    )


def line_of(values: Mapping[str, float]) -> str:
    shown = [f"{k}={'nan' if math.isnan(v) else f'{v:.3f}'}" for k, v in values.items()]
    return " ".join(["[dbg] pair_coverage_mavg_by_modality", *shown])


@given(
    window=st.integers(1, 8),
    steps=st.lists(
        st.tuples(steps_with_modalities(), st.booleans(), st.integers(0, 3)), max_size=25
    ),
)
def test_per_modality_window_matches_brute_force(
    window: int, steps: list[tuple[Step, bool, int]]
) -> None:
    m = PairCoverageMeter(window=window)
    seen: list[Step] = []
    assert m.compute_per_modality() == {}
    assert m.per_modality_log_line() == "[dbg] pair_coverage_mavg_by_modality"
    for step, tensors, key_form in steps:
        m.update(as_result(step, tensors, key_form))
        seen.append(step)
        expected = ref_per_modality(seen[-window:], seen_in(seen))
        got = m.compute_per_modality()
        assert same_dict(got, expected), (got, expected)
        assert m.per_modality_log_line() == line_of(expected)
        # the aggregate line is the seed's, from the aggregate counts only
        assert same(value(m), ref_coverage([c for c, _ in seen], window))
        assert m.query_modalities == tuple(Modality(c) for c in sorted(seen_in(seen)))
    assert m.num_updates == len(steps)  # one update per step, however many modalities


def test_one_update_per_step_whatever_the_number_of_modalities() -> None:
    # The window counts steps: 4 query modalities per step still fill only one slot per step.
    m = PairCoverageMeter(window=2)
    per = {mod: FakeQueryResult(10, 1) for mod in ("nir", "sketch", "cpencil", "text")}
    m.update(FakePerModalityResult(rows=50, rows_without_positive=10, per_modality=per))
    per = {mod: FakeQueryResult(10, 3) for mod in ("nir", "sketch", "cpencil", "text")}
    for _ in range(2):
        m.update(FakePerModalityResult(rows=50, rows_without_positive=0, per_modality=per))
    assert m.num_updates == 3
    assert value(m) == 1.0  # the first step left the window
    assert m.compute_per_modality() == {"NIR": 0.7, "SKETCH": 0.7, "CPENCIL": 0.7, "TEXT": 0.7}
    assert m.per_modality_log_line() == (
        "[dbg] pair_coverage_mavg_by_modality NIR=0.700 SKETCH=0.700 CPENCIL=0.700 TEXT=0.700"
    )


def test_a_modality_without_rows_in_the_window_is_nan_not_zero() -> None:
    m = PairCoverageMeter(window=2)
    m.update(
        FakePerModalityResult(5, 0, {"nir": FakeQueryResult(4, 1), "text": FakeQueryResult(0, 0)})
    )
    values = m.compute_per_modality()
    assert values["NIR"] == 0.75 and math.isnan(values["TEXT"])
    m.update(FakePerModalityResult(5, 0, {"sketch": FakeQueryResult(2, 0)}))
    m.update(rows=3, rows_without_positive=0)  # keyword counts: the aggregate only
    values = m.compute_per_modality()
    assert list(values) == ["NIR", "SKETCH", "TEXT"]  # still reported, in code order
    assert math.isnan(values["NIR"]) and values["SKETCH"] == 1.0 and math.isnan(values["TEXT"])
    assert m.per_modality_log_line() == (
        "[dbg] pair_coverage_mavg_by_modality NIR=nan SKETCH=1.000 TEXT=nan"
    )
    m.reset()
    assert m.compute_per_modality() == {} and m.query_modalities == ()


def test_update_takes_a_per_modality_result_of_sdm_results() -> None:
    # Each entry is a real SDMResult of one query modality against the same RGB gallery.
    sdm = pytest.importorskip("sdmreid.losses")
    g = torch.Generator().manual_seed(0)
    gallery_labels = [0, 1, 2, 3]
    queries = {Modality.NIR: [0, 1, 5], Modality.TEXT: [2, 7, 8, 9]}
    per = {
        mod: sdm.sdm_loss(
            torch.randn(len(labels), 8, generator=g),
            torch.randn(4, 8, generator=g),
            torch.tensor(labels),
            torch.tensor(gallery_labels),
        )
        for mod, labels in queries.items()
    }
    rows = torch.tensor(sum(len(v) for v in queries.values()) + 4)
    m = PairCoverageMeter()
    m.update(FakePerModalityResult(rows, torch.tensor(0), per))
    expected = {
        mod.name: 1 - sum(y not in gallery_labels for y in labels) / len(labels)
        for mod, labels in queries.items()
    }
    assert m.compute_per_modality() == expected == {"NIR": 1 - 1 / 3, "TEXT": 1 - 3 / 4}


@pytest.mark.parametrize("mode", ["per_modality", "pooled"])
def test_update_takes_sdm_per_modality_as_one_step(mode: str) -> None:
    from sdmreid import losses

    g = torch.Generator().manual_seed(1)
    labels = [0, 1, 2, 3, 0, 1, 7, 2, 8, 9, 3, 3]
    mods = [0, 0, 0, 0, 1, 1, 1, 2, 2, 4, 4, 4]  # RGB anchors; no CPENCIL rows in this batch
    queries = ["nir", "sketch", "cpencil", "text"]
    result = losses.sdm_per_modality(
        torch.randn(len(labels), 8, generator=g),
        torch.tensor(labels),
        torch.tensor(mods),
        query_modalities=queries,
        mode=mode,
    )
    m = PairCoverageMeter()
    m.update(result)
    assert m.num_updates == 1
    # brute force: a query row of modality q has a positive when an RGB row shares its label
    rgb = {y for y, c in zip(labels, mods, strict=True) if c == 0}
    expected: dict[str, float] = {}
    for q in queries:
        code = int(Modality[q.upper()])
        rows = [y for y, c in zip(labels, mods, strict=True) if c == code]
        expected[Modality(code).name] = (
            math.nan if not rows else 1 - sum(y not in rgb for y in rows) / len(rows)
        )
    assert same_dict(m.compute_per_modality(), expected)
    assert expected["NIR"] == 1 - 1 / 3 and math.isnan(expected["CPENCIL"])
    assert value(m) == 1 - int(result.rows_without_positive) / int(result.rows)


@pytest.mark.parametrize(
    ("per_modality", "exc", "match"),
    [
        ([("nir", FakeQueryResult(1, 0))], TypeError, "per_modality must be a mapping"),
        ({"nir": SimpleNamespace(query_rows=3)}, TypeError, r"per_modality\[NIR\] must have"),
        ({"depth": FakeQueryResult(1, 0)}, ValueError, "unknown modality 'depth'"),
        ({True: FakeQueryResult(1, 0)}, TypeError, "bool"),
        ({"nir": FakeQueryResult(1, 0), 1: FakeQueryResult(1, 0)}, ValueError, "NIR twice"),
        (
            {"text": FakeQueryResult(2, 3)},
            ValueError,
            r"result.per_modality\[TEXT\].query_rows_without_positive must be <= "
            r"result.per_modality\[TEXT\].query_rows",
        ),
        (
            {"sk": FakeQueryResult(-1, 0)},
            ValueError,
            r"per_modality\[SKETCH\].query_rows must be >= 0",
        ),
        (
            {"sk": FakeQueryResult(torch.tensor(2), torch.tensor(3))},
            ValueError,
            r"per_modality\[SKETCH\].query_rows_without_positive must be <=",
        ),
        ({"cp": FakeQueryResult(2.0, 0)}, TypeError, r"per_modality\[CPENCIL\].query_rows"),
        ({"cp": FakeQueryResult(torch.tensor([2, 3]), 0)}, ValueError, "0-dim"),
    ],
)
def test_invalid_per_modality_results_are_refused_and_change_nothing(
    per_modality: Any, exc: type, match: str
) -> None:
    m = PairCoverageMeter(window=3)
    m.update(FakePerModalityResult(10, 1, {"nir": FakeQueryResult(4, 1)}))
    before = m.state_dict()
    with pytest.raises(exc, match=match):
        m.update(FakePerModalityResult(torch.tensor(10), 0, per_modality))
    with pytest.raises(exc, match=match):
        m.update(FakePerModalityResult(10, 0, per_modality))
    assert m.state_dict() == before and m.num_updates == 1
    assert m.compute_per_modality() == {"NIR": 0.75}


@given(
    st.integers(1, 8),
    st.integers(1, 8),
    st.lists(steps_with_modalities(), max_size=15),
    st.lists(steps_with_modalities(), max_size=8),
)
def test_per_modality_state_round_trip(
    window: int, new_window: int, before: list[Step], after: list[Step]
) -> None:
    a = PairCoverageMeter(window=window)
    for step in before:
        a.update(as_result(step, tensors=False))
    state = roundtrip(a.state_dict())
    assert set(state["modality_rows"]) == {Modality(c).name for c in seen_in(before)}
    b = PairCoverageMeter(window=new_window)
    b.load_state_dict(state)
    kept = before[len(before) - min(len(before), window, new_window) :]
    assert same_dict(b.compute_per_modality(), ref_per_modality(kept, seen_in(before)))
    for step in after:
        b.update(as_result(step, tensors=True))
    expected = ref_per_modality((kept + after)[-new_window:], seen_in(before + after))
    assert same_dict(b.compute_per_modality(), expected)
    assert same(value(b), ref_coverage([c for c, _ in kept + after], new_window))


def test_a_state_saved_before_per_modality_counts_still_loads() -> None:
    a = PairCoverageMeter(window=3)
    a.update(FakePerModalityResult(10, 2, {"nir": FakeQueryResult(4, 1)}))
    old = {k: v for k, v in a.state_dict().items() if not k.startswith("modality_")}
    b = PairCoverageMeter(window=3)
    b.load_state_dict(old)
    assert value(b) == 0.8 and b.compute_per_modality() == {} and b.num_updates == 1


MODALITY_BAD_STATES = [
    {"modality_rows": {"NIR": [1]}},  # without its partner key
    {"modality_rows": {"NIR": [1]}, "modality_rows_without_positive": {"NIR": [2]}},
    {"modality_rows": {"NIR": [1]}, "modality_rows_without_positive": {"TEXT": [0]}},
    {"modality_rows": {"DEPTH": [1]}, "modality_rows_without_positive": {"DEPTH": [0]}},
    {"modality_rows": {"nir": [1]}, "modality_rows_without_positive": {"nir": [0]}},
    {"modality_rows": {"NIR": [1, 1]}, "modality_rows_without_positive": {"NIR": [0, 0]}},
    {"modality_rows": {"NIR": [1.0]}, "modality_rows_without_positive": {"NIR": [0]}},
    {"modality_rows": {"NIR": [-1]}, "modality_rows_without_positive": {"NIR": [0]}},
    {"modality_rows": [[1]], "modality_rows_without_positive": [[0]]},
    {"modality_rows": {"NIR": 1}, "modality_rows_without_positive": {"NIR": 0}},
]


@pytest.mark.parametrize("bad", MODALITY_BAD_STATES)
def test_a_refused_per_modality_state_changes_nothing(bad: dict[str, Any]) -> None:
    m = PairCoverageMeter(window=5)
    m.update(FakePerModalityResult(10, 1, {"text": FakeQueryResult(4, 1)}))
    state = m.state_dict()
    source = {"rows": [3], "rows_without_positive": [1], "num_updates": 1, **bad}
    with pytest.raises(ValueError, match="state"):
        m.load_state_dict(source)
    assert m.state_dict() == state and m.compute_per_modality() == {"TEXT": 0.75}


def test_per_modality_gather_without_a_process_group_reads_the_local_window() -> None:
    m = PairCoverageMeter(window=2)
    for w in (0, 1, 3):
        m.update(FakePerModalityResult(10, w, {"cp": FakeQueryResult(10, w)}))
    assert m.compute_per_modality(gather=True) == m.compute_per_modality() == {"CPENCIL": 0.8}
    assert m.per_modality_log_line(gather=True) == (
        "[dbg] pair_coverage_mavg_by_modality CPENCIL=0.800"
    )


@pytest.mark.parametrize("bad", ["no", 0, 1, None])
def test_per_modality_reads_refuse_a_non_bool_gather(bad: object) -> None:
    m = PairCoverageMeter()
    m.update(FakePerModalityResult(10, 1, {"nir": FakeQueryResult(4, 1)}))
    for read in (m.compute_per_modality, m.per_modality_log_line):
        with pytest.raises(TypeError, match="gather must be a bool"):
            read(gather=bad)  # type: ignore[arg-type]


# A 2-process (gloo) gathered reading per modality: one meter over both ranks' windows.
DDP_WINDOW = 3


def ddp_steps(rank: int) -> list[Step]:
    """Reproducible steps of one rank; rank 1 alone ever sees TEXT queries."""
    rng = np.random.default_rng(100 + rank)
    out: list[Step] = []
    for _ in range(7):
        codes = [1, 2, 3] + ([4] if rank == 1 else [])
        per: PerModality = {}
        for c in codes:
            if rng.random() < 0.7:
                r = int(rng.integers(0, 9))
                per[c] = (r, int(rng.integers(0, r + 1)))
        out.append(((20, int(rng.integers(0, 21))), per))
    return out


def _ddp_worker(rank: int) -> dict[str, object]:
    meter = PairCoverageMeter(window=DDP_WINDOW)
    gathered, local, lines = [], [], []
    for i, step in enumerate(ddp_steps(rank)):
        meter.update(as_result(step, tensors=bool(i % 2)))
        gathered.append(meter.compute_per_modality(gather=True))
        local.append(meter.compute_per_modality())
        lines.append(meter.per_modality_log_line(gather=True))
    return {"gathered": gathered, "local": local, "lines": lines}


@pytest.mark.ddp
def test_per_modality_gather_sums_both_ranks_windows() -> None:
    from tests.distributed.launch import run_on_ranks

    results = run_on_ranks(_ddp_worker, 2)
    steps = [ddp_steps(r) for r in range(2)]
    for i in range(len(steps[0])):
        union = [s for r in range(2) for s in steps[r][: i + 1][-DDP_WINDOW:]]
        expected = ref_per_modality(union, seen_in(steps[0][: i + 1] + steps[1][: i + 1]))
        for rank, res in enumerate(results):
            assert same_dict(res["gathered"][i], expected), (rank, i)
            assert res["lines"][i] == line_of(expected)
            mine = steps[rank][: i + 1]
            assert same_dict(res["local"][i], ref_per_modality(mine[-DDP_WINDOW:], seen_in(mine)))
    assert "TEXT" in results[0]["gathered"][-1]  # a modality seen on rank 1 only


@pytest.mark.gpu
def test_per_modality_cuda_updates_without_a_host_sync() -> None:
    dev = torch.device("cuda")
    m = PairCoverageMeter(window=2)
    steps: list[Step] = [((9, 1), {1: (4, 1), 4: (5, 0)}), ((6, 2), {1: (3, 3)}), ((4, 0), None)]
    results = [as_result(s, tensors=True) for s in steps]
    on_dev = [
        FakePerModalityResult(
            r.rows.to(dev),
            r.rows_without_positive.to(dev),
            {
                k: FakeQueryResult(v.query_rows.to(dev), v.query_rows_without_positive.to(dev))
                for k, v in r.per_modality.items()
            },
        )
        if isinstance(r, FakePerModalityResult)
        else SimpleNamespace(
            rows=r.rows.to(dev), rows_without_positive=r.rows_without_positive.to(dev)
        )
        for r in results
    ]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for r in on_dev:
            m.update(r)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert m.device.type == "cuda"
    assert same_dict(m.compute_per_modality(), ref_per_modality(steps[-2:], seen_in(steps)))
    bad = PairCoverageMeter()
    bad.update(
        FakePerModalityResult(
            torch.tensor(3, device=dev),
            torch.tensor(0, device=dev),
            {"nir": FakeQueryResult(torch.tensor(1, device=dev), torch.tensor(2, device=dev))},
        )
    )
    for read in (bad.compute, bad.compute_per_modality, bad.per_modality_log_line):
        with pytest.raises(ValueError, match="rows_without_positive > rows"):
            read()
