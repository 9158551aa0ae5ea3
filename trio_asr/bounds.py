"""Validators of bounded numbers, for the attrs classes of every layer.

Each checks one field and raises ValueError (TypeError for a value that is
not a number) with a one-line message naming the field, so that a setting,
a limit and a client's field are refused in the same words.  The bounds
themselves live beside the concept they bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["Validator", "at_least", "between", "off_or_between", "positive"]

Validator = Callable[[Any, Any, Any], None]


def _number(attribute: Any, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number, not {type(value).__name__}")
    return value


def _show(value: object) -> str:
    """``repr(value)`` cut to one short line (a client's integer may have thousands of digits)."""
    try:
        text = repr(value)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def positive(_instance: Any, attribute: Any, value: Any) -> None:
    """A number above 0."""
    if not _number(attribute, value) > 0:
        raise ValueError(f"{attribute.name} must be positive, got {_show(value)}")


def at_least(low: float) -> Validator:
    """A number >= ``low``."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if not _number(attribute, value) >= low:
            raise ValueError(f"{attribute.name} must be >= {low:g}, got {_show(value)}")

    return check


def between(low: float, high: float, *, optional: bool = False) -> Validator:
    """A finite number in [low, high] (or None, when ``optional``)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is None and optional:
            return
        number = _number(attribute, value)
        if not (low <= number <= high and math.isfinite(number)):  # compared first: an int may be beyond floats
            raise ValueError(f"{attribute.name} must be between {low:g} and {high:g}, got {_show(value)}")

    return check


def off_or_between(low: float, high: float) -> Validator:
    """0 (off) or a number in [low, high]."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if _number(attribute, value) != 0 and not low <= value <= high:
            raise ValueError(f"{attribute.name} must be 0 (off) or between {low:g} and {high:g}, got {_show(value)}")

    return check
