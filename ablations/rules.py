"""The harness's one way to check a value: a `Rule` says what is wrong with a value (None when it is allowed), and
`check` turns that into a ValueError naming the value. Torch-free.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, Optional

Rule = Callable[[Any], Optional[str]]  # None when a value is allowed, else what it must be
MARGIN = 0.01  # the default equivalence margin, in test-accuracy units (``--margin``)


def integer(low: int, why: str = "", high: Optional[int] = None) -> Rule:
    """An integer (not a bool) >= `low` and at most `high`; `why` is added to the message."""

    def rule(value: Any) -> Optional[str]:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer >= {low}{why}"
        if high is not None and value > high:
            return f"must be <= {high}{why}"
        return None if value >= low else f"must be >= {low}{why}"

    return rule


def finite(low: float, inclusive: bool = False, high: Optional[float] = None) -> Rule:
    """A finite number (not a bool) above `low` (or equal to it when `inclusive`) and at most `high`."""
    bounds = f"{'>=' if inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def rule(value: Any) -> Optional[str]:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if number and (value >= low if inclusive else value > low) and (high is None or value <= high):
            return None
        return f"must be a finite number {bounds}"

    return rule


def optional(rule: Rule) -> Rule:
    """`rule`, or None."""
    return lambda value: None if value is None else rule(value)


def one_of(choices: tuple[str, ...]) -> Rule:
    return lambda value: None if value in choices else f"is not one of {', '.join(choices)}"


def check(name: str, value: Any, rule: Rule, hint: str = "") -> Any:
    """`value` if `rule` allows it, else ValueError ``"{name}={value!r} {what it must be}{hint}"``."""
    problem = rule(value)
    if problem:
        raise ValueError(f"{name}={value!r} {problem}{hint}")
    return value


def check_margin(margin: float) -> float:
    """`margin` itself when it is a difference of accuracy in [0, 1) (an equivalence margin), else ValueError."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin {margin!r}: give a difference of accuracy in [0, 1), e.g. {MARGIN}")
    return margin


def margin_arg(text: str) -> float:
    """``--margin``'s argparse type: `check_margin` of the number `text`."""
    try:
        return check_margin(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a difference of accuracy in [0, 1), e.g. {MARGIN}") from None
