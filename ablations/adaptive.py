"""Seeds by target precision: run a suite in rounds and add seeds only where a comparison is still too uncertain.

Round 1 trains every spec with seeds ``0 .. min_seeds-1``. After each round, every spec's difference from the
reference spec gets Welch's 95% confidence interval (as `ablations.report.stats.welch` computes it); a spec whose
interval is wider than the target width ``W`` (high - low) gets its next seed, until it is within ``W`` or has
``max_seeds``. The rule stops on the interval's width, never on a p-value. Because the decision looks at the
seeds' spread, a spread that is small by chance would stop a comparison too early and make its reported interval
too short, so the decision is guarded twice:

- it uses the width the interval would have if each variance were at its upper ``GUARD`` confidence bound
  (chi-squared);
- it reads every spec's seeds but its newest one. The last seed of every spec is thus one that no stopping
  decision saw, and the reported spread is not only the spread that made the rule stop.

The reported intervals are the report's plain Welch intervals of every finished seed; the widths the decision
reads are `ablations.report.stats.welch_width`, the same interval's. ``scripts/seeds_rule.py`` replays the rule on
finished results and measures its coverage and Holm-corrected false-positive rate on simulated studies.

The reference gets a seed in a round when some open comparison's uncertainty comes mostly from it (its variance
of the mean is at least the spec's); a spec at the cap whose uncertainty is mostly its own gains nothing from
reference seeds. Seeds are added in order (0, 1, 2, ...), so the rounds are a function of the finished results: a
rerun recomputes them from disk and continues. Torch-free.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ablations.rules import check, finite, integer
from ablations.status import TrialState, TrialStatus

GUARD = 0.999  # the variance bound the stopping decision uses: its one-sided confidence level
WIDTH = "width reached"
CAP = "cap"
OPEN = "open"


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


@dataclass(frozen=True)
class SpecState:
    """Where one spec stands after the finished rounds."""

    spec: str
    seeds: int
    width: float  # the Welch width of its difference from the reference (nan for the reference)
    status: str  # "width reached", "cap", "open" (more seeds wanted) or "reference"
    next_seeds: int  # seeds the next round trains for it


@dataclass(frozen=True)
class Rounds:
    """The rule replayed over finished results: the seeds each spec should have now, and what is missing."""

    target: Target
    reference: str
    wanted: dict[str, int]  # spec -> seeds 0..k-1 it should have after the rounds decided so far
    states: list[SpecState]
    rounds: int
    done: bool  # every spec is within the width or at the cap, and has every wanted seed

    def missing(self, finished: Mapping[str, Mapping[int, float]]) -> dict[str, list[int]]:
        """Spec -> the seeds the next round trains."""
        return {
            s: [k for k in range(n) if k not in finished.get(s, {})]
            for s, n in self.wanted.items()
            if any(k not in finished.get(s, {}) for k in range(n))
        }


def plan_rounds(
    specs: Sequence[str], reference: str, finished: Mapping[str, Mapping[int, float]], target: Target
) -> Rounds:
    """Replay the rounds the finished results allow: round 1 wants seeds ``0..min_seeds-1`` of every spec; each
    later round follows `decide` on the seeds ``0..k-1`` decided before. Stops at the first round whose seeds are
    not all finished (that round is what runs next).

    Args:
        specs: every spec of the study, in order (`reference` among them).
        finished: spec -> {seed: test accuracy} of the finished trials (other seeds are ignored).

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
    target: Target,
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
        if spec == reference:
            status = "reference"
        elif not done:
            status = OPEN
        else:
            status = CAP if n[i] >= target.max_seeds and _wide(n, list(known.values()), i, index, target) else WIDTH
        states.append(SpecState(spec, int(n[i]), float("nan") if i == index else float(width[i]), status, missing))
    return Rounds(target, reference, {s: int(k) for s, k in zip(specs, wanted)}, states, rounds, done)


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
    """spec -> {seed: test accuracy} from result records (as `ablations.report.load_results` reads them)."""
    table: dict[str, dict[int, float]] = {}
    for r in results:
        table.setdefault(r["spec"], {})[int(r["seed"])] = float(r["metrics"]["test/acc"])
    return table


def run_rounds(
    specs: Sequence[str],
    reference: str,
    target: Target,
    read: Callable[[], Mapping],
    run_round: Callable[[dict[str, list[int]]], bool],
) -> Rounds:
    """Run rounds until done: `read()` gives spec -> {seed: accuracy} of the finished trials, `run_round(missing)`
    trains the given seeds of each spec (once per round, with any engine) and returns False to stop (a failed
    trial). Returns where the rounds stand at the end."""
    while True:
        rounds = plan_rounds(specs, reference, read(), target)
        missing = rounds.missing(read())
        if rounds.done or not missing or not run_round(missing):
            return plan_rounds(specs, reference, read(), target)


def status_table(rounds: Rounds) -> str:
    """Per spec: seeds, interval width and why it stopped (markdown)."""
    t = rounds.target
    lines = [
        f"Target: every 95% CI of the difference from `{rounds.reference}` at most {t.width:g} wide "
        f"(seeds {t.min_seeds} to {t.max_seeds}); {rounds.rounds} round(s)"
        + ("" if rounds.done else ", not finished")
        + ".",
        "",
        "| spec | seeds | CI width | stopped because | next round |",
        "|---|---:|---:|---|---:|",
    ]
    for s in rounds.states:
        width = "—" if math.isnan(s.width) else f"{s.width:.4f}"
        lines.append(f"| {s.spec} | {s.seeds} | {width} | {s.status} | {s.next_seeds or ''} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- ablations.run
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--target-ci`` flags of ``python -m ablations.run``."""
    group = parser.add_argument_group("seeds by target precision")
    group.add_argument(
        "--target-ci",
        type=float,
        metavar="W",
        help="run in rounds, adding seeds only to specs whose 95%% CI of the difference from the "
        "reference is wider than W (seeds 0, 1, 2, ...; replaces --seeds)",
    )
    group.add_argument("--min-seeds", type=int, help="--target-ci: seeds of the first round (default 3)")
    group.add_argument("--max-seeds", type=int, help="--target-ci: most seeds per spec (default 10)")


def target_of(args: argparse.Namespace) -> Optional[Target]:
    """The command line's `Target`, or None without ``--target-ci`` (ValueError for bad values or --shard)."""
    if args.target_ci is None:
        given = [
            f"--{name.replace('_', '-')}" for name in ("min_seeds", "max_seeds") if getattr(args, name) is not None
        ]
        if given:
            raise ValueError(f"{' and '.join(given)} apply only with --target-ci (the seeds rule): add it or drop them")
        return None
    if args.shard:
        raise ValueError(
            "--target-ci with --shard: the rounds depend on every shard's results; run one sweep per "
            "round without --target-ci, or run --target-ci from a single process (any --engine)"
        )
    if args.strategy:
        raise ValueError(
            "--target-ci with --strategy: run the rounds with one process per trial (--parallel, "
            "--engine ray) or one --target-ci sweep per round is not supported under DDP yet"
        )
    if args.seeds:
        raise ValueError("--target-ci chooses the seeds (0, 1, 2, ...): drop --seeds")
    bounds = {"min_seeds": args.min_seeds, "max_seeds": args.max_seeds}
    return Target(args.target_ci, **{k: v for k, v in bounds.items() if v is not None})


def run_cli(
    args: argparse.Namespace,
    target: Target,
    plan_of: Callable[[list[int]], Any],
    run_plan: Callable[[Any], list[TrialStatus]],
) -> int:
    """``ablations.run --target-ci``: `plan_of(seeds)` makes the run's plan for those seeds, `run_plan(plan)` runs
    its unfinished trials with the chosen engine (once per round) and returns their statuses."""
    from ablations.report import load_results

    full = plan_of(list(range(target.max_seeds)))
    specs = list(dict.fromkeys(str(t.spec) for t in full.trials))
    reference = full.reference or ("pixel" if "pixel" in specs else specs[0])
    suite_dir = Path(full.options.logdir) / full.suite.name
    hashes = {(str(t.spec), t.seed): t.settings_hash for t in full.trials}

    def read() -> dict[str, dict[int, float]]:
        results = [r for r in load_results(suite_dir)[0] if hashes.get((r["spec"], r["seed"])) == r["settings_hash"]]
        return finished_values(results)

    def run_round(missing: dict[str, list[int]]) -> bool:
        names = {f"{spec}/seed={k}" for spec, seeds in missing.items() for k in seeds}
        todo = [t for t in full.trials if t.name in names]
        if args.dry_run:
            print("next round:\n" + "\n".join(f"{t.spec} seed={t.seed}" for t in todo))
            return False
        statuses = run_plan(type(full)(**{**full.__dict__, "trials": todo}))
        return not any(s.state is TrialState.FAILED for s in statuses)

    rounds = run_rounds(specs, reference, target, read, run_round)
    if not args.dry_run:
        from ablations.report import write_report

        print(write_report(suite_dir, reference=full.reference))
    print(status_table(rounds))
    if args.dry_run or not rounds.done:
        return 0 if args.dry_run else 1
    return 0
