"""Fractional designs (ablations.designs): what they select, and what the report estimates from them (known main
effects recovered from synthetic results, the effects a fraction cannot separate listed as aliased)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from ablations.designs import select
from ablations.report.stats import Factor, factorial_effects

pytest.importorskip("pydoe")
FULL = [2, 2, 4, 2, 3]  # the `full` suite's levels


@pytest.mark.parametrize("bad", ["half", {"fraction": 0}, {"fraction": 2, "x": 1}, {"fraction": True}])
def test_a_suite_refuses_a_design_value_naming_what_is_allowed(bad):
    from ablations.suite import SuiteError, load_suite

    with pytest.raises(SuiteError, match="must be 'full' or"):
        load_suite({"name": "d", "design": bad, "factors": {"bn": ["baseline", "bn"]}})
    assert len(load_suite({"name": "d", "design": "full", "factors": {"bn": ["baseline", "bn"]}}).entries) == 2


def test_fractions_select_rows_of_the_full_grid():
    grid = set(itertools.product(*(range(k) for k in FULL)))
    for r in (2, 4):
        runs = select(FULL, r)
        assert set(runs) <= grid and abs(len(runs) - len(grid) / r) <= len(grid) / r / 4
    assert len(select([2, 2, 2, 2], 2)) == 8
    assert len(select(FULL, 1)) == len(grid)


def _fit(levels: list[int], runs: list[tuple[int, ...]], effect: dict[tuple[int, int], float], seed: int = 0):
    """The report's factorial fit of synthetic results: 0.6 plus `effect` ((factor, level) -> shift) and noise."""
    factors = [Factor(f"f{f}", tuple(f"f{f}={i}" for i in range(k))) for f, k in enumerate(levels)]
    frame = pd.DataFrame([{f"f{f}": f"f{f}={i}" for f, i in enumerate(run)} for run in runs])
    rng = np.random.default_rng(seed)
    frame["y"] = [0.6 + sum(v for (f, lv), v in effect.items() if run[f] == lv) + rng.normal(0, 0.002) for run in runs]
    return factorial_effects(frame, factors, "y")


def test_half_fraction_of_two_level_factors_aliases_interactions_not_main_effects():
    fit = _fit([2, 2, 2, 2], select([2, 2, 2, 2], 2), {(0, 1): 0.05})  # d = abc: resolution IV
    assert not fit.interactions and len(fit.aliased) == 6 and all(" × " in name for name in fit.aliased)
    assert sorted(t.name for t in fit.effects) == ["f0=1", "f1=1", "f2=1", "f3=1"]
    assert not _fit([2, 2, 2, 2], select([2, 2, 2, 2], 1), {}).aliased  # the full grid: every effect estimated


def test_suite_design_keeps_full_grid_trials_and_hashes(tmp_path):
    from ablations.suite import SuiteError, expand_trials, load_suite, SUITES_DIR

    text = (SUITES_DIR / "full.yaml").read_text()
    half = tmp_path / "half.yaml"
    half.write_text(text.replace("factors:", "design: {fraction: 2}\nfactors:"))
    full, fraction = load_suite("full"), load_suite(str(half))
    assert fraction.name == "full" and len(fraction.entries) == 48
    hashes = {t.name: t.settings_hash for t in expand_trials(full, full.settings)}
    for trial in expand_trials(fraction, fraction.settings):
        assert hashes[trial.name] == trial.settings_hash
    half.write_text(text.replace("factors:", "design: half\nfactors:"))
    with pytest.raises(SuiteError, match="design"):
        load_suite(str(half))


@pytest.mark.parametrize("reduction", [2, 4])
def test_the_report_recovers_known_main_effects_of_a_fraction(reduction):
    """Synthetic results of the half and the quarter of `full`: main effects recovered within their CIs; the
    quarter's interactions listed as aliased rather than estimated."""
    effect = {(2, 2): -0.1, (4, 1): 0.02, (1, 1): -0.05}
    fit = _fit(FULL, select(FULL, reduction), effect)
    found = {t.name: t.effect for t in fit.effects}
    for (f, lv), v in effect.items():
        assert found[f"f{f}={lv}"].low <= v <= found[f"f{f}={lv}"].high
    assert found["f0=1"].low <= 0 <= found["f0=1"].high
    if reduction == 4:
        assert not fit.interactions and fit.aliased and all(" × " in n for n in fit.aliased)
