"""The statistics of a suite's results (scipy, statsmodels): confidence intervals, comparisons with a reference
spec, factorial effects, and the one verdict each comparison gets (`verdict`). Every family of intervals is
simultaneous (Bonferroni), so an interval means the same whether its comparison is rejected or not. Torch-free.
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats as scipy_stats

from ablations.rules import MARGIN, check_margin

LEVEL = 0.95  # family-wise confidence level of every set of simultaneous intervals
POWER = 0.80  # the power at which `Contrast.detectable` states the smallest difference the seeds could detect
VERDICTS = ("equivalent", "better", "worse", "open")  # the answer to one comparison, in the order it is read
INTERACTION = " × "  # joins the two levels of a two-factor interaction's name
NAN = float("nan")


def verdict(low: float, high: float, margin: float = MARGIN) -> str:
    """``equivalent`` when ``[low, high]`` lies within ``±margin`` (TOST), else ``better`` / ``worse`` when it
    excludes 0, else ``open`` (a nan bound too)."""
    check_margin(margin)
    if math.isnan(low) or math.isnan(high):
        return "open"
    if -margin <= low and high <= margin:
        return "equivalent"
    return "better" if low > 0 else "worse" if high < 0 else "open"


def family_level(level: float, size: int) -> float:
    """The level of each of `size` Bonferroni-simultaneous intervals whose family-wise level is `level`."""
    return 1 - (1 - level) / max(size, 1)


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
    """A difference or effect with its interval, simultaneous over `family` contrasts at family-wise `level`."""

    name: str
    effect: Interval  # the estimate and its simultaneous interval: the interval every output draws
    p_value: float  # the raw two-sided p-value
    df: float = NAN  # degrees of freedom of the interval's t quantile
    family: int = 1
    level: float = LEVEL
    margin: float = MARGIN

    @property
    def p_adjusted(self) -> float:
        """Bonferroni over the family: under ``1 - level`` exactly when the interval excludes 0."""
        return min(1.0, self.p_value * self.family)

    @property
    def verdict(self) -> str:
        return verdict(self.effect.low, self.effect.high, self.margin)

    @property
    def detectable(self) -> float:
        """The smallest difference these seeds would resolve with probability `POWER`: ``(t_crit + t_power) * se``."""
        if not self.effect.known or math.isnan(self.df):
            return NAN
        critical = float(scipy_stats.t.ppf(1 - (1 - self.level) / (2 * self.family), self.df))
        half = (self.effect.high - self.effect.low) / 2
        return half * (1 + float(scipy_stats.t.ppf(POWER, self.df)) / critical)


def welch(values: Sequence[float], reference: Sequence[float], name: str, level: float = LEVEL) -> Contrast:
    """``mean(values) - mean(reference)`` with Welch's interval at `level` and p-value; ``nan`` bounds when there
    is nothing to test (fewer than two values a side, or identical constant samples)."""
    difference = statistics.fmean(values) - statistics.fmean(reference) if values and reference else NAN
    unknown = Contrast(name, Interval(difference, NAN, NAN), NAN, level=level)
    if min(len(values), len(reference)) < 2:
        return unknown
    with warnings.catch_warnings():  # nearly constant samples (e.g. every seed at 100%) make scipy warn
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_ind(values, reference, equal_var=False)
    if math.isnan(result.pvalue):
        return unknown
    low, high = result.confidence_interval(confidence_level=level)
    return Contrast(name, Interval(difference, float(low), float(high)), float(result.pvalue), result.df, level=level)


def welch_width(n_a: Any, var_a: Any, n_b: Any, var_b: Any, level: float = LEVEL) -> np.ndarray:
    """The width of `welch`'s interval from sample sizes and variances (ddof=1), numpy-broadcast (the seeds rules
    and their simulations decide on it); 0 where both variances are 0."""
    n_a, n_b = np.asarray(n_a, float), np.asarray(n_b, float)
    va, vb = np.asarray(var_a, float) / n_a, np.asarray(var_b, float) / n_b
    total = va + vb
    with np.errstate(divide="ignore", invalid="ignore"):
        df = total**2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
        width = 2 * scipy_stats.t.ppf(0.5 + level / 2, df) * np.sqrt(total)
    return np.where(total > 0, width, 0.0)


def compare_with_reference(
    groups: Mapping[str, Sequence[float]],
    reference: str,
    level: float = LEVEL,
    margin: float = MARGIN,
    looks: int = 1,
) -> list[Contrast]:
    """Every group but `reference` against it (Welch), each at ``1 - (1 - level) / (comparisons x looks)``; with
    ``looks > 1`` (`ablations.adaptive`) read at the look it stopped at, the first ``k`` values a side (the fewer)."""
    if reference not in groups:
        raise ValueError(f"reference {reference!r} is not one of {', '.join(groups)}")
    check_margin(margin)
    others = [name for name in groups if name != reference]
    each = family_level(level, len(others) * looks)
    tests = []
    for name in others:
        k = min(len(groups[name]), len(groups[reference])) if looks > 1 else None
        t = welch(groups[name][:k], groups[reference][:k], name, each)
        tests.append(Contrast(name, t.effect, t.p_value, t.df, len(others) * looks, level, margin))
    return tests


# ------------------------------------------------------------------------------------------------ factorial
@dataclass(frozen=True)
class Factor:
    """A factor of a factorial design: its column in the trials' table and its levels, the reference first."""

    name: str
    levels: tuple[str, ...]


@dataclass(frozen=True)
class FactorialFit:
    """Main effects, interactions and (`simple`) each interaction's simple effects, or why not (`problem`)."""

    effects: list[Contrast]
    interactions: bool  # whether two-factor interactions were estimated (else main effects only)
    residual_df: int
    problem: Optional[str] = None
    aliased: tuple[str, ...] = ()  # effects a fractional design cannot separate: not estimated
    simple: dict[str, list[Contrast]] = field(default_factory=dict)

    @property
    def family(self) -> int:
        return self.effects[0].family if self.effects else 0

    def resolved_interactions(self) -> list[Contrast]:
        """The interactions whose interval excludes 0 (verdict better or worse)."""
        return [t for t in self.effects if INTERACTION in t.name and t.verdict in ("better", "worse")]

    def qualifiers(self, main: str) -> list[str]:
        """The resolved interactions that involve the main effect `main`: it cannot be read alone."""
        return [t.name for t in self.resolved_interactions() if main in t.name.split(INTERACTION)]


def _design(frame: pd.DataFrame, factors: Sequence[Factor], interactions: bool) -> pd.DataFrame:
    """Intercept, a treatment dummy per non-reference level, and with `interactions` their products across factors."""
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
                columns[f"{a}{INTERACTION}{b}"] = first[a].to_numpy() * second[b].to_numpy()
    return pd.DataFrame(columns)


def _simple_name(level: str, other: Factor, other_level: str) -> str:
    """``bn with pixel`` / ``bn without pixel``; a factor of three levels or more names itself when off."""
    if other_level != other.levels[0]:
        return f"{level} with {other_level}"
    return f"{level} without {other.levels[1] if len(other.levels) == 2 else other.name}"


def _contrasts(
    factors: Sequence[Factor], interactions: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[str]]]:
    """The effects, the simple effects (``a`` without and with ``b``, and back) and each interaction's simple
    effects' names, as combinations of the coefficients averaged over the full grid."""
    grid = pd.DataFrame(list(itertools.product(*(f.levels for f in factors))), columns=[f.name for f in factors])
    design = _design(grid, factors, interactions).to_numpy()

    def mean_row(**levels: str) -> np.ndarray:
        mask = np.logical_and.reduce([grid[name].to_numpy() == level for name, level in levels.items()])
        return design[mask].mean(axis=0)

    effects = {
        level: mean_row(**{f.name: level}) - mean_row(**{f.name: f.levels[0]})
        for f in factors
        for level in f.levels[1:]
    }
    simple: dict[str, np.ndarray] = {}
    groups: dict[str, list[str]] = {}
    for f, g in itertools.combinations(factors, 2) if interactions else ():
        for a, b in itertools.product(f.levels[1:], g.levels[1:]):
            name, off_a, off_b = f"{a}{INTERACTION}{b}", f.levels[0], g.levels[0]
            cell = {(x, y): mean_row(**{f.name: x, g.name: y}) for x in (off_a, a) for y in (off_b, b)}
            effects[name] = cell[a, b] - cell[a, off_b] - cell[off_a, b] + cell[off_a, off_b]
            groups[name] = [_simple_name(a, g, y) for y in (off_b, b)] + [_simple_name(b, f, x) for x in (off_a, a)]
            rows = [cell[a, y] - cell[off_a, y] for y in (off_b, b)] + [cell[x, b] - cell[x, off_b] for x in (off_a, a)]
            for simple_name, row in zip(groups[name], rows):
                simple.setdefault(simple_name, row)
    return effects, simple, groups


def factorial_effects(
    frame: pd.DataFrame, factors: Sequence[Factor], response: str, level: float = LEVEL, margin: float = MARGIN
) -> FactorialFit:
    """Main effects and, where the trials separate them, two-factor interactions of `factors` on `response` (a row
    of `frame` per trial; higher interactions are noise). A fraction of the grid must balance the levels."""
    names = [f.name for f in factors]
    combinations = math.prod(len(f.levels) for f in factors)
    combos = frame[names].drop_duplicates()
    cover = f"the specs cover {len(combos)} of the {combinations} combinations of {', '.join(names)}"
    if len(combos) < combinations:
        counts = [combos[f.name].value_counts().reindex(list(f.levels), fill_value=0) for f in factors]
        if not all(c.min() > 0 and c.max() <= 1.5 * c.min() for c in counts):
            return FactorialFit([], False, 0, f"{cover} (not a full factorial design)")
    for interactions in (True, False):
        x = _design(frame, factors, interactions).to_numpy()
        if np.linalg.matrix_rank(x) == x.shape[1] and len(frame) > x.shape[1]:
            ols = sm.OLS(frame[response].to_numpy(dtype=float), x).fit()
            effects, simple, groups = _contrasts(factors, interactions)
            contrasts = {**effects, **simple}  # every interval simultaneous over all of them (Bonferroni)
            result = ols.t_test(np.vstack(list(contrasts.values())))
            bounds = result.conf_int(alpha=1 - family_level(level, len(contrasts)))
            estimates, p_values = np.atleast_1d(result.effect), np.atleast_1d(result.pvalue)
            tests = {
                name: Contrast(
                    name, Interval(float(e), float(lo), float(hi)), float(p), ols.df_resid, len(bounds), level, margin
                )
                for name, e, (lo, hi), p in zip(contrasts, estimates, bounds, p_values)
            }
            aliased = (
                [n for n in _contrasts(factors, True)[0] if n not in effects] if len(combos) < combinations else []
            )
            return FactorialFit(
                [tests[name] for name in effects],
                interactions,
                int(ols.df_resid),
                aliased=tuple(aliased),
                simple={name: [tests[s] for s in names] for name, names in groups.items()},
            )
    if len(combos) < combinations:
        return FactorialFit([], False, 0, f"{cover}, too few to separate the main effects")
    parameters = 1 + sum(len(f.levels) - 1 for f in factors)
    return FactorialFit(
        [],
        False,
        0,
        f"{len(frame)} trials leave no residual degrees of freedom for {parameters} main-effect "
        "parameters: run more seeds",
    )
