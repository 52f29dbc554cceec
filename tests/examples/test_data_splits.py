"""make_splits: identity-disjoint train/val/test record lists, validation from train only."""

from __future__ import annotations

import pytest
from reid_example.data import DataSplits, ReIDRecord, make_splits


def _recs(ids, split="train"):
    return [
        ReIDRecord(f"{i}_{k}.png", None, i, -1, k % 2, 1 + k, split) for i in ids for k in range(4)
    ]


def test_make_splits_carves_val_from_train_only():
    recs = _recs(range(10, 30)) + _recs(range(100, 105), "test")
    s = make_splits(recs, val_fraction=0.25, seed=1)
    assert isinstance(s, DataSplits)
    tr, va, te = ({r.identity for r in x} for x in (s.train, s.val, s.test))
    assert len(va) == 5 and len(tr) == 15 and te == set(range(100, 105))
    assert not tr & va and not tr & te and not va & te
    assert sorted(s.label_map) == sorted(tr) and sorted(s.label_map.values()) == list(range(15))
    assert all(r.label == s.label_map[r.identity] for r in s.train)
    assert all(r.label == -1 for r in s.val + s.test)
    assert all(r.split == "val" for r in s.val)
    assert make_splits(recs, val_fraction=0.25, seed=1) == s
    assert make_splits(recs, val_fraction=0.25, seed=2) != s


def test_make_splits_keeps_a_given_validation_split():
    recs = _recs(range(10, 30)) + _recs([7], "val")
    given = make_splits(recs)
    assert {r.identity for r in given.val} == {7}
    assert {r.identity for r in given.train} == set(range(10, 30))


@pytest.mark.parametrize(
    ("n_ids", "fraction", "expected"), [(1, 0.5, 0), (2, 0.01, 1), (4, 0.9, 3)]
)
def test_make_splits_validation_size_bounds(n_ids, fraction, expected):
    """At least one validation identity when possible, and at least one training identity left."""
    s = make_splits(_recs(range(n_ids)), val_fraction=fraction)
    assert len({r.identity for r in s.val}) == expected
    assert len({r.identity for r in s.train}) == n_ids - expected
    assert make_splits(_recs(range(n_ids)), val_fraction=0.0).val == []


def test_make_splits_errors():
    recs = _recs(range(10, 30))
    with pytest.raises(ValueError, match="identity 10"):
        make_splits(recs + _recs([10], "test"))
    with pytest.raises(ValueError, match="unknown split"):
        make_splits(_recs([1], "query"))
    with pytest.raises(ValueError, match="val_fraction"):
        make_splits(recs, val_fraction=1.0)
