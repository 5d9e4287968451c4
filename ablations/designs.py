"""Fractional designs for factorial suites: which combinations of the full grid ``design: {fraction: R}`` runs.

About 1/R of them: a regular two-level fraction (``pydoe.fracfact``) when every factor has two levels and R is a power
of two, else a generalized subset design (``pydoe.gsd``). The rows are the full grid's trials (same folders and
hashes), so fractions and full grids share results. Needs ``pip install -e ".[design]"``.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Sequence


def select(levels: Sequence[int], reduction: int) -> list[tuple[int, ...]]:
    """The level indices (one tuple per run, in grid order) of the design for factors with `levels` levels."""
    if reduction == 1:
        return list(itertools.product(*(range(k) for k in levels)))
    import numpy as np

    try:
        import pydoe as doe
    except ImportError:
        try:
            import pyDOE3 as doe
        except ImportError:
            raise ImportError('fractional designs need pyDOE: pip install -e ".[design]"') from None
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
