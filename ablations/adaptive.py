"""The seeds rules: run a suite in rounds and add seeds only where a comparison with the reference needs them.

Two rules share the rounds (`plan_rounds`, `run_rounds`, `run_cli`) and the report's statistics
(`ablations.report.stats`: Welch's interval, `welch_width`, `verdict`):

- **Until answered** (`Answer`, ``--until-answered``; the harness's seeds rule): a comparison gets seeds until its
  verdict is ``better``, ``worse`` or ``equivalent`` (within ``±margin``), or it has ``max_seeds``. Round 1 trains
  every spec with seeds ``0 .. min_seeds-1``; each later round adds the next seed to every spec whose comparison is
  still open, and to the reference while any is. An open comparison is thus read at each look with ``n`` seeds
  on both sides, ``n = min_seeds .. max_seeds``. Repeated looks at many comparisons are made valid by spending
  the error rate over them in advance: each look at each comparison reads Welch's interval at level
  ``1 - alpha / (comparisons x looks)``, the uniform alpha-spending function of Lan & DeMets (Biometrika 70,
  1983) spent by Bonferroni's inequality, which needs no model of how the looks are correlated. Whatever the data
  and whichever look a comparison stops at, the chance that any interval read at any look misses its true
  difference is at most ``alpha``: the intervals are simultaneous over the comparisons and valid under optional
  stopping, and so is every verdict read from them.
- **Target precision** (`Target`, ``--target-ci W``): a spec gets seeds until Welch's 95% interval of its
  difference from the reference is at most ``W`` wide, or the cap. It stops on the interval's width, never on the
  answer; a spread small by chance would stop it too early, so the decision is guarded twice: it uses the width
  the interval would have with each variance at its upper ``GUARD`` (chi-squared) confidence bound, and it reads
  every spec's seeds but its newest one. The reference gets a seed in a round when some open comparison's
  uncertainty comes mostly from it.

Cells are what the rules count: a suite's spec, or its spec and setting-factor levels (``pixel,lr=0.001``), as the
report names its rows. Seeds are added in order (0, 1, 2, ...), so the rounds are a function of the finished
results: a rerun recomputes them from disk and continues. ``scripts/seeds_rule.py`` simulates both rules on known
truths (error rates, coverage, trials against a fixed design) and replays them on finished results. Torch-free.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ablations.rules import MARGIN, check, check_margin, finite, integer
from ablations.status import TrialState, TrialStatus

GUARD = 0.999  # the variance bound the target-precision decision uses: its one-sided confidence level
WIDTH = "width reached"
CAP = "cap"
OPEN = "open"
ALPHA = 0.05  # until answered: the chance that any interval read at any look misses, over every comparison


@dataclass(frozen=True)
class Target:
    """What the rule aims for: every difference from the reference within `width` (95% CI high - low)."""

    width: float
    min_seeds: int = 3
    max_seeds: int = 10

    def __post_init__(self) -> None:
        check("target width", self.width, finite(0))
        check("min_seeds", self.min_seeds, integer(2, " (an interval needs two seeds)"))
        check("max_seeds", self.max_seeds, integer(self.min_seeds, " (min_seeds)"))


@dataclass(frozen=True)
class Answer:
    """What ``--until-answered`` aims for: every comparison's verdict in (better, worse, equivalent within
    ``±margin``), each look's interval at `level` so that all of them hold together with probability
    ``1 - alpha``."""

    margin: float = MARGIN  # the report's default
    min_seeds: int = 3
    max_seeds: int = 10
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        check_margin(self.margin)
        check("min_seeds", self.min_seeds, integer(2, " (an interval needs two seeds)"))
        check("max_seeds", self.max_seeds, integer(self.min_seeds, " (min_seeds)"))
        check("alpha", self.alpha, finite(0, high=0.5))

    @property
    def looks(self) -> int:
        """How often a comparison can be read: at ``min_seeds .. max_seeds`` seeds."""
        return self.max_seeds - self.min_seeds + 1

    def level(self, comparisons: int) -> float:
        """The confidence level of each look's interval: ``1 - alpha / (comparisons x looks)`` (Bonferroni's
        spending of `alpha` over every look at every comparison)."""
        return 1 - self.alpha / (max(comparisons, 1) * self.looks)


def answer_interval(
    n: Any, mean: Any, var: Any, ref_mean: Any, ref_var: Any, answer: Answer, comparisons: int
) -> tuple[np.ndarray, np.ndarray]:
    """The interval a look reads: Welch's interval of ``mean - ref_mean`` with `n` seeds on both sides at
    ``answer.level(comparisons)`` (the report's `welch_width`), numpy-broadcast."""
    from ablations.report.stats import welch_width

    half = welch_width(n, var, n, ref_var, level=answer.level(comparisons)) / 2
    diff = np.asarray(mean, float) - np.asarray(ref_mean, float)
    return diff - half, diff + half


def verdicts(low: Any, high: Any, margin: float) -> np.ndarray:
    """`ablations.report.stats.verdict` of every interval, numpy-broadcast (an array of strings)."""
    from ablations.report.stats import verdict

    return np.asarray(np.frompyfunc(lambda lo, hi: verdict(float(lo), float(hi), margin), 2, 1)(low, high), str)


def decide_answered(n: np.ndarray, mean: np.ndarray, var: np.ndarray, reference: int, answer: Answer) -> np.ndarray:
    """One round's decision of the until-answered rule: seeds to add per spec.

    `n`, `mean` and `var` (ddof=1) hold each spec's seeds and their statistics along the last axis (leading axes
    are independent studies). A comparison is open while its spec has as many seeds as the reference (a stopped
    one falls behind), under the cap, and its interval at this look gives the verdict ``open``; an open
    comparison's spec gets one seed, and the reference one while any comparison is open.
    """
    n = np.asarray(n)
    comparisons = n.shape[-1] - 1
    ref = (slice(None),) * (n.ndim - 1) + (slice(reference, reference + 1),)
    low, high = answer_interval(n, mean, var, np.asarray(mean)[ref], np.asarray(var)[ref], answer, comparisons)
    looking = (n == n[ref]) & (n < answer.max_seeds)
    add = (looking & (verdicts(low, high, answer.margin) == OPEN)).astype(int)
    add[..., reference] = 0
    add[..., reference] = add.any(axis=-1)
    return add


def _guarded(n: np.ndarray, var: np.ndarray) -> np.ndarray:
    """The variance's upper `GUARD` confidence bound: ``(n-1) s² / chi2_{1-GUARD}(n-1)`` (nan for ``n < 2``)."""
    from scipy import stats as scipy_stats

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n >= 2, (n - 1) * var / scipy_stats.chi2.ppf(1 - GUARD, np.maximum(n - 1, 1)), np.nan)


def decide(n: np.ndarray, seen_var: np.ndarray, reference: int, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """One round's decision: ``(seeds to add, decision width)`` per spec.

    `n` holds each spec's seed count along the last axis (leading axes are independent studies), `seen_var` the
    test-accuracy variance of its seeds but the newest; `reference` is the reference spec's
    index. A spec is open while the guarded width of its difference from the reference, from the seeds the
    decision sees, is over `target.width` (or cannot be computed yet) and it has fewer than `target.max_seeds`;
    an open spec gets one seed, and the reference gets one when some open comparison's uncertainty is mostly the
    reference's.
    """
    from ablations.report.stats import welch_width

    n = np.asarray(n, float)
    seen = n - 1
    gv = _guarded(seen, np.asarray(seen_var, float))
    ref_n, ref_v = seen[..., reference : reference + 1], gv[..., reference : reference + 1]
    width = welch_width(seen, gv, ref_n, ref_v)
    width[..., reference] = 0.0
    wide = ~(width <= target.width)  # nan (too few seeds seen) counts as wide
    room = n < target.max_seeds
    add = (wide & room).astype(int)
    add[..., reference] = 0
    with np.errstate(invalid="ignore"):
        ref_heavy = ~(ref_v / ref_n < gv / seen)
    ref_wanted = np.any(wide & ref_heavy, axis=-1) & room[..., reference]
    add[..., reference] = ref_wanted.astype(int)
    return add, width


SeedsRule = Union[Target, Answer]  # the two seeds rules


@dataclass(frozen=True)
class SpecState:
    """Where one cell stands after the finished rounds."""

    spec: str
    seeds: int
    width: float  # the width of the interval of its difference from the reference its rule reads (nan for it)
    status: str  # "width reached", "cap", "open" (more seeds wanted), "reference", or a verdict (until answered)
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
    done: bool  # every comparison stopped (answered, within the width or at the cap) with every wanted seed

    def missing(self, finished: Mapping[str, Mapping[int, float]]) -> dict[str, list[int]]:
        """Cell -> the seeds the next round trains."""
        return {
            s: [k for k in range(n) if k not in finished.get(s, {})]
            for s, n in self.wanted.items()
            if any(k not in finished.get(s, {}) for k in range(n))
        }


def plan_rounds(
    specs: Sequence[str], reference: str, finished: Mapping[str, Mapping[int, float]], target: SeedsRule
) -> Rounds:
    """Replay the rounds the finished results allow: round 1 wants seeds ``0..min_seeds-1`` of every cell; each
    later round follows the rule's decision (`decide_answered` or `decide`) on the seeds ``0..k-1`` decided before.
    Stops at the first round whose seeds are not all finished (that round is what runs next).

    Args:
        specs: every cell of the study, in order (`reference` among them).
        finished: cell -> {seed: test accuracy} of the finished trials (other seeds are ignored).

    Raises:
        ValueError: if `reference` is not one of `specs`.
    """
    if reference not in specs:
        raise ValueError(f"reference {reference!r} is not one of {', '.join(specs)}")
    index = list(specs).index(reference)
    wanted = np.full(len(specs), target.min_seeds)
    rounds = 1
    while True:
        values = [[finished.get(s, {}).get(k) for k in range(n)] for s, n in zip(specs, wanted)]
        if any(v is None for row in values for v in row):
            return _rounds(specs, reference, wanted, values, target, rounds, done=False)
        if isinstance(target, Answer):
            add = decide_answered(wanted, *_mean_var(values), index, target)
        else:
            add, _ = decide(wanted, _seen_var(values), index, target)
        if not add.any():
            return _rounds(specs, reference, wanted, values, target, rounds, done=True)
        wanted = wanted + add
        rounds += 1


def _rounds(
    specs: Sequence[str],
    reference: str,
    wanted: np.ndarray,
    values: list[list[Optional[float]]],
    target: SeedsRule,
    rounds: int,
    done: bool,
) -> Rounds:
    from ablations.report.stats import welch_width

    index = list(specs).index(reference)
    known = {s: [v for v in row if v is not None] for s, row in zip(specs, values)}
    n = np.array([len(known[s]) for s in specs], float)
    var = np.array([np.var(known[s], ddof=1) if len(known[s]) > 1 else np.nan for s in specs])
    width = welch_width(n, var, n[index], var[index])
    states = []
    for i, spec in enumerate(specs):
        missing = int(wanted[i] - n[i])
        low = high = float("nan")
        if spec == reference:
            status = "reference"
        elif isinstance(target, Answer):
            k = min(len(known[spec]), len(known[reference]))  # the look's seeds, on both sides
            if k >= 2:
                mine, ref = known[spec][:k], known[reference][:k]
                bounds = answer_interval(
                    k, np.mean(mine), np.var(mine, ddof=1), np.mean(ref), np.var(ref, ddof=1), target, len(specs) - 1
                )
                low, high = float(bounds[0]), float(bounds[1])
            status = str(verdicts(low, high, target.margin))
            if done and status == OPEN:
                status = CAP
            width[i] = high - low
        elif not done:
            status = OPEN
        else:
            status = CAP if n[i] >= target.max_seeds and _wide(n, list(known.values()), i, index, target) else WIDTH
        state = SpecState(spec, int(n[i]), float("nan") if i == index else float(width[i]), status, missing, low, high)
        states.append(state)
    return Rounds(target, reference, {s: int(k) for s, k in zip(specs, wanted)}, states, rounds, done)


def _mean_var(values: Sequence[Sequence[Optional[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the mean and variance (ddof=1) of its values."""
    rows = [np.array(row, dtype=float) for row in values]
    return np.array([r.mean() for r in rows]), np.array([np.var(r, ddof=1) for r in rows])


def _seen_var(values: Sequence[Sequence[Optional[float]]]) -> np.ndarray:
    """Per spec, the variance of its values but the newest (nan with fewer than two)."""
    return np.array([np.var(np.array(row[:-1], dtype=float), ddof=1) if len(row) > 2 else np.nan for row in values])


def _wide(n: np.ndarray, values: Sequence[Sequence[float]], i: int, ref: int, target: Target) -> bool:
    """Whether spec `i`'s comparison is still wider than the target, as the decision sees it."""
    from ablations.report.stats import welch_width

    seen = n - 1
    gv = _guarded(seen, _seen_var(values))
    return not bool(welch_width(seen[i], gv[i], seen[ref], gv[ref]) <= target.width)


# ------------------------------------------------------------------------------------------- from disk
def finished_values(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """cell -> {seed: test accuracy} from result records (as `ablations.report.load_results` reads them); a cell is
    the record's ``cell`` (spec and setting-factor levels) where it has one, else its spec."""
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
    """Run rounds until done: `read()` gives cell -> {seed: accuracy} of the finished trials, `run_round(missing)`
    trains the given seeds of each cell (once per round, with any engine) and returns False to stop (a failed
    trial). A round that leaves the same seeds missing (results that cannot be read back) stops them too.
    Returns where the rounds stand at the end."""
    before: Optional[dict[str, list[int]]] = None
    while True:
        rounds = plan_rounds(specs, reference, read(), target)
        missing = rounds.missing(read())
        if rounds.done or not missing or missing == before or not run_round(missing):
            return plan_rounds(specs, reference, read(), target)
        before = missing


def status_table(rounds: Rounds) -> str:
    """Per cell: seeds, interval and why it stopped (markdown)."""
    t = rounds.target
    if isinstance(t, Answer):
        comparisons = len(rounds.states) - 1
        head = (
            f"Until answered: each comparison with `{rounds.reference}` gets seeds until its verdict is better, worse "
            f"or equivalent (within ±{t.margin:g}), seeds {t.min_seeds} to {t.max_seeds}; every look reads Welch's "
            f"interval at level {t.level(comparisons):.5f} (alpha {t.alpha:g} spent over {comparisons} comparison(s) "
            f"x {t.looks} looks: all intervals hold together with probability {1 - t.alpha:g})"
        )
        columns = "| cell | seeds | interval | verdict | next round |"
    else:
        head = (
            f"Target: every 95% CI of the difference from `{rounds.reference}` at most {t.width:g} wide "
            f"(seeds {t.min_seeds} to {t.max_seeds})"
        )
        columns = "| spec | seeds | CI width | stopped because | next round |"
    lines = [f"{head}; {rounds.rounds} round(s)" + ("" if rounds.done else ", not finished") + ".", "", columns]
    lines.append("|---|---:|---:|---|---:|")
    for s in rounds.states:
        if isinstance(t, Answer):
            shown = "—" if math.isnan(s.low) else f"[{s.low:+.4f}, {s.high:+.4f}]"
        else:
            shown = "—" if math.isnan(s.width) else f"{s.width:.4f}"
        lines.append(f"| {s.spec} | {s.seeds} | {shown} | {s.status} | {s.next_seeds or ''} |")
    return "\n".join(lines)


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
    """The command line's seeds rule (`Answer` or `Target`), or None without one (ValueError for bad values or
    flags it cannot run with)."""
    flag = "--until-answered" if args.until_answered else "--target-ci" if args.target_ci is not None else None
    if args.until_answered and args.target_ci is not None:
        raise ValueError("--until-answered and --target-ci are two seeds rules: choose one")
    if flag is None:
        given = [f"--{n.replace('_', '-')}" for n in ("min_seeds", "max_seeds") if getattr(args, n) is not None]
        if given:
            need = flag or "--until-answered or --target-ci"
            verb = "apply" if len(given) > 1 else "applies"
            raise ValueError(f"{' and '.join(given)} {verb} only with {need} (a seeds rule): add it or drop it")
        return None
    if args.shard:
        raise ValueError(
            f"{flag} with --shard: the rounds depend on every shard's results; run one sweep per "
            f"round without {flag}, or run {flag} from a single process (any --engine)"
        )
    if args.strategy:
        raise ValueError(
            f"{flag} with --strategy: run the rounds with one process per trial (--parallel, "
            f"--engine ray); a {flag} sweep under DDP is not supported yet"
        )
    if args.seeds:
        raise ValueError(f"{flag} chooses the seeds (0, 1, 2, ...): drop --seeds")
    bounds = {"min_seeds": args.min_seeds, "max_seeds": args.max_seeds, "margin": args.margin}
    chosen = {k: v for k, v in bounds.items() if v is not None}
    if args.until_answered:
        return Answer(**chosen)
    return Target(args.target_ci, **chosen)


def run_cli(
    args: argparse.Namespace,
    target: SeedsRule,
    plan_of: Callable[[list[int]], Any],
    run_plan: Callable[[Any], list[TrialStatus]],
) -> int:
    """``ablations.run --until-answered`` or ``--target-ci``: `plan_of(seeds)` makes the run's plan for those
    seeds, `run_plan(plan)` runs its unfinished trials with the chosen engine (once per round) and returns their
    statuses. The rounds count cells (a spec and its setting-factor levels), as the report's rows do."""
    from ablations.report import DEFAULT_REFERENCE, load_results

    full = plan_of(list(range(target.max_seeds)))
    cells = list(dict.fromkeys(t.cell for t in full.trials))
    reference = full.reference if full.reference in cells else DEFAULT_REFERENCE
    reference = reference if reference in cells else cells[0]
    suite_dir = Path(full.options.logdir) / full.suite.name
    trials = {t.name: t for t in full.trials}

    def read() -> dict[str, dict[int, float]]:
        results = load_results(suite_dir)[0]
        mine = [r for r in results if _matches(trials, r)]
        return finished_values(mine)

    def run_round(missing: dict[str, list[int]]) -> bool:
        todo = [trials[f"{cell}/seed={k}"] for cell, seeds in missing.items() for k in seeds]
        if args.dry_run:
            print("next round:\n" + "\n".join(f"{t.cell} seed={t.seed}" for t in todo))
            return False
        statuses = run_plan(type(full)(**{**full.__dict__, "trials": todo}))
        return not any(s.state is TrialState.FAILED for s in statuses)

    rounds = run_rounds(cells, reference, target, read, run_round)
    if not args.dry_run:
        from ablations.report import write_report

        print(write_report(suite_dir, reference=reference))
    print(status_table(rounds))
    if args.dry_run or not rounds.done:
        return 0 if args.dry_run else 1
    return 0


def _matches(trials: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
    """Whether a result is one of the plan's trials with the plan's settings."""
    trial = trials.get(f"{result.get('cell', result['spec'])}/seed={result['seed']}")
    return trial is not None and trial.settings_hash == result["settings_hash"]
