"""The report's statistics on data with known answers: t-based CIs, Welch + Holm against a reference, and the
effects of a factorial design recovered within their CIs (null effects not resolved)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from ablations.report.stats import (
    Factor,
    compare_with_reference,
    factorial_effects,
    holm,
    mean_ci,
    welch,
    Interval,
    Contrast,
    verdict,
)


def test_mean_ci_is_t_based():
    interval = mean_ci([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert interval.estimate == pytest.approx(0.6)
    assert (interval.low, interval.high) == pytest.approx((0.6 - half, 0.6 + half))


def test_mean_ci_of_one_value_is_unknown_and_of_constant_values_is_a_point():
    assert not mean_ci([0.5]).known and mean_ci([0.5]).estimate == 0.5
    assert (mean_ci([0.4, 0.4]).low, mean_ci([0.4, 0.4]).high) == (0.4, 0.4)


def test_welch_difference_and_interval():
    test = welch([0.60, 0.62, 0.64], [0.50, 0.51, 0.49], "x")
    assert test.effect.estimate == pytest.approx(0.12)
    assert test.effect.low < 0.12 < test.effect.high and test.p_value < 0.01


def test_welch_needs_two_values_per_side():
    assert math.isnan(welch([0.6], [0.5, 0.51], "x").p_value)


def test_holm_multiplies_the_smallest_p_by_the_count_and_keeps_the_order():
    tests = [
        Contrast(name, Interval(0.0, 0.0, 0.0), p)
        for name, p in (("a", 0.04), ("b", 0.001), ("c", 0.03), ("d", float("nan")))
    ]
    corrected = {t.name: t.p_holm for t in holm(tests)}
    assert corrected["b"] == pytest.approx(0.003)  # 3 tested: 3 x 0.001
    assert corrected["c"] == pytest.approx(0.06)  # 2 x 0.03
    assert corrected["a"] == pytest.approx(0.06)  # max(1 x 0.04, the previous 0.06): monotone
    assert math.isnan(corrected["d"])


def test_comparisons_resolve_a_real_difference_and_not_a_null_one():
    reference = [0.500, 0.505, 0.495, 0.502, 0.498]
    groups = {
        "ref": reference,
        "big": [v + 0.10 for v in reference[::-1]],  # +0.10, far beyond the spread
        "null": [0.501, 0.497, 0.503, 0.499, 0.500],  # same mean as the reference
        "small": [0.508, 0.498, 0.512, 0.496, 0.506],
    }  # +0.004, within the spread
    tests = {t.name: t for t in compare_with_reference(groups, "ref")}
    assert set(tests) == {"big", "null", "small"}
    assert tests["big"].resolved and tests["big"].effect.estimate == pytest.approx(0.10)
    assert not tests["null"].resolved and not tests["small"].resolved
    ordered = sorted(tests.values(), key=lambda t: t.p_value)
    assert [t.p_holm for t in ordered] == sorted(t.p_holm for t in ordered)  # Holm keeps the raw order
    assert all(t.p_holm >= t.p_value for t in tests.values())


def test_unknown_reference_is_a_value_error():
    with pytest.raises(ValueError, match="reference 'nope' is not one of a, b"):
        compare_with_reference({"a": [1.0, 2.0], "b": [1.0, 2.0]}, "nope")


TRUE_EFFECTS = {"bn": 0.10, "dropout=0.5": -0.05, "bn × dropout=0.25": 0.04}  # and nothing else


def factorial_frame(seeds: int = 3, noise: float = 0.005) -> tuple[pd.DataFrame, list[Factor]]:
    """A 2 x 3 x 2 design with the `TRUE_EFFECTS` and Gaussian noise (fixed seed)."""
    factors = [
        Factor("batchnorm", ("off", "bn")),
        Factor("dropout", ("off", "dropout=0.25", "dropout=0.5")),
        Factor("l2", ("off", "l2=0.01")),
    ]
    rng = np.random.default_rng(0)
    rows = []
    for bn, dropout, l2 in itertools.product(*(f.levels for f in factors)):
        for _ in range(seeds):
            acc = (
                0.5
                + 0.10 * (bn == "bn")
                - 0.05 * (dropout == "dropout=0.5")
                + 0.04 * (bn == "bn") * (dropout == "dropout=0.25")
                + rng.normal(0, noise)
            )
            rows.append({"batchnorm": bn, "dropout": dropout, "l2": l2, "acc": acc})
    return pd.DataFrame(rows), factors


def test_factorial_effects_recover_known_effects_within_their_cis():
    frame, factors = factorial_frame()
    fit = factorial_effects(frame, factors, "acc")
    effects = {t.name: t for t in fit.effects}
    wide = {t.name: t for t in factorial_effects(frame, factors, "acc", level=0.99).effects}
    assert fit.interactions and fit.problem is None
    # main effects average over the other factors' levels: bn's includes a third of its interaction with dropout
    expected = {
        "bn": 0.10 + 0.04 / 3,
        "dropout=0.25": 0.04 / 2,
        "dropout=0.5": -0.05,
        "l2=0.01": 0.0,
        "bn × dropout=0.25": 0.04,
        "bn × dropout=0.5": 0.0,
        "bn × l2=0.01": 0.0,
        "dropout=0.25 × l2=0.01": 0.0,
        "dropout=0.5 × l2=0.01": 0.0,
    }
    assert set(effects) == set(expected)
    for name, value in expected.items():
        assert wide[name].effect.low < value < wide[name].effect.high, name  # 99% CIs: 9 of them all cover
        assert effects[name].resolved == (value != 0.0), name


def test_a_factorial_without_replicates_falls_back_to_main_effects():
    frame, factors = factorial_frame(seeds=1)
    frame = frame[frame["l2"] == "off"]  # 2 x 3 cells, one trial each: no room for the interactions
    fit = factorial_effects(frame, factors[:2], "acc")
    assert not fit.interactions and fit.residual_df == 2
    assert {t.name for t in fit.effects} == {"bn", "dropout=0.25", "dropout=0.5"}


def test_an_incomplete_design_is_not_estimated():
    frame, factors = factorial_frame()
    fit = factorial_effects(frame[frame["batchnorm"] == "off"].iloc[:-3], factors, "acc")
    assert fit.effects == [] and "cover 5 of the 12 combinations" in fit.problem


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.005, 0.004, "equivalent"),
        (0.002, 0.008, "equivalent"),  # excludes 0 but within the margin: too small to matter
        (0.002, 0.02, "better"),
        (-0.03, -0.02, "worse"),
        (-0.03, 0.02, "open"),
        (float("nan"), 0.001, "open"),
    ],
)
def test_a_verdict_reads_equivalence_first_then_the_sign_then_open(low: float, high: float, expected: str) -> None:
    assert verdict(low, high, margin=0.01) == expected


def test_a_negative_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="margin -0.1"):
        verdict(0.0, 0.1, margin=-0.1)
