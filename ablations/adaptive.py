"""The seeds rules: a suite runs in rounds and adds seeds only where a comparison with the reference needs them.
`Answer` (``--until-answered``) adds a seed to each still ``open`` comparison, reading Welch's interval at
``1 - alpha / (comparisons x looks)`` so every look holds together; `Target` (``--target-ci W``) adds seeds until
each difference's 95% interval is at most ``W`` wide, judged on each variance's upper `GUARD` bound. The rounds are
a function of the finished results, so a rerun continues. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ablations.rules import MARGIN, check, check_margin, finite, integer
from ablations.status import TrialState, TrialStatus
from ablations.store import list_trials

GUARD = 0.999  # the variance bound the target-precision decision uses: its one-sided confidence level
WIDTH, CAP, OPEN = "width reached", "cap", "open"
ALPHA = 0.05  # until answered: the chance that any interval read at any look misses, over every comparison


def _check_seeds(rule: Union[Target, Answer]) -> None:
    check("min_seeds", rule.min_seeds, integer(2, " (an interval needs two seeds)"))
    check("max_seeds", rule.max_seeds, integer(rule.min_seeds, " (min_seeds)"))


@dataclass(frozen=True)
class Target:
    """``--target-ci``: every difference from the reference within `width` (95% CI high - low)."""

    width: float
    min_seeds: int = 3
    max_seeds: int = 10

    def __post_init__(self) -> None:
        check("target width", self.width, finite(0))
        _check_seeds(self)


@dataclass(frozen=True)
class Answer:
    """``--until-answered``: every comparison better, worse or equivalent (``±margin``) at level ``1 - alpha``."""

    margin: float = MARGIN
    min_seeds: int = 3
    max_seeds: int = 10
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        check_margin(self.margin)
        _check_seeds(self)
        check("alpha", self.alpha, finite(0, high=0.5))

    @property
    def looks(self) -> int:
        """How often a comparison can be read: at ``min_seeds .. max_seeds`` seeds."""
        return self.max_seeds - self.min_seeds + 1

    def level(self, comparisons: int) -> float:
        """Each look's confidence level: ``1 - alpha / (comparisons x looks)``."""
        return 1 - self.alpha / (max(comparisons, 1) * self.looks)


SeedsRule = Union[Target, Answer]


def answer_interval(
    n: Any, mean: Any, var: Any, ref_mean: Any, ref_var: Any, answer: Answer, comparisons: int
) -> tuple[np.ndarray, np.ndarray]:
    """The interval a look reads (`compare_with_reference`'s, from `n` seeds a side), numpy-broadcast."""
    from ablations.report.stats import welch_width  # scipy and statsmodels: not for every command line

    half = welch_width(n, var, n, ref_var, level=answer.level(comparisons)) / 2
    diff = np.asarray(mean, float) - np.asarray(ref_mean, float)
    return diff - half, diff + half


def verdicts(low: Any, high: Any, margin: float) -> np.ndarray:
    """`ablations.report.stats.verdict` of every interval, numpy-broadcast (an array of strings)."""
    from ablations.report.stats import verdict

    return np.asarray(np.frompyfunc(lambda lo, hi: verdict(float(lo), float(hi), margin), 2, 1)(low, high), str)


def decide_answered(n: np.ndarray, mean: np.ndarray, var: np.ndarray, reference: int, answer: Answer) -> np.ndarray:
    """One round of until answered: seeds to add per cell (last axis; leading axes are independent studies): one to
    each comparison still ``open`` with as many seeds as the reference, under the cap, and then one to the reference."""
    n = np.asarray(n)
    ref = (slice(None),) * (n.ndim - 1) + (slice(reference, reference + 1),)
    low, high = answer_interval(n, mean, var, np.asarray(mean)[ref], np.asarray(var)[ref], answer, n.shape[-1] - 1)
    add = ((n == n[ref]) & (n < answer.max_seeds) & (verdicts(low, high, answer.margin) == OPEN)).astype(int)
    add[..., reference] = 0  # the reference's own comparison is no comparison
    add[..., reference] = add.any(axis=-1)
    return add


def decide(n: np.ndarray, seen_var: np.ndarray, reference: int, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """One round of target precision: ``(seeds to add, decision width)`` per cell (last axis), from each cell's
    variance but its newest seed; the reference gets a seed when an open comparison's uncertainty is mostly its own."""
    from scipy import stats as scipy_stats

    from ablations.report.stats import welch_width

    n = np.asarray(n, float)
    seen = n - 1
    with np.errstate(divide="ignore", invalid="ignore"):  # each variance's upper GUARD bound, nan below 2 seeds
        chi2 = scipy_stats.chi2.ppf(1 - GUARD, np.maximum(seen - 1, 1))
        guarded = np.where(seen >= 2, (seen - 1) * np.asarray(seen_var, float) / chi2, np.nan)
    ref_n, ref_v = seen[..., reference : reference + 1], guarded[..., reference : reference + 1]
    width = welch_width(seen, guarded, ref_n, ref_v)
    width[..., reference] = 0.0
    wide = ~(width <= target.width)
    room = n < target.max_seeds
    with np.errstate(invalid="ignore"):
        ref_heavy = ~(ref_v / ref_n < guarded / seen)
    add = (wide & room).astype(int)
    add[..., reference] = np.any(wide & ref_heavy, axis=-1) & room[..., reference]
    return add, width


@dataclass(frozen=True)
class SpecState:
    """Where one cell stands after the finished rounds."""

    spec: str
    seeds: int
    width: float  # the width of the interval its rule reads (nan for the reference)
    status: str  # "width reached", "cap", "open", "reference", or a verdict (until answered)
    next_seeds: int  # seeds the next round trains for it
    low: float = float("nan")  # until answered: the interval its verdict was read from
    high: float = float("nan")


@dataclass(frozen=True)
class Rounds:
    """The rule replayed over finished results: the seeds each cell should have now, and what is missing."""

    target: SeedsRule
    reference: str
    wanted: dict[str, int]  # cell -> seeds 0..k-1 it should have after the rounds decided so far
    states: list[SpecState]
    rounds: int
    done: bool  # every comparison stopped with every wanted seed

    def missing(self, finished: Mapping[str, Mapping[int, float]]) -> dict[str, list[int]]:
        """Cell -> the seeds the next round trains."""
        todo = {s: [k for k in range(n) if k not in finished.get(s, {})] for s, n in self.wanted.items()}
        return {s: seeds for s, seeds in todo.items() if seeds}


def _seen_var(values: Sequence[Sequence[Optional[float]]]) -> np.ndarray:
    """Per cell, the variance of its values but the newest (nan with fewer than two)."""
    return np.array([np.var(np.array(row[:-1], dtype=float), ddof=1) if len(row) > 2 else np.nan for row in values])


def plan_rounds(
    specs: Sequence[str], reference: str, finished: Mapping[str, Mapping[int, float]], target: SeedsRule
) -> Rounds:
    """Replay the rounds `finished` (cell -> {seed: test accuracy}) allows, up to the first whose seeds are not all
    finished (what runs next). `specs`: every cell, `reference` among them (else ValueError)."""
    from ablations.report.stats import compare_with_reference, welch_width

    if reference not in specs:
        raise ValueError(f"reference {reference!r} is not one of {', '.join(specs)}")
    specs = list(specs)
    index = specs.index(reference)
    wanted, rounds, done = np.full(len(specs), target.min_seeds), 1, False
    while True:
        known = {s: [finished[s][k] for k in range(n) if k in finished.get(s, {})] for s, n in zip(specs, wanted)}
        n = np.array([len(v) for v in known.values()])
        if (n < wanted).any():
            break
        if isinstance(target, Answer):
            var = np.array([np.var(v, ddof=1) for v in known.values()])
            add = decide_answered(wanted, np.array([np.mean(v) for v in known.values()]), var, index, target)
        else:
            add = decide(wanted, _seen_var(list(known.values())), index, target)[0]
        if not add.any():
            done = True
            break
        wanted, rounds = wanted + add, rounds + 1
    nan = float("nan")
    states = {reference: SpecState(reference, int(n[index]), nan, "reference", int(wanted[index] - n[index]))}
    if isinstance(target, Answer):  # the report's function, as the report reads the suite
        for t in compare_with_reference(known, reference, 1 - target.alpha, target.margin, target.looks):
            k = specs.index(t.name)
            status = CAP if done and t.verdict == OPEN else t.verdict
            low, high = t.effect.low, t.effect.high
            states[t.name] = SpecState(t.name, int(n[k]), high - low, status, int(wanted[k] - n[k]), low, high)
    else:
        var = np.array([np.var(v, ddof=1) if len(v) > 1 else nan for v in known.values()])
        width = welch_width(n, var, n[index], var[index])
        wide = ~(decide(n, _seen_var(list(known.values())), index, target)[1] <= target.width)
        for k, spec in enumerate(specs):
            status = OPEN if not done else CAP if wide[k] else WIDTH
            states.setdefault(spec, SpecState(spec, int(n[k]), float(width[k]), status, int(wanted[k] - n[k])))
    wanted_by_cell = {s: int(k) for s, k in zip(specs, wanted)}
    return Rounds(target, reference, wanted_by_cell, [states[s] for s in specs], rounds, done)


def finished_values(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """cell -> {seed: test accuracy} of result records (a record's ``cell``, else its spec)."""
    table: dict[str, dict[int, float]] = {}
    for r in results:
        table.setdefault(r.get("cell", r["spec"]), {})[int(r["seed"])] = float(r["metrics"]["test/acc"])
    return table


def run_rounds(
    specs: Sequence[str],
    reference: str,
    target: SeedsRule,
    read: Callable[[], Mapping],
    run_round: Callable[[dict[str, list[int]]], bool],
) -> Rounds:
    """Run rounds until done: `read()` gives the finished values, `run_round(missing)` trains a round (any
    engine) and returns False to stop. A round that leaves the same seeds missing stops too."""
    before: Optional[dict[str, list[int]]] = None
    while True:
        finished = read()
        rounds = plan_rounds(specs, reference, finished, target)
        missing = rounds.missing(finished)
        if rounds.done or not missing or missing == before or not run_round(missing):
            return plan_rounds(specs, reference, read(), target)
        before = missing


def status_table(rounds: Rounds) -> str:
    """Per cell: seeds, interval (or width) and why it stopped (markdown)."""
    from ablations.report.board import markdown_table

    t = rounds.target
    if isinstance(t, Answer):
        m = len(rounds.states) - 1
        head = (
            f"Until answered: each comparison with `{rounds.reference}` gets seeds until its verdict is better, worse "
            f"or equivalent (within ±{t.margin:g}), seeds {t.min_seeds} to {t.max_seeds}; every look reads Welch's "
            f"interval at level {t.level(m):.5f} (alpha {t.alpha:g} spent over {m} comparison(s) x {t.looks} looks)"
        )
        columns = ["cell", "seeds", "interval", "verdict", "next round"]
    else:
        head = (
            f"Target: every 95% CI of the difference from `{rounds.reference}` at most {t.width:g} wide "
            f"(seeds {t.min_seeds} to {t.max_seeds})"
        )
        columns = ["spec", "seeds", "CI width", "stopped because", "next round"]
    rows = []
    for s in rounds.states:
        shown = f"[{s.low:+.4f}, {s.high:+.4f}]" if isinstance(t, Answer) else f"{s.width:.4f}"
        rows.append([s.spec, s.seeds, "—" if math.isnan(s.width) else shown, s.status, s.next_seeds or ""])
    done = "" if rounds.done else ", not finished"
    return f"{head}; {rounds.rounds} round(s){done}.\n\n" + markdown_table(columns, rows)


# ------------------------------------------------------------------------------------- ablations.run
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The seeds-rule flags of ``python -m ablations.run``."""
    group = parser.add_argument_group("seeds rules (replace --seeds; seeds 0, 1, 2, ... in rounds)")
    group.add_argument(
        "--until-answered",
        action="store_true",
        help="add seeds to each comparison with the reference until its verdict is better, worse or "
        "equivalent (within --margin, the report's), with intervals valid over every look and comparison",
    )
    group.add_argument(
        "--target-ci",
        type=float,
        metavar="W",
        help="precision target instead: add seeds to cells whose 95%% CI of the difference from the "
        "reference is wider than W",
    )
    group.add_argument("--min-seeds", type=int, help="seeds of the first round (default 3)")
    group.add_argument("--max-seeds", type=int, help="most seeds per cell (default 10)")


def target_of(args: argparse.Namespace) -> Optional[SeedsRule]:
    """The command line's seeds rule, or None (ValueError for bad values or flags it cannot run with)."""
    flag = "--until-answered" if args.until_answered else "--target-ci" if args.target_ci is not None else None
    if args.until_answered and args.target_ci is not None:
        raise ValueError("--until-answered and --target-ci are two seeds rules: choose one")
    if flag is None:
        given = [f"--{n.replace('_', '-')}" for n in ("min_seeds", "max_seeds") if getattr(args, n) is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise ValueError(
                f"{' and '.join(given)} {verb} only with --until-answered or --target-ci (a seeds rule): add it or "
                "drop it"
            )
        return None
    clashes = {  # the options a seeds rule cannot run with, and why
        "shard": f"the rounds depend on every shard's results; run one sweep per round without {flag}, or run {flag} "
        "from a single process (any --engine)",
        "strategy": f"run the rounds with one process per trial (--parallel, --engine ray); a {flag} sweep under DDP "
        "is not supported yet",
        "seeds": "the rule chooses the seeds (0, 1, 2, ...): drop --seeds",
    }
    for option, why in clashes.items():
        if getattr(args, option):
            raise ValueError(f"{flag} with --{option}: {why}")
    bounds = {"min_seeds": args.min_seeds, "max_seeds": args.max_seeds, "margin": args.margin}
    chosen = {k: v for k, v in bounds.items() if v is not None}
    return Answer(**chosen) if args.until_answered else Target(args.target_ci, **chosen)


def record_rule(suite_dir: Path, target: SeedsRule) -> None:
    """Record an `Answer` rule in the suite's folder for the report (a `Target` rule's intervals are 95% each)."""
    from ablations.report.report import SEEDS_RULE_FILE
    from ablations.store import write_text_atomic

    path = Path(suite_dir) / SEEDS_RULE_FILE
    if isinstance(target, Target):
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"rule": "until answered", "alpha": target.alpha, "looks": target.looks, "margin": target.margin}
    write_text_atomic(path, json.dumps(record) + "\n")


def run_cli(
    args: argparse.Namespace,
    target: SeedsRule,
    plan_of: Callable[[list[int]], Any],
    run_plan: Callable[[Any], list[TrialStatus]],
) -> int:
    """``ablations.run --until-answered`` or ``--target-ci``: `plan_of(seeds)` makes the run's plan, `run_plan`
    runs a plan's unfinished trials with the chosen engine (once per round) and returns their statuses."""
    from ablations.report.report import DEFAULT_REFERENCE, write_report

    full = plan_of(list(range(target.max_seeds)))
    cells = list(dict.fromkeys(t.cell for t in full.trials))
    reference = next((r for r in (full.reference, DEFAULT_REFERENCE) if r in cells), cells[0])
    suite_dir = Path(full.options.logdir) / full.suite.name
    trials = {t.name: t for t in full.trials}

    def read() -> dict[str, dict[int, float]]:
        results = list_trials(suite_dir).results.values()
        mine = [
            r
            for r in results
            if (t := trials.get(f"{r.get('cell', r['spec'])}/seed={r['seed']}"))
            and t.settings_hash == r["settings_hash"]
        ]
        return finished_values(mine)

    def run_round(missing: dict[str, list[int]]) -> bool:
        todo = [trials[f"{cell}/seed={k}"] for cell, seeds in missing.items() for k in seeds]
        if args.dry_run:
            print("next round:\n" + "\n".join(f"{t.cell} seed={t.seed}" for t in todo))
            return False
        statuses = run_plan(type(full)(**{**full.__dict__, "trials": todo}))
        return not any(s.state is TrialState.FAILED for s in statuses)

    if not args.dry_run:
        record_rule(suite_dir, target)
    rounds = run_rounds(cells, reference, target, read, run_round)
    if not args.dry_run:
        margin = target.margin if isinstance(target, Answer) else args.margin
        print(write_report(suite_dir, reference=reference, margin=MARGIN if margin is None else margin))
    print(status_table(rounds))
    return 0 if args.dry_run or rounds.done else 1
