"""Argument checks shared by the components (private; error messages name the argument)."""

from __future__ import annotations

import numpy as np

__all__ = ["check_int"]


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
