"""Fractional designs for factorial suites: which level combinations of the full grid a suite's ``design`` runs,
and which effects such a design cannot separate.

``design: full`` (the default) runs every combination. ``design: {fraction: R}`` runs about 1/R of them: a regular
two-level fraction (``pydoe.fracfact``) when every factor has two levels and R is a power of two, else a
generalized subset design (``pydoe.gsd``) for mixed levels. The selected combinations are rows of the full grid, so
their trials are the full grid's trials (same folders, same settings hashes): a fraction reuses full-grid results
in the same logdir and the other way round. Needs the optional extra ``pip install -e ".[design]"``.

To report a fraction on its own and compare its effects with a finished grid's: `ablations.report.fractions`.
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


def fraction_of(value: Any) -> int:
    """The reduction R of a suite's ``design`` value: 1 for ``full`` (or absent), R for ``{fraction: R}``.

    Raises:
        ValueError: for any other value.
    """
    if value in (None, "full"):
        return 1
    if isinstance(value, dict) and set(value) == {"fraction"}:
        r = value["fraction"]
        if not isinstance(r, bool) and isinstance(r, int) and r >= 1:
            return r
    raise ValueError(
        f"design {value!r} must be 'full' or {{fraction: R}} with an integer R >= 1 "
        "(R = 2: a half, 4: a quarter of the grid)"
    )


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


def model_matrix(
    runs: Sequence[Sequence[int]] | np.ndarray, levels: Sequence[int], interactions: bool = True
) -> np.ndarray:
    """Intercept, treatment dummies of every non-reference level and (with `interactions`) their pairwise
    products across factors: the columns `ablations.report.stats` fits, here on level indices."""
    table = np.asarray(runs)
    blocks = [[(table[:, f] == lv).astype(float) for lv in range(1, k)] for f, k in enumerate(levels)]
    columns = [np.ones(len(table))] + [c for b in blocks for c in b]
    if interactions:
        for a, b in itertools.combinations(blocks, 2):
            columns += [x * y for x in a for y in b]
    return np.column_stack(columns)


def contrasts(levels: Sequence[int], interactions: bool = True) -> dict[tuple[int, ...], np.ndarray]:
    """The report's effects as rows over `model_matrix`'s columns, averaged over the full grid (as
    `ablations.report.stats` defines them): key ``(f, level)`` for a main effect, ``(f, a, g, b)`` for an
    interaction."""
    grid = np.array(list(itertools.product(*(range(k) for k in levels))))
    x = model_matrix(grid, levels, interactions)

    def mean(**fixed: int) -> np.ndarray:
        mask = np.logical_and.reduce([grid[:, int(f[1:])] == v for f, v in fixed.items()])
        return x[mask].mean(axis=0)

    rows: dict[tuple[int, ...], np.ndarray] = {}
    for f, k in enumerate(levels):
        for lv in range(1, k):
            rows[(f, lv)] = mean(**{f"f{f}": lv}) - mean(**{f"f{f}": 0})
    if interactions:
        for f, g in itertools.combinations(range(len(levels)), 2):
            for a, b in itertools.product(range(1, levels[f]), range(1, levels[g])):
                rows[(f, a, g, b)] = (
                    mean(**{f"f{f}": a, f"f{g}": b})
                    - mean(**{f"f{f}": a, f"f{g}": 0})
                    - mean(**{f"f{f}": 0, f"f{g}": b})
                    + mean(**{f"f{f}": 0, f"f{g}": 0})
                )
    return rows


def aliased(runs: Sequence[Sequence[int]], levels: Sequence[int], interactions: bool = True) -> list[tuple]:
    """The effects (`contrasts` keys) the runs cannot estimate under the model: an effect is estimable only if its
    row lies in the row space of the runs' model matrix (adding it leaves the rank unchanged); the others are
    aliased with effects in the model and must not be reported as estimated."""
    x = model_matrix(runs, levels, interactions)
    rank = np.linalg.matrix_rank(x)
    return [
        key for key, row in contrasts(levels, interactions).items() if np.linalg.matrix_rank(np.vstack([x, row])) > rank
    ]
