"""Fractional designs (ablations.designs): what they select, their aliasing, and recovering known main effects
from synthetic results."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ablations.designs import aliased, fraction_of, model_matrix, select

pytest.importorskip("pydoe")
FULL = [2, 2, 4, 2, 3]  # the `full` suite's levels


def test_design_values():
    assert fraction_of(None) == fraction_of("full") == 1 and fraction_of({"fraction": 4}) == 4
    for bad in ("half", {"fraction": 0}, {"fraction": 2, "x": 1}, {"fraction": True}):
        with pytest.raises(ValueError):
            fraction_of(bad)


def test_fractions_select_rows_of_the_full_grid():
    grid = set(itertools.product(*(range(k) for k in FULL)))
    for r in (2, 4):
        runs = select(FULL, r)
        assert set(runs) <= grid and abs(len(runs) - len(grid) / r) <= len(grid) / r / 4
    assert len(select([2, 2, 2, 2], 2)) == 8
    assert not aliased(select(FULL, 1), FULL)


def test_half_fraction_of_two_level_factors_aliases_interactions_not_main_effects():
    runs = select([2, 2, 2, 2], 2)  # d = abc: resolution IV
    lost = aliased(runs, [2, 2, 2, 2])
    assert len(lost) == 6 and all(len(key) == 4 for key in lost)  # every 2fi aliased, no main effect
    assert not aliased(runs, [2, 2, 2, 2], interactions=False)


@pytest.mark.parametrize("reduction", [2, 4])
def test_fractional_design_recovers_known_main_effects(reduction):
    rng = np.random.default_rng(reduction)
    runs = select(FULL, reduction)
    x = model_matrix(runs, FULL, interactions=False)
    truth = rng.normal(0, 0.05, x.shape[1])
    y = x @ truth + rng.normal(0, 0.002, len(runs))
    estimate = np.linalg.lstsq(x, y, rcond=None)[0]
    assert np.allclose(estimate, truth, atol=0.01)


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


def test_report_fits_a_quarter_fraction_and_lists_aliased_effects():
    """Synthetic results of the quarter design of `full`: main effects recovered, interactions listed as
    aliased rather than estimated."""
    import pandas as pd

    from ablations.report.stats import Factor, factorial_effects

    names = ["normalize", "batchnorm", "penalty", "max_norm", "dropout"]
    factors = [Factor(n, tuple(f"{n}{i}" for i in range(k))) for n, k in zip(names, FULL)]
    runs = select(FULL, 4)
    effect = {("penalty", 2): -0.1, ("dropout", 1): 0.02, ("batchnorm", 1): -0.05}
    rng = np.random.default_rng(0)
    rows = [{n: f"{n}{i}" for n, i in zip(names, run)} for run in runs]
    frame = pd.DataFrame(rows)
    frame["y"] = [
        0.6 + sum(v for (n, lv), v in effect.items() if run[names.index(n)] == lv) + rng.normal(0, 0.002)
        for run in runs
    ]
    fit = factorial_effects(frame, factors, "y")
    assert not fit.interactions and fit.aliased and all(" × " in n for n in fit.aliased)
    found = {t.name: t.effect for t in fit.effects}
    for (n, lv), v in effect.items():
        assert found[f"{n}{lv}"].low <= v <= found[f"{n}{lv}"].high
    assert found["normalize1"].low <= 0 <= found["normalize1"].high
