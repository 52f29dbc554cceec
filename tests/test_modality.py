from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdmreid
from sdmreid import Modality, parse_modality
from sdmreid.modality import (
    MODALITY_ALIASES,
    as_modality_array,
    as_modality_sets,
    as_modality_tensor,
    is_non_rgb,
    is_rgb,
)
from tests.strategies import alias_any_case, modality_like

# The vocabulary written out independently of the implementation (DESIGN §3).
EXPECTED = {
    "rgb": 0, "vis": 0, "visible": 0,
    "nir": 1, "ir": 1, "infrared": 1, "thermal": 1,
    "sk": 2, "sketch": 2,
    "cp": 3, "cpencil": 3, "colorpencil": 3,
    "text": 4, "txt": 4, "caption": 4,
}  # fmt: skip


def test_enum_values_are_the_contract() -> None:
    assert [(m.name, int(m)) for m in Modality] == [
        ("RGB", 0), ("NIR", 1), ("SKETCH", 2), ("CPENCIL", 3), ("TEXT", 4)
    ]  # fmt: skip
    assert issubclass(Modality, int)


def test_alias_table_is_exactly_the_contract() -> None:
    assert {k: int(v) for k, v in MODALITY_ALIASES.items()} == EXPECTED


def test_public_exports() -> None:
    assert sdmreid.Modality is Modality
    assert sdmreid.parse_modality is parse_modality
    assert isinstance(sdmreid.__version__, str) and sdmreid.__version__.count(".") == 2


@given(alias_any_case)
def test_every_alias_in_every_case_parses(alias: str) -> None:
    assert parse_modality(alias) == EXPECTED[alias.lower()]


@given(st.text(alphabet=string.ascii_letters + string.digits + " _-\u212a\u0130ſ", max_size=12))
def test_other_strings_are_rejected(s: str) -> None:
    if s.isascii() and s.lower() in EXPECTED:
        assert parse_modality(s) == EXPECTED[s.lower()]
        return
    with pytest.raises(ValueError, match="accepted") as info:
        parse_modality(s)
    # The message lists the accepted names.
    for alias in EXPECTED:
        assert alias in str(info.value)


def test_non_ascii_lookalikes_are_rejected() -> None:
    # U+212A KELVIN SIGN lower-cases to 'k'; a lookalike must not pass as 'sk'.
    with pytest.raises(ValueError):
        parse_modality("s\u212a")
    with pytest.raises(ValueError):
        parse_modality("rgb ")


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
def test_int_forms(code: int) -> None:
    assert parse_modality(code) == code
    assert parse_modality(np.int16(code)) == code
    assert parse_modality(torch.tensor(code)) == code
    assert parse_modality(Modality(code)) is Modality(code)


@pytest.mark.parametrize("bad", [-1, 5, 99])
def test_out_of_range_int(bad: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.4"):
        parse_modality(bad)


@pytest.mark.parametrize("bad", [True, 1.0, None, b"rgb", torch.tensor([1, 2]), torch.tensor(1.0)])
def test_wrong_types(bad: object) -> None:
    with pytest.raises(TypeError):
        parse_modality(bad)


@given(st.lists(modality_like, max_size=40))
def test_vectorised_equals_elementwise(values: list[object]) -> None:
    expected = np.asarray([int(parse_modality(v)) for v in values], dtype=np.int64)
    got = as_modality_array(values)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(as_modality_array(np.asarray(values, dtype=object)), expected)
    t = as_modality_tensor(values)
    assert t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), expected)
    np.testing.assert_array_equal(is_rgb(values), expected == 0)
    np.testing.assert_array_equal(is_non_rgb(values), expected != 0)


@given(st.lists(st.integers(0, 4), max_size=40))
def test_int_arrays_and_tensors(codes: list[int]) -> None:
    arr = np.asarray(codes, dtype=np.int32)
    np.testing.assert_array_equal(as_modality_array(arr), codes)
    t = torch.tensor(codes, dtype=torch.int64)
    np.testing.assert_array_equal(as_modality_array(t), codes)
    mask = is_rgb(t)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    assert mask.tolist() == [c == 0 for c in codes]


def test_vectorised_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="modalities"):
        as_modality_array(np.array([0, 7]))
    with pytest.raises(ValueError, match="mods"):
        as_modality_array(torch.tensor([0, -1]), name="mods")
    with pytest.raises(ValueError, match="1-D"):
        as_modality_array(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        as_modality_array(np.array([0.0, 1.0]))
    with pytest.raises(TypeError):
        as_modality_array([0, True])
    with pytest.raises(ValueError, match="accepted"):
        as_modality_array(["rgb", "depth"])


def test_empty() -> None:
    assert as_modality_array([]).shape == (0,)
    assert as_modality_array(np.array([], dtype=object)).shape == (0,)
    assert as_modality_tensor([]).shape == (0,)


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("sdmreid").joinpath("py.typed").is_file()


# --- modality sets: several modalities per item -----------------------------------------------


def expected_code(value: object) -> int:
    """The code a single modality value names, from the contract table (not the parser)."""
    return EXPECTED[value.lower()] if isinstance(value, str) else int(value)  # type: ignore[call-overload]


@st.composite
def per_item_collections(draw: st.DrawFn) -> tuple[list[object], np.ndarray]:
    """Per-item collections (tuple / list / set / bare value) and the mask they name."""
    items: list[object] = []
    rows: list[list[bool]] = []
    for _ in range(draw(st.integers(0, 12))):
        codes = draw(st.lists(st.integers(0, 4), min_size=1, max_size=5, unique=True))
        forms = [
            draw(st.sampled_from([Modality(c), c, *(a for a, v in EXPECTED.items() if v == c)]))
            for c in codes
        ]
        container = draw(st.sampled_from([tuple, list, set, "bare"]))
        if container == "bare":
            items.append(forms[0] if len(forms) == 1 else tuple(forms))
        else:
            items.append(container(forms))  # type: ignore[operator]
        rows.append([m in codes for m in range(5)])
    return items, np.asarray(rows, dtype=bool).reshape(-1, 5)


@given(per_item_collections())
def test_sets_from_per_item_collections(case: tuple[list[object], np.ndarray]) -> None:
    items, expected = case
    got = as_modality_sets(items)
    assert got.dtype == np.bool_ and got.shape == (len(items), 5)
    np.testing.assert_array_equal(got, expected)
    objects = np.empty(len(items), dtype=object)
    objects[:] = items
    np.testing.assert_array_equal(as_modality_sets(objects), expected)
    for single in items:  # every item on its own, as a one-item dataset
        row = as_modality_sets([single])
        codes = single if isinstance(single, (tuple, list, set)) else [single]
        assert sorted(np.flatnonzero(row[0]).tolist()) == sorted(map(expected_code, codes))


@given(st.lists(modality_like, max_size=30))
def test_one_modality_per_item_is_one_hot(values: list[object]) -> None:
    expected = np.zeros((len(values), 5), dtype=bool)
    for i, v in enumerate(values):
        expected[i, expected_code(v)] = True
    np.testing.assert_array_equal(as_modality_sets(values), expected)
    codes = [expected_code(v) for v in values]
    np.testing.assert_array_equal(as_modality_sets(np.asarray(codes, dtype=np.int16)), expected)
    np.testing.assert_array_equal(
        as_modality_sets(torch.tensor(codes, dtype=torch.int64)), expected
    )


@given(st.lists(st.integers(1, 31), max_size=30))
def test_bitmasks(bits: list[int]) -> None:
    expected = np.asarray([[(b >> m) & 1 == 1 for m in range(5)] for b in bits], dtype=bool)
    np.testing.assert_array_equal(as_modality_sets(bits, bitmask=True), expected.reshape(-1, 5))
    np.testing.assert_array_equal(
        as_modality_sets(torch.tensor(bits, dtype=torch.int64), bitmask=True),
        expected.reshape(-1, 5),
    )


def test_bool_masks_are_copied() -> None:
    mask = np.array([[True, False, False, False, True], [False, True, True, False, False]])
    got = as_modality_sets(mask)
    np.testing.assert_array_equal(got, mask)
    got[0, 0] = False
    assert mask[0, 0]  # the caller's array is not aliased
    np.testing.assert_array_equal(as_modality_sets(torch.from_numpy(mask)), mask)


@pytest.mark.parametrize(
    ("values", "kwargs", "exc", "match"),
    [
        ([("rgb", "depth")], {}, ValueError, r"modalities\[0\]: unknown modality 'depth'"),
        (["rgb", "depth"], {}, ValueError, "modalities: unknown modality 'depth'"),
        ([("rgb",), ()], {}, ValueError, r"modalities\[1\] is an empty modality set"),
        ([set()], {"name": "mods"}, ValueError, r"mods\[0\] is an empty modality set"),
        (np.zeros((2, 5), dtype=bool), {}, ValueError, r"modalities\[0\] has no modality"),
        (np.ones((2, 4), dtype=bool), {}, ValueError, "modalities must have 5 columns"),
        (np.eye(5, dtype=np.int64), {}, ValueError, "modalities: a 2-D array must be a"),
        (np.eye(5, dtype=np.float32), {}, ValueError, "modalities: a 2-D array must be a"),
        (torch.eye(5, dtype=torch.int64), {}, ValueError, "modalities: a 2-D array must be a"),
        (np.ones((2, 2, 5), dtype=bool), {}, ValueError, "modalities must be 1-D"),
        ([[1, 0, 0, 0, 1]], {}, ValueError, r"modalities\[0\] names a modality more than once"),
        ([("rgb", "visible")], {}, ValueError, "more than once"),
        ([("rgb", True)], {}, TypeError, r"modalities\[0\]: modality must be"),
        ([1.5], {}, TypeError, r"modalities\[0\] must be a modality or a collection"),
        ([0, 7], {}, ValueError, "unknown modality code 7"),
        ([0, 3], {"bitmask": True}, ValueError, r"modalities\[0\] is an empty modality set"),
        ([1, 32], {"bitmask": True}, ValueError, r"modalities\[1\] is bitmask 32"),
        ([-1], {"bitmask": True}, ValueError, r"modalities\[0\] is bitmask -1"),
        ([1, True], {"bitmask": True}, TypeError, "bitmasks must be integers"),
        (["rgb"], {"bitmask": True}, TypeError, "bitmasks must be integers"),
        (np.ones((2, 5), dtype=bool), {"bitmask": True}, ValueError, "one integer per item"),
        ([1], {"bitmask": 1}, TypeError, "bitmask must be a bool"),
        (torch.tensor([1], device="meta"), {}, ValueError, "modalities is on meta"),
    ],
)
def test_bad_modality_sets_name_the_argument(
    values: object, kwargs: dict[str, object], exc: type, match: str
) -> None:
    with pytest.raises(exc, match=match):
        as_modality_sets(values, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "items",
    [[(1,), (True,)], [(1,), (1.0,)], [("ir",), [np.True_]], [1, (2,), True], [{4}, {4.0}]],
    ids=repr,
)
def test_parsed_items_do_not_let_equal_refused_values_through(items: list[object]) -> None:
    # True == 1 == 1.0: the cache of parsed items must not hand a refused value the entry of
    # an accepted one that compares equal.
    with pytest.raises(TypeError, match=r"modalities\[\d\]"):
        as_modality_sets(items)


def test_as_modality_sets_is_exported() -> None:
    assert sdmreid.as_modality_sets is as_modality_sets
    assert "as_modality_sets" in sdmreid.__all__
