"""`python -m ablations.report.compare` (ablations.report.compare): one suite run twice, paired spec by spec and
seed by seed; suites of other settings refused, and no nan printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablations.report import compare, load_results
from lit_cifar.spec import RegularizationSpec
from tests.test_report import NOTEBOOKISH, fake_result, write_results


def test_compare_pairs_two_runs_of_a_suite_and_measures_the_paired_difference(tmp_path: Path, capsys):
    """B is A + 0.01 test accuracy on every trial, with noise: the paired difference comes out near +0.01 and is
    resolved; rates and seed ranges are those written; a spec only one side has is left out."""
    noise = [0.004, -0.003, 0.001, -0.002, 0.0]
    a_results, b_results = [], []
    for order, (name, mean) in enumerate(NOTEBOOKISH.items()):
        spec = RegularizationSpec.parse(name)
        for seed in range(3):
            base = mean + 0.02 * (seed - 1)
            a_results.append(fake_result("s", spec, seed, base, order, train_images_per_s=600.0))
            b_results.append(
                fake_result("s", spec, seed, base + 0.01 + noise[(order + seed) % 5], order, train_images_per_s=1200.0)
            )
    b_results.append(fake_result("s", RegularizationSpec.parse("pixel+dropout=0.5"), 0, 0.4, 9, train_images_per_s=1.0))
    write_results(tmp_path / "fp32" / "s", a_results)
    write_results(tmp_path / "bf16" / "s", b_results)
    pairs = compare.pair_specs(*(load_results(tmp_path / side / "s")[0] for side in ("fp32", "bf16")))
    assert [p.spec for p in pairs] == list(NOTEBOOKISH)
    interval, p_value, n = compare.paired_difference(pairs)
    differences = [0.01 + noise[(order + seed) % 5] for order in range(4) for seed in range(3)]
    assert n == 12 and interval.estimate == pytest.approx(sum(differences) / 12)
    assert interval.low > 0 and p_value < 0.001
    assert compare.main([str(tmp_path / "fp32" / "s"), str(tmp_path / "bf16" / "s")]) == 0
    out = capsys.readouterr().out
    assert "| pixel | 3 / 3 | 0.5000 ± 0.0200 |" in out and "[0.4800, 0.5200] | yes | 600 → 1200 (2.00x) |" in out
    assert f"Paired over 12 (spec, seed) trials: bf16 − fp32 = {interval.estimate:+.4f}" in out
    assert "**better** (margin ±0.01)" in out  # +0.01, clear of 0 and reaching past the margin
    assert "dropout=0.5" not in out and "nan" not in out


def test_compare_refuses_suites_of_other_settings_and_prints_no_nan(tmp_path: Path, capsys):
    pixel = RegularizationSpec.parse("pixel")
    write_results(tmp_path / "a" / "s", [fake_result("s", pixel, 0, 0.5)])
    other = fake_result("s", pixel, 0, 0.5)
    other["settings"] = {**other["settings"], "epochs": 5}
    write_results(tmp_path / "b" / "s", [other])
    with pytest.raises(SystemExit) as stopped:
        compare.main([str(tmp_path / "a" / "s"), str(tmp_path / "b" / "s")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "epochs=2 vs 5" in err and len(err.strip().splitlines()) == 1
    write_results(tmp_path / "c" / "s", [fake_result("s", pixel, 0, 0.51)])  # one seed: no interval
    assert compare.main([str(tmp_path / "a" / "s"), str(tmp_path / "c" / "s")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "no interval" in out


def test_compare_refuses_missing_folders_and_disjoint_runs(tmp_path: Path, capsys):
    write_results(tmp_path / "a" / "s", [fake_result("s", RegularizationSpec.parse("pixel"), 0, 0.5)])
    write_results(tmp_path / "b" / "s", [fake_result("s", RegularizationSpec.parse("baseline"), 0, 0.2)])
    for argv, message in [
        ([str(tmp_path / "a" / "s"), str(tmp_path / "nowhere")], "nowhere is not a folder"),
        ([str(tmp_path / "a" / "s"), str(tmp_path / "b" / "s")], "share no spec with results"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            compare.main(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
