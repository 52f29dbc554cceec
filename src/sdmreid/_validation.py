"""Argument checks shared by the components (private; error messages name the argument)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["check_bool", "check_has_data", "check_int", "int64_array"]


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``.

    Raises:
        TypeError: ``value`` is not an ``int`` / NumPy integer (bools are rejected).
        ValueError: ``value < minimum``.

    Example:
        >>> check_int("num_instances", 4, 1)
        4
        >>> check_int("num_instances", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: num_instances must be >= 1, got 0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool (Python or NumPy); anything else is a ``TypeError``.

    A truthy string such as ``"no"`` or a ``0``/``1`` would otherwise switch an option silently.

    Example:
        >>> check_bool("gather", False)
        False
        >>> check_bool("gather", "no")
        Traceback (most recent call last):
        ...
        TypeError: gather must be a bool (True or False), got str 'no'
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}"
        )
    return bool(value)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def int64_array(values: object, name: str) -> npt.NDArray[Any]:
    """``np.asarray(values)``, refusing integers that do not fit in ``int64`` by name.

    NumPy holds such integers as an object array (beyond ``±2**64``), a ``uint64`` array, or even
    a ``float64`` array (``[2**63, 1]``): a later conversion would fail deep inside, wrap around
    or round. A ``uint64`` array whose values fit is returned as ``int64``; any other dtype is
    returned as NumPy makes it, for the caller's own dtype checks.

    Raises:
        ValueError: an integer outside ``-2**63 .. 2**63 - 1``.

    Example:
        >>> int64_array([3, 1], "labels").tolist()
        [3, 1]
        >>> int64_array([2**70, 1], "labels")
        Traceback (most recent call last):
        ...
        ValueError: labels must fit in int64 (-2**63 .. 2**63 - 1), got 1180591620717411303424
    """
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    if arr.dtype.kind == "u":
        if arr.size and int(arr.max()) > _INT64_MAX:
            raise ValueError(
                f"{name} must fit in int64 (-2**63 .. 2**63 - 1), got {int(arr.max())}"
            )
        return arr.astype(np.int64)
    if arr.dtype.kind in "Of" and not isinstance(values, np.ndarray):
        # Only Python sequences can hold integers NumPy could not represent exactly.
        for v in arr.ravel() if arr.dtype.kind == "O" else _flat(values):
            if (
                isinstance(v, (int, np.integer))
                and not isinstance(v, (bool, np.bool_))
                and not _INT64_MIN <= int(v) <= _INT64_MAX
            ):
                raise ValueError(f"{name} must fit in int64 (-2**63 .. 2**63 - 1), got {int(v)}")
    return arr


def _flat(values: object) -> list[object]:
    """The scalars of a (nested) list or tuple, in order."""
    if isinstance(values, (list, tuple)):
        return [x for v in values for x in _flat(v)]
    return [values]


def check_has_data(x: torch.Tensor, name: str) -> None:
    """Refuse a tensor on the ``meta`` device (a shape without values) with a ``ValueError``.

    Example:
        >>> import torch
        >>> check_has_data(torch.empty(2, device="meta"), "query")
        Traceback (most recent call last):
        ...
        ValueError: query is on meta, a device without data: pass a tensor that holds values
    """
    if x.is_meta:
        raise ValueError(
            f"{name} is on meta, a device without data: pass a tensor that holds values"
        )
