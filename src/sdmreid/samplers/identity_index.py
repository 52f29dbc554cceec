"""Identity index: per-identity / per-modality groupings of a dataset's labels, built once.

:func:`build_identity_index` turns a dataset's ``labels`` and ``modalities`` (one entry per dataset
item, in dataset order) into an :class:`IdentityIndex` with a single stable sort (``O(N log N)``,
no Python loop over samples). The samplers in :mod:`sdmreid.samplers.pk` share it: they never
look at dataset items, only at these arrays.

An item may carry several modalities (:func:`sdmreid.modality.as_modality_sets`). What the
samplers need of it is whether it *carries RGB* and whether it *carries a non-RGB modality*; an
item that carries both (an RGB image with its caption, say) is a cross-modal pair on its own.

Layout of :attr:`IdentityIndex.order`: the dataset indices grouped by identity (identities in
ascending label order), and inside each identity three blocks, each in ascending dataset-index
order: the items carrying RGB only, the items carrying RGB and a non-RGB modality, the items
carrying no RGB. Identity ``i`` occupies ``order[starts[i] : starts[i] + counts[i]]``; the
``rgb_counts[i]`` items carrying RGB come first, the ``non_rgb_counts[i]`` items carrying a
non-RGB modality last, and the ``both_counts[i]`` items carrying both are where they overlap.
With one modality per item there are no items carrying both: RGB first, then the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from sdmreid._validation import check_has_data, int64_array
from sdmreid.modality import Modality, as_modality_sets

__all__ = ["IdentityIndex", "as_label_array", "build_identity_index", "stable_argsort_small"]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def _check_python_label_types(labels: list[Any] | tuple[Any, ...]) -> None:
    """Refuse a Python sequence mixing integers, strings and bools.

    NumPy would coerce such a mix without complaint (``[0, "0"]`` becomes the strings
    ``["0", "0"]``, ``[True, 2]`` the integers ``[1, 2]``), merging distinct identities.
    """
    kinds: set[str] = set()
    for t in set(map(type, labels)):
        if issubclass(t, bool | np.bool_):
            kinds.add("bool")
        elif issubclass(t, int | np.integer):
            kinds.add("int")
        elif issubclass(t, str):
            kinds.add("str")
        else:
            kinds.add(t.__name__)
    if len(kinds) > 1:
        raise TypeError(f"labels must be all integers or all strings, got a mix of {sorted(kinds)}")


def as_label_array(labels: Iterable[Any] | npt.ArrayLike | torch.Tensor) -> npt.NDArray[Any]:
    """Validate identity labels and return them as a 1-D NumPy array (integer or string dtype).

    Raises:
        TypeError: labels are floats or booleans, or mix types (e.g. ``[0, "0"]``).
        ValueError: labels are not 1-D, or hold integers beyond int64.

    Example:
        >>> from sdmreid.samplers import as_label_array
        >>> as_label_array([3, 1, 3]).tolist()
        [3, 1, 3]
        >>> as_label_array([0, "0"])
        Traceback (most recent call last):
        ...
        TypeError: labels must be all integers or all strings, got a mix of ['int', 'str']
    """
    if isinstance(labels, torch.Tensor):
        check_has_data(labels, "labels")
        if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise TypeError(f"labels tensor must have an integer dtype, got {labels.dtype}")
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        return labels.detach().to("cpu", torch.int64).numpy()
    if not isinstance(labels, np.ndarray):
        seq = labels if isinstance(labels, list | tuple) else list(labels)  # type: ignore[arg-type]
        _check_python_label_types(seq)
        labels = seq
    arr = int64_array(labels, "labels")  # refuses integers beyond int64 by name
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "U":
        return arr
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    raise TypeError(f"labels must be integers or strings, got dtype {arr.dtype}")


def stable_argsort_small(keys: npt.NDArray[np.integer[Any]]) -> IntArray:
    """Stable argsort of non-negative integer keys ``< 2**32`` using 16-bit radix passes.

    NumPy's stable sort is a radix sort for 16-bit keys (several times faster than its timsort
    on 64-bit keys), so wider keys are sorted by their low and then their high 16 bits.

    Example:
        >>> import numpy as np
        >>> from sdmreid.samplers.identity_index import stable_argsort_small
        >>> stable_argsort_small(np.array([70000, 3, 70000, 1])).tolist()
        [3, 1, 0, 2]
    """
    k = np.asarray(keys)
    if k.size == 0:
        return np.zeros(0, dtype=np.int64)
    top = int(k.max())
    if int(k.min()) < 0 or top >= 2**32:
        return np.argsort(k, kind="stable").astype(np.int64, copy=False)
    if top < 2**16:
        return np.argsort(k.astype(np.uint16), kind="stable").astype(np.int64, copy=False)
    k32 = k.astype(np.uint32)
    first = np.argsort((k32 & 0xFFFF).astype(np.uint16), kind="stable")
    second = np.argsort((k32[first] >> 16).astype(np.uint16), kind="stable")
    return first[second].astype(np.int64, copy=False)


def _dense_inverse(lab: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], IntArray]:
    """``np.unique(lab, return_inverse=True)``, by counting when integer labels span little."""
    if lab.dtype.kind in "iu":
        lo, hi = int(lab.min()), int(lab.max())
        span = hi - lo + 1
        if span <= 4 * lab.shape[0] + 1024:
            dense = (lab - lo).astype(np.int64, copy=False)
            present = np.bincount(dense, minlength=span) > 0
            remap = np.cumsum(present, dtype=np.int64) - 1
            identities = (np.flatnonzero(present) + lo).astype(lab.dtype)
            return identities, remap[dense]
    identities, inverse = np.unique(lab, return_inverse=True)
    return identities, inverse.reshape(-1).astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class IdentityIndex:
    """Per-identity index arrays of a dataset (see the module docstring for the layout).

    Attributes:
        identities: the distinct labels, ascending; identity ``i`` is ``identities[i]``.
        order: ``[N]`` dataset indices grouped by identity: inside each identity the items
            carrying RGB only, then those carrying RGB and a non-RGB modality, then the rest.
        starts: ``[I]`` offset of each identity's block in ``order``.
        counts: ``[I]`` samples per identity (all ``>= 1``).
        rgb_counts: ``[I]`` samples per identity that carry RGB (the first of its block).
        both_counts: ``[I]`` samples per identity that carry RGB and a non-RGB modality.
        sample_identity: ``[N]`` identity number (``0..I-1``) of each dataset index.
        sample_is_rgb: ``[N]`` whether each dataset index carries RGB.
        sample_is_non_rgb: ``[N]`` whether each dataset index carries a non-RGB modality.
        sample_modalities: ``[N, 5]`` bool, the modality set of each dataset index (column ``m``
            is ``Modality(m)``); all RGB when built without modalities.
        has_modalities: ``False`` when built without modalities (every sample then counts as
            RGB and no identity is pairable).

    Example:
        >>> from sdmreid.samplers import build_identity_index
        >>> idx = build_identity_index([7, 3, 7, 7], ["ir", "rgb", "rgb", "rgb"])
        >>> idx.identities.tolist(), idx.counts.tolist(), idx.rgb_counts.tolist()
        ([3, 7], [1, 3], [1, 2])
        >>> idx.order.tolist()  # identity 3, then identity 7: RGB (2, 3) before NIR (0)
        [1, 2, 3, 0]
        >>> idx.pairable.tolist()
        [False, True]
        >>> both = build_identity_index([0, 1], [("rgb", "text"), "rgb"])  # item 0 pairs alone
        >>> both.pairable.tolist(), both.both_counts.tolist()
        ([True, False], [1, 0])
    """

    identities: npt.NDArray[Any]
    order: IntArray
    starts: IntArray
    counts: IntArray
    rgb_counts: IntArray
    both_counts: IntArray
    sample_identity: IntArray
    sample_is_rgb: BoolArray
    sample_is_non_rgb: BoolArray
    sample_modalities: BoolArray
    has_modalities: bool

    @property
    def sample_count(self) -> int:
        """Number of dataset items ``N``."""
        return int(self.order.shape[0])

    @property
    def identity_count(self) -> int:
        """Number of distinct identities ``I`` in the dataset (not ``P``, the per-batch count)."""
        return int(self.counts.shape[0])

    @property
    def non_rgb_counts(self) -> IntArray:
        """``[I]`` samples per identity that carry a non-RGB modality (the last of its block)."""
        return self.counts - self.rgb_counts + self.both_counts

    @property
    def pairable(self) -> BoolArray:
        """``[I]`` identities with a sample carrying RGB and one carrying a non-RGB modality.

        The two may be one sample that carries both.
        """
        return (self.rgb_counts > 0) & (self.non_rgb_counts > 0)

    @property
    def position_identity(self) -> IntArray:
        """``[N]`` identity number of each position of :attr:`order` (non-decreasing)."""
        return self.sample_identity[self.order]


def build_identity_index(
    labels: Iterable[Any] | npt.ArrayLike | torch.Tensor,
    modalities: Iterable[object] | npt.ArrayLike | torch.Tensor | None,
) -> IdentityIndex:
    """Build the :class:`IdentityIndex` of a dataset from its label and modality arrays.

    Args:
        labels: one identity label per dataset item (integers or strings; sequence, NumPy array
            or tensor).
        modalities: the modality, or the modality set, of each dataset item, in any form
            :func:`sdmreid.modality.as_modality_sets` accepts (one modality per item, a
            ``[N, 5]`` bool array, per-item collections such as ``("rgb", "text")``), or
            ``None`` (all treated as RGB).

    Raises:
        ValueError: empty ``labels``, ``labels``/``modalities`` lengths differ, an unknown
            modality or an item without one.
        TypeError: labels of a non-integer, non-string type.

    Example:
        >>> from sdmreid.samplers import build_identity_index
        >>> build_identity_index([0, 0, 1], [0, 1, 0]).pairable.tolist()
        [True, False]
    """
    lab = as_label_array(labels)
    n = int(lab.shape[0])
    if n == 0:
        raise ValueError("labels must not be empty")
    if modalities is None:
        sets = np.zeros((n, len(Modality)), dtype=np.bool_)
        sets[:, Modality.RGB] = True
        has_mod = False
    else:
        sets = as_modality_sets(modalities, name="modalities")
        if sets.shape[0] != n:
            raise ValueError(
                f"labels and modalities must have the same length, got {n} and {sets.shape[0]}"
            )
        has_mod = True
    is_rgb = sets[:, Modality.RGB].copy()
    is_non = np.zeros(n, dtype=np.bool_)
    for m in Modality:  # column by column: much faster than .any(axis=1) over 4 columns
        if m != Modality.RGB:
            is_non |= sets[:, m]
    identities, inverse = _dense_inverse(lab)
    n_ids = int(identities.shape[0])
    # block inside the identity: 0 = RGB only, 1 = RGB and non-RGB, 2 = no RGB
    key = inverse * 3 + np.where(is_rgb, is_non.astype(np.int64), 2)
    order = stable_argsort_small(key)
    counts = np.bincount(inverse, minlength=n_ids).astype(np.int64)
    rgb_counts = np.bincount(inverse[is_rgb], minlength=n_ids).astype(np.int64)
    both_counts = np.bincount(inverse[is_rgb & is_non], minlength=n_ids).astype(np.int64)
    starts = np.zeros(n_ids, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    for arr in (order, starts, counts, rgb_counts, both_counts, inverse, is_rgb, is_non, sets):
        arr.setflags(write=False)
    return IdentityIndex(
        identities=identities,
        order=order,
        starts=starts,
        counts=counts,
        rgb_counts=rgb_counts,
        both_counts=both_counts,
        sample_identity=inverse,
        sample_is_rgb=is_rgb,
        sample_is_non_rgb=is_non,
        sample_modalities=sets,
        has_modalities=has_mod,
    )
