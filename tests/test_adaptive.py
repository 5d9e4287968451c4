"""The target-precision rule (ablations.adaptive): its widths, its decisions and its resumable rounds. No training.
Its coverage and false-positive rate, by simulation: tests/test_seeds_rule.py."""

from __future__ import annotations

import numpy as np
import pytest

from ablations.adaptive import CAP, WIDTH, Target, plan_rounds
from ablations.report.stats import welch, welch_width


def test_welch_width_is_the_width_of_the_stats_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.6, 0.01, 5), rng.normal(0.64, 0.002, 3)
    interval = welch(list(a), list(b), "x").effect
    assert welch_width(5, a.var(ddof=1), 3, b.var(ddof=1)) == pytest.approx(interval.high - interval.low)


def test_target_rejects_bad_values():
    for bad in (
        {"width": 0},
        {"width": float("nan")},
        {"width": 0.01, "min_seeds": 1},
        {"width": 0.01, "min_seeds": 4, "max_seeds": 3},
    ):
        with pytest.raises(ValueError):
            Target(**bad)


def test_a_decision_never_sees_the_newest_seed():
    """Changing each spec's newest value changes no decision; changing an older one can."""
    target = Target(0.02, 3, 6)
    values = {"ref": [0.64, 0.641, 0.639, 0.64], "a": [0.60, 0.601, 0.599, 0.6]}
    base = plan_rounds(["ref", "a"], "ref", {s: dict(enumerate(v)) for s, v in values.items()}, target)
    moved = {s: dict(enumerate(v[:-1] + [v[-1] + 0.3])) for s, v in values.items()}
    assert plan_rounds(["ref", "a"], "ref", moved, target).wanted == base.wanted


def test_rounds_resume_from_finished_results_and_stop_on_width_or_cap():
    rng = np.random.default_rng(3)
    specs = ["ref", "quiet", "noisy"]
    truth = {"ref": (0.64, 0.0005), "quiet": (0.60, 0.0005), "noisy": (0.50, 0.1)}
    target = Target(0.1, 3, 6)
    finished: dict[str, dict[int, float]] = {s: {} for s in specs}
    trained = []
    while True:
        rounds = plan_rounds(specs, "ref", finished, target)
        missing = rounds.missing(finished)
        if rounds.done:
            break
        for spec, seeds in missing.items():
            for k in seeds:
                finished[spec][k] = float(rng.normal(*truth[spec]))
                trained.append((spec, k))
    assert len(trained) == len(set(trained))  # never the same trial twice
    states = {s.spec: s for s in rounds.states}
    assert states["quiet"].status == WIDTH and 4 <= states["quiet"].seeds < 6  # 3+ seen, and the newest
    assert states["noisy"].status == CAP and states["noisy"].seeds == 6
    again = plan_rounds(specs, "ref", finished, target)  # a rerun recomputes the same rounds from disk
    assert again.done and again.wanted == rounds.wanted and not again.missing(finished)
    partial = {s: {k: v for k, v in seeds.items() if k < 4} for s, seeds in finished.items()}
    resumed = plan_rounds(specs, "ref", partial, target)
    assert not resumed.done and resumed.missing(partial) == {"noisy": [4]} or resumed.missing(partial)["noisy"][0] == 4


@pytest.mark.parametrize("flags", [["--shard", "1/2"], ["--seeds", "0,1"], ["--target-ci", "0"]])
def test_run_refuses_target_ci_with_shard_or_seeds_or_bad_width(flags, tmp_path, capsys):
    from ablations.run import main

    argv = ["--suite", "notebook", "--logdir", str(tmp_path), "--dry-run"]
    argv += flags if flags[0] == "--target-ci" else ["--target-ci", "0.03", *flags]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "target" in capsys.readouterr().err


def test_dry_run_lists_the_next_round_of_the_committed_replication(capsys):
    from pathlib import Path

    from ablations.run import main

    logdir = Path(__file__).resolve().parents[1] / "logs" / "replication"
    assert main(["--suite", "notebook", "--logdir", str(logdir), "--target-ci", "0.03", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "baseline seed=3" in out and "pixel seed=3" not in out.split("Target:")[0]
