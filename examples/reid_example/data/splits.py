"""Identity-disjoint train/validation/test splits of a real data set's records.

Real layouts name each record's split (``train``/``test``, sometimes ``val``). :func:`make_splits`
groups the records, checks that no identity is in two splits, carves a validation split from the
*training* identities when the layout has none (so checkpoint selection never looks at test
data), and numbers the training identities ``0..n-1`` for the classifier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from reid_example.data.records import ReIDRecord, build_label_map, remap_labels

__all__ = ["DataSplits", "make_splits"]


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """Identity-disjoint record lists.

    Attributes:
        train: training records, ``label = label_map[identity]``.
        val: validation records, ``label = -1`` (their dataset numbers its own identities).
        test: test records, ``label = -1``.
        label_map: training identity → contiguous class id ``0..n-1``.

    Example:
        >>> recs = [ReIDRecord("a.png", None, 7, -1, 0, 1, "train"),
        ...         ReIDRecord("b.png", None, 9, -1, 0, 1, "test")]
        >>> s = make_splits(recs, val_fraction=0.0)
        >>> [r.label for r in s.train], [r.label for r in s.test], s.label_map
        ([0], [-1], {7: 0})
    """

    train: list[ReIDRecord]
    val: list[ReIDRecord]
    test: list[ReIDRecord]
    label_map: dict[int, int]


def make_splits(
    records: Sequence[ReIDRecord],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplits:
    """Group records by their ``split`` field; carve a validation split when none is given.

    Records whose split is ``"val"`` form the validation set. When there are none, a seeded
    ``val_fraction`` of the training identities (at least one when ``val_fraction > 0`` and
    there are at least two) is moved to validation, never test identities.

    Args:
        records: the records of a layout, each with ``split`` in ``train``/``val``/``test``.
        val_fraction: fraction of training identities moved to validation, in ``[0, 1)``.
        seed: seed of the identities chosen for validation.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``, an unknown split name, or an identity
            in more than one split.

    Example:
        >>> recs = [ReIDRecord(f"{i}.png", None, i // 2, -1, i % 2, 1, "train")
        ...         for i in range(20)]
        >>> s = make_splits(recs, val_fraction=0.2, seed=0)
        >>> len({r.identity for r in s.train}), len({r.identity for r in s.val}), len(s.test)
        (8, 2, 0)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by: dict[str, list[ReIDRecord]] = {"train": [], "val": [], "test": []}
    for r in records:
        if r.split not in by:
            raise ValueError(f"unknown split {r.split!r} (expected train/val/test)")
        by[r.split].append(r)
    owners: dict[int, str] = {}
    for name, recs in by.items():
        for r in recs:
            if owners.setdefault(r.identity, name) != name:
                raise ValueError(
                    f"identity {r.identity} appears in splits {owners[r.identity]!r} and {name!r}"
                )
    train, val = by["train"], by["val"]
    if not val and val_fraction > 0:
        ids = np.asarray(sorted({r.identity for r in train}), dtype=np.int64)
        if ids.size >= 2:
            k = min(ids.size - 1, max(1, round(val_fraction * ids.size)))
            chosen = set(np.random.default_rng(seed).permutation(ids)[:k].tolist())
            val = [dataclasses.replace(r, split="val") for r in train if r.identity in chosen]
            train = [r for r in train if r.identity not in chosen]
    train, label_map = remap_labels(train, build_label_map(r.identity for r in train))
    unlabelled_val = [dataclasses.replace(r, label=-1) for r in val]
    test = [dataclasses.replace(r, label=-1) for r in by["test"]]
    return DataSplits(train, unlabelled_val, test, label_map)
