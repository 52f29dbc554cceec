"""IdentityIndex against a dict-of-lists reference."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given

from sdmreid.samplers import as_label_array, build_identity_index
from sdmreid.samplers.identity_index import stable_argsort_small
from tests.strategies import label_modality_layouts, label_modality_set_layouts


@given(label_modality_layouts(max_ids=15, max_per_id=15))
def test_index_matches_dict_of_lists(layout: tuple[np.ndarray, np.ndarray]) -> None:
    labels, mods = layout
    ref: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i, (lab, m) in enumerate(zip(labels.tolist(), mods.tolist(), strict=True)):
        ref[lab][0 if m == 0 else 1].append(i)
    idx = build_identity_index(labels, mods)
    assert idx.identities.tolist() == sorted(ref)
    for i, lab in enumerate(sorted(ref)):
        rgb, non = ref[lab]
        block = idx.order[idx.starts[i] : idx.starts[i] + idx.counts[i]].tolist()
        assert block == rgb + non
        assert idx.rgb_counts[i] == len(rgb)
        assert bool(idx.pairable[i]) == (bool(rgb) and bool(non))
    assert [idx.identities[j] for j in idx.sample_identity] == labels.tolist()
    assert idx.sample_is_rgb.tolist() == (mods == 0).tolist()


@given(label_modality_set_layouts(max_ids=15, max_per_id=15))
def test_index_of_modality_sets_matches_dict_of_lists(
    layout: tuple[np.ndarray, np.ndarray],
) -> None:
    labels, mask = layout
    # per label: items carrying RGB only, RGB and a non-RGB modality, no RGB
    ref: dict[int, tuple[list[int], list[int], list[int]]] = defaultdict(lambda: ([], [], []))
    for i, (lab, row) in enumerate(zip(labels.tolist(), mask.tolist(), strict=True)):
        rgb, non = row[0], any(row[1:])
        ref[lab][0 if rgb and not non else 1 if rgb else 2].append(i)
    idx = build_identity_index(labels, mask)
    assert idx.identities.tolist() == sorted(ref)
    for i, lab in enumerate(sorted(ref)):
        rgb_only, both, no_rgb = ref[lab]
        block = idx.order[idx.starts[i] : idx.starts[i] + idx.counts[i]].tolist()
        assert block == rgb_only + both + no_rgb
        assert idx.rgb_counts[i] == len(rgb_only) + len(both)
        assert idx.both_counts[i] == len(both)
        assert idx.non_rgb_counts[i] == len(both) + len(no_rgb)
        assert bool(idx.pairable[i]) == (bool(rgb_only or both) and bool(both or no_rgb))
    assert idx.sample_is_rgb.tolist() == mask[:, 0].tolist()
    assert idx.sample_is_non_rgb.tolist() == mask[:, 1:].any(axis=1).tolist()
    assert idx.sample_modalities.tolist() == mask.tolist()
    assert not idx.sample_modalities.flags.writeable


def test_index_accepts_tensors_strings_and_sparse_labels() -> None:
    labels = torch.tensor([10**9, 5, 10**9])
    idx = build_identity_index(labels, ["IR", "visible", "rgb"])
    assert idx.identities.tolist() == [5, 10**9]
    assert idx.order.tolist() == [1, 2, 0]
    idx2 = build_identity_index(np.array(["b", "a", "b"]), torch.tensor([0, 1, 1]))
    assert idx2.identities.tolist() == ["a", "b"]
    assert idx2.pairable.tolist() == [False, True]


@pytest.mark.parametrize(
    ("labels", "mods", "exc", "match"),
    [
        ([], [], ValueError, "empty"),
        ([0, 1], [0], ValueError, "same length"),
        ([0.5, 1.0], [0, 0], TypeError, "labels"),
        (torch.ones(2), [0, 0], TypeError, "labels"),
        ([[0, 1]], [0, 0], ValueError, "1-D"),
        ([0, 1], ["rgb", "depth"], ValueError, "unknown modality"),
        ([0, 1], [("rgb", "text"), ("depth",)], ValueError, r"modalities\[1\]: unknown"),
        ([0, 1], [("rgb", "text"), set()], ValueError, r"modalities\[1\] is an empty"),
        ([0, 1], np.ones((2, 6), dtype=bool), ValueError, "5 columns"),
        ([0, 1], np.ones((2, 5), dtype=np.int8), ValueError, "bool mask"),
    ],
)
def test_index_rejects_bad_input(labels: object, mods: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        build_identity_index(labels, mods)  # type: ignore[arg-type]


def test_stable_argsort_small_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for high in (3, 70_000, 2**31):
        keys = rng.integers(0, high, 5_000)
        assert stable_argsort_small(keys).tolist() == np.argsort(keys, kind="stable").tolist()


MIXED_LABELS = [
    [0, "0", 1, "1"],
    ("a", 1),
    [True, 1, 2],
    [np.int64(3), "3"],
    [np.str_("a"), 2],
]


@pytest.mark.parametrize("labels", MIXED_LABELS, ids=repr)
def test_mixed_label_types_raise_type_error(labels: list[object]) -> None:
    # NumPy would silently turn [0, "0"] into the strings ["0", "0"]: one identity, not two.
    with pytest.raises(TypeError, match="labels"):
        as_label_array(labels)
    with pytest.raises(TypeError, match="labels"):
        build_identity_index(labels, None)
    with pytest.raises(TypeError, match="labels"):
        build_identity_index(iter(labels), None)


def test_uniform_label_types_are_accepted() -> None:
    assert as_label_array([np.int64(3), 1, np.int32(3)]).tolist() == [3, 1, 3]
    assert as_label_array(("b", np.str_("a"))).tolist() == ["b", "a"]
    assert as_label_array(iter([2, 2])).tolist() == [2, 2]


def test_identity_and_sample_counts() -> None:
    idx = build_identity_index([5, 5, 9, 7], None)
    assert (idx.identity_count, idx.sample_count) == (3, 4)
    assert not hasattr(idx, "num_identities")  # P only: a sampler argument, never a dataset count


@pytest.mark.parametrize(
    "labels",
    [[2**70, 1], [-(2**70), 1], [2**63, 1], [2**64], np.array([2**63, 1], dtype=np.uint64)],
    ids=["2**70", "-2**70", "2**63 with 1", "2**64", "uint64 array"],
)
def test_labels_beyond_int64_are_a_value_error_naming_labels(labels: object) -> None:
    # NumPy would hold these as objects, floats ([2**63, 1] becomes float64) or wrapping uint64
    with pytest.raises(ValueError, match="labels must fit in int64"):
        as_label_array(labels)
    with pytest.raises(ValueError, match="labels must fit in int64"):
        build_identity_index(labels, None)


def test_uint64_labels_that_fit_are_accepted_as_int64() -> None:
    out = as_label_array(np.array([2**63 - 1, 3], dtype=np.uint64))
    assert out.dtype == np.int64 and out.tolist() == [2**63 - 1, 3]
