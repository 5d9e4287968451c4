"""The seeds rules (ablations.adaptive): until answered and target precision, their decisions and resumable rounds
(no training), and ``--until-answered`` through ``python -m ablations.run`` on tiny synthetic suites. Their error
rates and coverage, by simulation: tests/test_seeds_rule.py."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ablations.adaptive import CAP, OPEN, WIDTH, Answer, Target, plan_rounds, record_rule
from ablations.report import write_report
from ablations.report.report import SEEDS_RULE_FILE
from ablations.report.stats import MARGIN, welch, welch_width
from lit_cifar.spec import RegularizationSpec
from tests.helpers import TINY, results, sweep


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


# ------------------------------------------------------------------------------------------- until answered
def _answer_rounds(truth: dict[str, tuple[float, float]], answer: Answer, seed: int = 0):
    """Train (draw) every round the rule asks for until it is done; returns the final rounds and the draws."""
    rng = np.random.default_rng(seed)
    specs = list(truth)
    finished: dict[str, dict[int, float]] = {s: {} for s in specs}
    while not (rounds := plan_rounds(specs, specs[0], finished, answer)).done:
        for spec, seeds in rounds.missing(finished).items():
            for k in seeds:
                assert k not in finished[spec]  # never the same trial twice
                finished[spec][k] = float(rng.normal(*truth[spec]))
    return rounds, finished


def test_answer_defaults_to_the_reports_margin_and_rejects_bad_values():
    assert Answer().margin == MARGIN and Answer(0.02).margin == 0.02
    assert Answer(min_seeds=3, max_seeds=10).level(8) == pytest.approx(1 - 0.05 / (8 * 8))
    for bad in ({"margin": -0.01}, {"margin": float("nan")}, {"min_seeds": 1}, {"min_seeds": 5, "max_seeds": 4}):
        with pytest.raises(ValueError):
            Answer(**bad)


def test_a_clearly_worse_spec_stops_at_the_minimum_seeds():
    truth = {"ref": (0.64, 0.002), "worse": (0.40, 0.002), "close": (0.64, 0.004)}
    rounds, _ = _answer_rounds(truth, Answer(min_seeds=3, max_seeds=10))
    states = {s.spec: s for s in rounds.states}
    assert states["worse"].status == "worse" and states["worse"].seeds == 3
    assert states["worse"].high < 0
    assert states["close"].seeds > 3  # the rule went on for the comparison that was not answered yet


def test_a_noisy_reference_gets_no_seed_once_every_comparison_is_answered():
    rounds, _ = _answer_rounds({"ref": (0.64, 0.05), "worse": (0.10, 0.001)}, Answer(min_seeds=3, max_seeds=10))
    assert rounds.rounds == 1 and rounds.wanted == {"ref": 3, "worse": 3}


def test_an_equivalent_spec_stops_within_the_margin_and_a_rerun_recomputes_the_rounds():
    truth = {"ref": (0.64, 0.002), "same": (0.641, 0.002)}
    answer = Answer(min_seeds=3, max_seeds=20)
    rounds, finished = _answer_rounds(truth, answer, seed=1)
    same = {s.spec: s for s in rounds.states}["same"]
    assert same.status == "equivalent" and -answer.margin <= same.low and same.high <= answer.margin
    assert 3 < same.seeds < 20 and rounds.wanted == {"ref": same.seeds, "same": same.seeds}
    # the interval is Welch's at the rule's level on the seeds both sides had when it stopped
    check = welch(list(finished["same"].values()), list(finished["ref"].values()), "same", answer.level(1)).effect
    assert (same.low, same.high) == pytest.approx((check.low, check.high))
    again = plan_rounds(["ref", "same"], "ref", finished, answer)
    assert again.done and again.wanted == rounds.wanted and not again.missing(finished)


def test_an_unanswerable_comparison_stops_at_the_cap():
    rounds, _ = _answer_rounds({"ref": (0.64, 0.05), "noisy": (0.63, 0.05)}, Answer(min_seeds=3, max_seeds=5))
    noisy = {s.spec: s for s in rounds.states}["noisy"]
    assert rounds.done and noisy.status == CAP and noisy.seeds == 5
    assert OPEN not in {s.status for s in rounds.states}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--until-answered", "--target-ci", "0.03"], "two seeds rules"),
        (["--until-answered", "--seeds", "0,1"], "--until-answered with --seeds: the rule chooses the seeds"),
        (["--until-answered", "--margin", "-1"], "'-1': give a difference of accuracy in [0, 1)"),
        (["--until-answered", "--shard", "1/2"], "--until-answered with --shard"),
    ],
)
def test_run_refuses_until_answered_with_what_it_cannot_run_with(flags, message, tmp_path, capsys):
    status, _, err = sweep(capsys, "--suite", "notebook", "--logdir", str(tmp_path / "logs"), "--dry-run", *flags)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "logs").exists()


def _suite(tmp_path, text: str):
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\n" + text)
    return str(path)


def test_a_setting_factor_names_the_rounds_by_cell(tmp_path, capsys):
    suite = _suite(tmp_path, "specs: [pixel]\nfactors:\n  lr: [0.001, 0.0001]\n")
    status, out, _ = sweep(capsys, "--suite", suite, "--logdir", str(tmp_path), "--until-answered", "--dry-run")
    assert status == 0
    assert "pixel,lr=0.001 seed=2" in out and "pixel,lr=0.0001 seed=0" in out and "| pixel,lr=0.0001 | 0 |" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "factor, engine", [("", []), ("factors:\n  lr: [0.001, 0.0001]\n", ["--parallel", "2"])], ids=["spec", "lr"]
)
def test_until_answered_trains_rounds_through_the_sweep_and_ends(factor, engine, cifar_dir, tmp_path, capsys):
    """A tiny suite, with and without a setting factor (whose trials the rounds once failed to find, looping for
    ever), in this process and in worker processes: the rounds train seeds 0, 1 of every cell, then seed 2 only
    where a verdict is still open, and end."""
    suite = _suite(tmp_path, f"specs: [pixel, pixel+l1=0.01]\n{factor}")
    logdir = tmp_path / "logs"
    args = ["--suite", suite, "--data-dir", str(cifar_dir), "--logdir", str(logdir), *TINY, "--limit-train", "128"]
    args += engine
    status, out, _ = sweep(capsys, *args, "--until-answered", "--min-seeds", "2", "--max-seeds", "3")
    assert status == 0 and "Until answered" in out
    folders = results(logdir)
    cells = {folder.split("/")[1] for folder in folders}
    assert len(cells) == (4 if factor else 2) and all(("lr=" in c) == bool(factor) for c in cells)
    seeds = {c: sorted(int(f.rsplit("=", 1)[1]) for f in folders if f.split("/")[1] == c) for c in cells}
    assert all(s[:2] == [0, 1] and len(s) <= 3 for s in seeds.values())
    table = out[out.index("Until answered") :].splitlines()
    rounds = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in table if "| [" in line}
    with (logdir / "tiny" / "results.csv").open() as handle:
        compared = [r for r in csv.DictReader(handle) if r["verdict"]]
    assert compared and len(compared) == len(rounds)
    for row in compared:  # the round table and the report read the same interval, to the digit
        cells = rounds[row["spec"]]
        assert cells[2] == f"[{float(row['verdict_low']):+.4f}, {float(row['verdict_high']):+.4f}]"
        assert row["verdict"] == ("open" if cells[3] == CAP else cells[3])
    status, again, _ = sweep(capsys, *args, "--until-answered", "--min-seeds", "2", "--max-seeds", "3")
    assert status == 0 and results(logdir).keys() == folders.keys()  # a rerun trains nothing more


def test_the_report_reads_every_interval_as_the_rule_did(tmp_path):
    """The final round table and results.csv give the same verdicts and intervals: the report reads each
    comparison at the look it stopped at, at the rule's level (the record `record_rule` leaves)."""
    from tests.test_report import fake_result, write_results

    answer = Answer(min_seeds=3, max_seeds=8)
    truth = {
        "pixel": (0.64, 0.004),
        "pixel+bn": (0.60, 0.004),
        "pixel+l1=0.01": (0.642, 0.01),
        "pixel+l2=0.01": (0.64, 0.03),
    }
    rounds, finished = _answer_rounds(truth, answer, seed=2)
    specs = {spec: RegularizationSpec.parse(spec) for spec in truth}
    suite = tmp_path / "s"
    trials = [
        fake_result("s", specs[spec], seed, acc, order=i)
        for i, (spec, values) in enumerate(finished.items())
        for seed, acc in values.items()
    ]
    write_results(suite, trials)
    record_rule(suite, answer)
    write_report(suite, margin=answer.margin)
    with (suite / "results.csv").open() as handle:
        rows = {r["spec"]: r for r in csv.DictReader(handle)}
    assert {s.seeds for s in rounds.states} != {3}  # some comparison needed more looks than the first
    for state in rounds.states[1:]:
        row = rows[state.spec]
        assert row["verdict"] == ("open" if state.status == CAP else state.status)
        assert (float(row["verdict_low"]), float(row["verdict_high"])) == pytest.approx((state.low, state.high))
    assert "as --until-answered read them" in (suite / "results.md").read_text()
    record_rule(suite, Target(0.02))  # a target-precision run reads 95% intervals: the record goes
    assert not (suite / SEEDS_RULE_FILE).exists()
