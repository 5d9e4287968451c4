"""Fractional designs for factorial suites: which level combinations of the full grid a suite's ``design`` runs.
The report (`ablations.report.stats.factorial_effects`) says which effects a fraction cannot separate.

``design: full`` (the default) runs every combination. ``design: {fraction: R}`` runs about 1/R of them: a regular
two-level fraction (``pydoe.fracfact``) when every factor has two levels and R is a power of two, else a
generalized subset design (``pydoe.gsd``) for mixed levels. The selected combinations are rows of the full grid, so
their trials are the full grid's trials (same folders, same settings hashes): a fraction reuses full-grid results
in the same logdir and the other way round. Needs the optional extra ``pip install -e ".[design]"``.

To report a fraction on its own and compare its effects with a finished grid's: ``scripts/fraction_effects.py``.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

DOE_ADVICE = 'pip install -e ".[design]"'


def _pydoe() -> Any:
    try:
        import pydoe
    except ImportError:
        try:
            import pyDOE3 as pydoe
        except ImportError:
            raise ImportError(f"fractional designs need pyDOE: {DOE_ADVICE}") from None
    return pydoe


def select(levels: Sequence[int], reduction: int) -> list[tuple[int, ...]]:
    """The level indices (one tuple per run, in grid order) of the design for factors with `levels` levels."""
    if reduction == 1:
        return list(itertools.product(*(range(k) for k in levels)))
    doe = _pydoe()
    p = round(math.log2(reduction))
    if all(k == 2 for k in levels) and 2**p == reduction and p < len(levels):
        base = string.ascii_lowercase[: len(levels) - p]
        words = itertools.chain.from_iterable(itertools.combinations(base, r) for r in range(len(base), 1, -1))
        extra = ["".join(c) for c in words][:p]  # the longest words first: the highest resolution
        if len(extra) < p:
            raise ValueError(f"a 1/{reduction} fraction of {len(levels)} two-level factors has too few runs")
        rows = (doe.fracfact(" ".join([*base, *extra])) > 0).astype(int)
    else:
        try:
            rows = doe.gsd(list(levels), reduction)
        except ValueError as error:
            raise ValueError(
                f"no generalized subset design of levels {list(levels)} with reduction {reduction}: {error}"
            ) from None
    return sorted({tuple(int(v) for v in row) for row in np.atleast_2d(rows)})
