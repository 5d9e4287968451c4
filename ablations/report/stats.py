"""The statistics of a suite's results: confidence intervals, comparisons with a reference spec, factorial effects.

The numbers come from scipy and statsmodels; this module only arranges the data and names what was computed:

- `mean_ci`: a mean over seeds with its t-based confidence interval (scipy).
- `welch_width`: the width of Welch's interval from sample sizes and variances, for the seeds rule.
- `compare_with_reference`: each spec against a reference spec by Welch's t-test (scipy), the p-values corrected
  for the number of comparisons by Holm's method (statsmodels); a difference is *resolved* when its corrected
  p-value is under ``1 - level``.
- `factorial_effects`: for specs that cover every combination of some factors (e.g. the ``full`` suite), a linear
  model of test accuracy with every main effect and two-factor interaction (statsmodels OLS); each effect is a
  contrast of that model averaged over the levels of the other factors, with its confidence interval and a
  Holm-corrected p-value.

Torch-free: ``python -m ablations.report`` imports it.
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

LEVEL = 0.95  # confidence level of every interval; differences are resolved at alpha = 1 - LEVEL
NAN = float("nan")


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval (``nan`` bounds when it cannot be computed)."""

    estimate: float
    low: float
    high: float

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of `values` and its t-based confidence interval; ``nan`` bounds for fewer than two values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, NAN, NAN)
    sem = scipy_stats.sem(values)
    if sem == 0:
        return Interval(mean, mean, mean)
    low, high = scipy_stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high))


@dataclass(frozen=True)
class Contrast:
    """An effect or a difference with its confidence interval and p-values (raw and Holm-corrected)."""

    name: str
    effect: Interval
    p_value: float
    p_holm: float = NAN

    @property
    def resolved(self) -> bool:
        """True when the Holm-corrected p-value is under ``1 - LEVEL``: this number of seeds tells it from zero."""
        return self.p_holm < 1 - LEVEL


def holm(tests: list[Contrast]) -> list[Contrast]:
    """The same tests with Holm-corrected p-values over those that have a p-value (``nan`` ones stay ``nan``)."""
    tested = [i for i, t in enumerate(tests) if not math.isnan(t.p_value)]
    corrected = list(multipletests([tests[i].p_value for i in tested], method="holm")[1]) if tested else []
    adjusted = dict(zip(tested, corrected))
    return [Contrast(t.name, t.effect, t.p_value, float(adjusted.get(i, NAN))) for i, t in enumerate(tests)]


def welch(values: Sequence[float], reference: Sequence[float], name: str, level: float = LEVEL) -> Contrast:
    """``mean(values) - mean(reference)`` with Welch's confidence interval and t-test p-value (scipy).

    Fewer than two values on either side, or two identical constant samples, give ``nan`` (nothing to test).
    """
    difference = statistics.fmean(values) - statistics.fmean(reference)
    if min(len(values), len(reference)) < 2:
        return Contrast(name, Interval(difference, NAN, NAN), NAN)
    with warnings.catch_warnings():  # nearly constant samples (e.g. every seed at 100%) make scipy warn
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_ind(values, reference, equal_var=False)
    if math.isnan(result.pvalue):
        return Contrast(name, Interval(difference, NAN, NAN), NAN)
    low, high = result.confidence_interval(confidence_level=level)
    return Contrast(name, Interval(difference, float(low), float(high)), float(result.pvalue))


def welch_width(n_a: Any, var_a: Any, n_b: Any, var_b: Any, level: float = LEVEL) -> np.ndarray:
    """The width (high - low) of `welch`'s interval from the sample sizes and variances (ddof=1) alone, with
    Welch-Satterthwaite degrees of freedom and scipy's t quantile; numpy-broadcast, so one call serves a suite or
    a thousand simulated studies (the seeds rule, `ablations.adaptive`, decides on it). 0 where both variances are 0.
    """
    n_a, n_b = np.asarray(n_a, float), np.asarray(n_b, float)
    va, vb = np.asarray(var_a, float) / n_a, np.asarray(var_b, float) / n_b
    total = va + vb
    with np.errstate(divide="ignore", invalid="ignore"):
        df = total**2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
        width = 2 * scipy_stats.t.ppf(0.5 + level / 2, df) * np.sqrt(total)
    return np.where(total > 0, width, 0.0)


def compare_with_reference(
    groups: Mapping[str, Sequence[float]], reference: str, level: float = LEVEL
) -> list[Contrast]:
    """Every group but `reference` against it (Welch), Holm-corrected over all of them, in `groups` order.

    Raises:
        ValueError: if `reference` is not one of the groups.
    """
    if reference not in groups:
        raise ValueError(f"reference {reference!r} is not one of {', '.join(groups)}")
    return holm([welch(values, groups[reference], name, level) for name, values in groups.items() if name != reference])


# ------------------------------------------------------------------------------------------------ factorial
@dataclass(frozen=True)
class Factor:
    """A factor of a factorial design: its column in the trials' table and its levels, the reference ("off")
    level first."""

    name: str
    levels: tuple[str, ...]

    @property
    def reference(self) -> str:
        return self.levels[0]


@dataclass(frozen=True)
class FactorialFit:
    """The effects of a factorial design, or why they could not be estimated (`problem`)."""

    effects: list[Contrast]
    interactions: bool  # whether two-factor interactions were estimated (else main effects only)
    residual_df: int
    problem: Optional[str] = None
    aliased: tuple[str, ...] = ()  # effects a fractional design cannot separate: not estimated, not reported


def _design(frame: pd.DataFrame, factors: Sequence[Factor], interactions: bool) -> pd.DataFrame:
    """Intercept, one treatment dummy per non-reference level and, with `interactions`, their pairwise products
    across factors."""
    dummies = [
        pd.get_dummies(
            pd.Categorical(frame[f.name], categories=f.levels),
            prefix=f.name,
            prefix_sep="=",
            drop_first=True,
            dtype=float,
        )
        for f in factors
    ]
    columns = {"intercept": np.ones(len(frame))}
    for block in dummies:
        columns.update({name: block[name].to_numpy() for name in block})
    if interactions:
        for first, second in itertools.combinations(dummies, 2):
            for a, b in itertools.product(first, second):
                columns[f"{a} × {b}"] = first[a].to_numpy() * second[b].to_numpy()
    return pd.DataFrame(columns)


def _contrasts(factors: Sequence[Factor], interactions: bool) -> dict[str, np.ndarray]:
    """The model's effects as linear combinations of its coefficients, averaged over a balanced grid of every
    level combination: ``A=a`` is mean(A=a) - mean(A=off); ``A=a × B=b`` is the difference of differences
    mean(a, b) - mean(a, off) - mean(off, b) + mean(off, off)."""
    grid = pd.DataFrame(list(itertools.product(*(f.levels for f in factors))), columns=[f.name for f in factors])
    design = _design(grid, factors, interactions).to_numpy()

    def mean_row(**levels: str) -> np.ndarray:
        mask = np.logical_and.reduce([grid[name].to_numpy() == level for name, level in levels.items()])
        return design[mask].mean(axis=0)

    rows = {}
    for f in factors:
        for level in f.levels[1:]:
            rows[f"{level}"] = mean_row(**{f.name: level}) - mean_row(**{f.name: f.reference})
    if interactions:
        for f, g in itertools.combinations(factors, 2):
            for a, b in itertools.product(f.levels[1:], g.levels[1:]):
                off_a, off_b = f.reference, g.reference
                rows[f"{a} × {b}"] = (
                    mean_row(**{f.name: a, g.name: b})
                    - mean_row(**{f.name: a, g.name: off_b})
                    - mean_row(**{f.name: off_a, g.name: b})
                    + mean_row(**{f.name: off_a, g.name: off_b})
                )
    return rows


def _fit(
    frame: pd.DataFrame, factors: Sequence[Factor], response: str, interactions: bool, level: float
) -> FactorialFit:
    model = sm.OLS(frame[response].to_numpy(dtype=float), _design(frame, factors, interactions).to_numpy())
    fit = model.fit()
    contrasts = _contrasts(factors, interactions)
    result = fit.t_test(np.vstack(list(contrasts.values())))
    bounds = result.conf_int(alpha=1 - level)
    estimates, p_values = np.atleast_1d(result.effect), np.atleast_1d(result.pvalue)
    tests = [
        Contrast(name, Interval(float(e), float(lo), float(hi)), float(p))
        for name, e, (lo, hi), p in zip(contrasts, estimates, bounds, p_values)
    ]
    return FactorialFit(holm(tests), interactions, int(fit.df_resid))


def _fractional_fit(
    frame: pd.DataFrame, factors: Sequence[Factor], response: str, level: float, present: int, combinations: int
) -> FactorialFit:
    """A fraction of the grid: the largest model (two-factor, else main effects) whose columns the runs separate
    (full column rank) with residual degrees of freedom left; the effects outside it are aliased."""
    combos = frame[[f.name for f in factors]].drop_duplicates()
    counts = [combos[f.name].value_counts().reindex(list(f.levels), fill_value=0) for f in factors]
    balanced = all(c.min() > 0 and c.max() <= 1.5 * c.min() for c in counts)
    if not balanced:  # hand-picked specs, not a design: a design runs every level of a factor about equally often
        return FactorialFit(
            [],
            False,
            0,
            f"the specs cover {present} of the {combinations} combinations of "
            f"{', '.join(f.name for f in factors)} (not a full factorial design)",
        )
    every = list(_contrasts(factors, True))
    for interactions in (True, False):
        x = _design(frame, factors, interactions).to_numpy()
        if np.linalg.matrix_rank(x) == x.shape[1] and len(frame) > x.shape[1]:
            fit = _fit(frame, factors, response, interactions, level)
            estimated = {t.name for t in fit.effects}
            return FactorialFit(
                fit.effects, interactions, fit.residual_df, aliased=tuple(n for n in every if n not in estimated)
            )
    return FactorialFit(
        [],
        False,
        0,
        f"the specs cover {present} of the {combinations} combinations of "
        f"{', '.join(f.name for f in factors)}, too few to separate the main effects",
    )


def factorial_effects(
    frame: pd.DataFrame, factors: Sequence[Factor], response: str, level: float = LEVEL
) -> FactorialFit:
    """Main effects and two-factor interactions of `factors` on `response` (one row of `frame` per trial).

    The model has every main effect and every two-factor interaction when the trials leave residual degrees of
    freedom for it, else main effects only (its residual then holds the interactions). Three-factor and higher
    interactions are taken as noise. Needs every combination of the factors' levels in `frame`.
    """
    combinations = math.prod(len(f.levels) for f in factors)
    present = len(frame[[f.name for f in factors]].drop_duplicates())
    if present < combinations:
        return _fractional_fit(frame, factors, response, level, present, combinations)
    for interactions in (True, False):
        parameters = _design(frame.head(1), factors, interactions).shape[1]
        if len(frame) > parameters:
            return _fit(frame, factors, response, interactions, level)
    return FactorialFit(
        [],
        False,
        0,
        f"{len(frame)} trials leave no residual degrees of freedom for "
        f"{1 + sum(len(f.levels) - 1 for f in factors)} main-effect parameters: "
        "run more seeds",
    )


MARGIN = 0.01  # default equivalence margin, in test-accuracy units (``--margin``)
VERDICTS = ("equivalent", "better", "worse", "open")  # the answer to one comparison, in the order it is read


def verdict(low: float, high: float, margin: float = MARGIN) -> str:
    """The verdict a family-wise (simultaneous) interval ``[low, high]`` of a difference gives, read in this order:
    ``equivalent`` when it lies within ``±margin`` (TOST: a difference too small to matter, even if it excludes 0),
    else ``better`` / ``worse`` when it excludes 0 above / below, else ``open`` (a nan bound is ``open`` too).

    Raises:
        ValueError: `margin` is negative or nan.
    """
    if not margin >= 0:
        raise ValueError(f"margin {margin!r}: give a difference of accuracy >= 0, e.g. {MARGIN}")
    if math.isnan(low) or math.isnan(high):
        return "open"
    if -margin <= low and high <= margin:
        return "equivalent"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "open"
