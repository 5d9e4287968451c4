"""The report's statistics on data with known answers: t-based CIs, simultaneous Welch intervals against a
reference and their verdicts (worse, equivalent, open with the difference the seeds could detect), the effects of
a factorial design recovered within their intervals, and a main effect an interaction reverses read with its
simple effects."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from ablations.designs import select
from ablations.report.stats import (
    Factor,
    compare_with_reference,
    factorial_effects,
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


def test_the_adjusted_p_is_bonferroni_and_agrees_with_the_interval():
    test = Contrast("a", Interval(0.0, -1.0, 1.0), 0.004, df=5.0, family=8)
    assert test.p_adjusted == pytest.approx(0.032)
    assert Contrast("b", Interval(0.0, -1.0, 1.0), 0.3, df=5.0, family=8).p_adjusted == 1.0


def test_verdicts_worse_equivalent_and_open_with_what_the_seeds_could_detect():
    reference = [0.500, 0.505, 0.495, 0.502, 0.498]
    groups = {
        "ref": reference,
        "worse": [v - 0.10 for v in reference[::-1]],  # -0.10, far beyond the spread
        "same": [0.5003, 0.4997, 0.5004, 0.4996, 0.5000, 0.5001],  # the reference's mean, little spread
        "noisy": [0.56, 0.44, 0.53, 0.47, 0.50],  # the same mean, wide spread: cannot tell
    }
    tests = {t.name: t for t in compare_with_reference(groups, "ref", margin=0.01)}
    assert set(tests) == {"worse", "same", "noisy"}
    assert tests["worse"].verdict == "worse" and tests["worse"].effect.estimate == pytest.approx(-0.10)
    assert tests["same"].verdict == "equivalent"
    assert -0.01 <= tests["same"].effect.low and tests["same"].effect.high <= 0.01
    noisy = tests["noisy"]
    assert noisy.verdict == "open" and noisy.family == 3
    half = (noisy.effect.high - noisy.effect.low) / 2
    assert half < noisy.detectable < 2 * half  # (t_crit + t_power) * se: more than the half-width
    single = welch(groups["noisy"], reference, "x", level=1 - 0.05 / 3)
    assert (noisy.effect.low, noisy.effect.high) == pytest.approx((single.effect.low, single.effect.high))
    for test in tests.values():  # the adjusted p and the interval say the same
        assert (test.p_adjusted < 0.05) == (test.effect.low > 0 or test.effect.high < 0)


def test_simultaneous_intervals_are_wider_than_one_comparison_s():
    groups = {"ref": [0.5, 0.51, 0.49], "a": [0.55, 0.56, 0.54], "b": [0.5, 0.5, 0.52]}
    one = welch(groups["a"], groups["ref"], "a")
    both = {t.name: t for t in compare_with_reference(groups, "ref")}["a"]
    assert both.effect.low < one.effect.low and both.effect.high > one.effect.high


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
        assert wide[name].effect.low < value < wide[name].effect.high, name  # 99% simultaneous: all cover
        assert (effects[name].verdict in ("better", "worse")) == (value != 0.0), name


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


def test_a_main_effect_an_interaction_reverses_is_read_with_its_simple_effects():
    """bn helps without pixel (+0.12) and hurts with it (-0.04): its main effect, averaged, is positive, but the
    resolved pixel × bn interaction qualifies it, and its simple effect with pixel is negative."""
    factors = [Factor("normalize", ("off", "pixel")), Factor("batchnorm", ("off", "bn")), Factor("l2", ("off", "l2"))]
    rng = np.random.default_rng(1)
    rows = []
    for pixel, bn, l2 in itertools.product(*(f.levels for f in factors)):
        for _ in range(3):
            on_pixel, on_bn = pixel == "pixel", bn == "bn"
            acc = 0.5 + 0.05 * on_pixel + (0.12 - 0.16 * on_pixel) * on_bn + rng.normal(0, 0.004)
            rows.append({"normalize": pixel, "batchnorm": bn, "l2": l2, "acc": acc})
    fit = factorial_effects(pd.DataFrame(rows), factors, "acc")
    effects = {t.name: t for t in fit.effects}
    assert effects["bn"].verdict == "better" and effects["pixel × bn"].verdict == "worse"
    assert fit.qualifiers("bn") == ["pixel × bn"] and fit.qualifiers("l2") == []
    simple = {t.name: t for t in fit.simple["pixel × bn"]}
    assert set(simple) == {"pixel without bn", "pixel with bn", "bn without pixel", "bn with pixel"}
    assert simple["bn without pixel"].verdict == "better" and simple["bn with pixel"].verdict == "worse"
    assert simple["bn with pixel"].effect.estimate == pytest.approx(-0.04, abs=0.01)
    assert all(t.family == fit.family for t in simple.values())  # one family, fixed before looking
    assert fit.family == len(fit.effects) + len({t.name for ts in fit.simple.values() for t in ts})


# ------------------------------------------------------------------------------ fractions of a factorial design
FULL = [2, 2, 4, 2, 3]  # the `full` suite's levels


def _fit(levels: list[int], runs: list[tuple[int, ...]], effect: dict[tuple[int, int], float], seed: int = 0):
    """The report's factorial fit of synthetic results: 0.6 plus `effect` ((factor, level) -> shift) and noise."""
    factors = [Factor(f"f{f}", tuple(f"f{f}={i}" for i in range(k))) for f, k in enumerate(levels)]
    frame = pd.DataFrame([{f"f{f}": f"f{f}={i}" for f, i in enumerate(run)} for run in runs])
    rng = np.random.default_rng(seed)
    frame["y"] = [0.6 + sum(v for (f, lv), v in effect.items() if run[f] == lv) + rng.normal(0, 0.002) for run in runs]
    return factorial_effects(frame, factors, "y")


def test_half_fraction_of_two_level_factors_aliases_interactions_not_main_effects():
    pytest.importorskip("pydoe")
    fit = _fit([2, 2, 2, 2], select([2, 2, 2, 2], 2), {(0, 1): 0.05})  # d = abc: resolution IV
    assert not fit.interactions and len(fit.aliased) == 6 and all(" × " in name for name in fit.aliased)
    assert sorted(t.name for t in fit.effects) == ["f0=1", "f1=1", "f2=1", "f3=1"]
    assert not _fit([2, 2, 2, 2], select([2, 2, 2, 2], 1), {}).aliased  # the full grid: every effect estimated


@pytest.mark.parametrize("reduction", [2, 4])
def test_the_report_recovers_known_main_effects_of_a_fraction(reduction):
    """Synthetic results of the half and the quarter of `full`: main effects recovered within their CIs; the
    quarter's interactions listed as aliased rather than estimated."""
    pytest.importorskip("pydoe")
    effect = {(2, 2): -0.1, (4, 1): 0.02, (1, 1): -0.05}
    fit = _fit(FULL, select(FULL, reduction), effect)
    found = {t.name: t.effect for t in fit.effects}
    for (f, lv), v in effect.items():
        assert found[f"f{f}={lv}"].low <= v <= found[f"f{f}={lv}"].high
    assert found["f0=1"].low <= 0 <= found["f0=1"].high
    if reduction == 4:
        assert not fit.interactions and fit.aliased and all(" × " in n for n in fit.aliased)
