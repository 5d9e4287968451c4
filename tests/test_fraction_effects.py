"""scripts/fraction_effects.py: a fraction's trials copied out of a finished grid, and its main effects compared
with the grid's."""

from __future__ import annotations

import pytest
from fraction_effects import main


def test_extract_copies_a_fractions_trials_and_compare_says_where_effects_differ(tmp_path, capsys):
    from ablations.suite import SUITES_DIR, load_suite

    half = tmp_path / "half.yaml"
    half.write_text((SUITES_DIR / "full.yaml").read_text().replace("factors:", "design: {fraction: 2}\nfactors:"))
    source, dest = tmp_path / "grid" / "full", tmp_path / "half" / "full"
    specs = load_suite("full").spec_names
    for spec in specs[:-1]:
        (source / spec / "seed=0").mkdir(parents=True)
        (source / spec / "seed=0" / "result.json").write_text("{}")
    wanted = load_suite(str(half)).spec_names
    if specs[-1] in wanted:  # a spec of the fraction without a finished trial is an error naming it
        with pytest.raises(SystemExit) as stop:
            main(["extract", str(half), "--source", str(source), "--dest", str(dest)])
        assert stop.value.code == 2 and specs[-1] in capsys.readouterr().err
    (source / specs[-1] / "seed=0").mkdir(parents=True)
    (source / specs[-1] / "seed=0" / "result.json").write_text("{}")
    assert main(["extract", str(half), "--source", str(source), "--dest", str(dest)]) == 0
    assert sorted(p.parent.parent.name for p in dest.glob("*/seed=0/result.json")) == sorted(wanted)

    header = "effect,kind,estimate,verdict_low,verdict_high,verdict\n"
    (source / "effects.csv").write_text(
        header + "bn,main,-0.05,-0.06,-0.04,worse\n"
        "l1=0.01,main,-0.2,-0.21,-0.19,worse\n"
        "pixel × bn,interaction,0,0,0,open\n"
    )
    (dest / "effects.csv").write_text(
        header + "bn,main,-0.051,-0.062,-0.040,worse\nl1=0.01,main,0.01,-0.02,0.04,open\n"
    )
    assert main(["compare", str(source), str(dest)]) == 0
    out = capsys.readouterr().out
    assert "| bn | -0.0500 [-0.0600, -0.0400] | -0.0510 [-0.0620, -0.0400] | yes |" in out
    assert "l1=0.01 in " in out and "opposite sign and an estimate outside the other's CI" in out
    assert "pixel × bn" not in out
