"""Fractional designs (ablations.designs): what they select, and a suite's design (what the report estimates from
a fraction: tests/test_stats.py)."""

from __future__ import annotations

import itertools

import pytest

from ablations.designs import select

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
