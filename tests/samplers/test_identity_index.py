"""IdentityIndex against a dict-of-lists reference."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given

from sdmreid.samplers import build_identity_index
from sdmreid.samplers.identity_index import stable_argsort_small
from tests.strategies import label_modality_layouts


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
