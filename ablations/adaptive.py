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

The reported intervals are the plain Welch intervals of every finished seed. `simulate` measures the rule's
coverage and Holm-corrected false-positive rate for given noise levels (tests/test_adaptive.py runs it, and
``python -m ablations.adaptive simulate`` prints it).

The reference gets a seed in a round when some open comparison's uncertainty comes mostly from it (its variance
of the mean is at least the spec's); a spec at the cap whose uncertainty is mostly its own gains nothing from
reference seeds. Seeds are added in order (0, 1, 2, ...), so the rounds are a function of the finished results: a
rerun recomputes them from disk and continues.

    python -m ablations.adaptive replay logs/replication/notebook --target-ci 0.03
    python -m ablations.adaptive simulate --target-ci 0.02

replay the rule on finished results (which trials it would have run, and how many seeds each spec needs) and
simulate it on known truths.
Torch-free.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

LEVEL = 0.95  # as ablations.report.stats.LEVEL; scipy and statsmodels are imported where used, so the CLI parses fast

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
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"target width {self.width!r} must be a finite number > 0")
        if isinstance(self.min_seeds, bool) or not isinstance(self.min_seeds, int) or self.min_seeds < 2:
            raise ValueError(f"min_seeds={self.min_seeds!r} must be an integer >= 2 (an interval needs two seeds)")
        if isinstance(self.max_seeds, bool) or not isinstance(self.max_seeds, int) or self.max_seeds < self.min_seeds:
            raise ValueError(f"max_seeds={self.max_seeds!r} must be an integer >= min_seeds ({self.min_seeds})")


def welch_width(n_a: Any, var_a: Any, n_b: Any, var_b: Any, level: float = LEVEL) -> np.ndarray:
    """Width of Welch's `level` interval for mean(a) - mean(b) from sample sizes and variances (ddof=1);
    numpy-broadcast, so one call serves a suite or a thousand simulated studies. Equals the width of
    `ablations.report.stats.welch`'s interval."""
    from scipy import stats as scipy_stats

    n_a, n_b = np.asarray(n_a, float), np.asarray(n_b, float)
    va, vb = np.asarray(var_a, float) / n_a, np.asarray(var_b, float) / n_b
    total = va + vb
    with np.errstate(divide="ignore", invalid="ignore"):
        df = total**2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
        width = 2 * scipy_stats.t.ppf(0.5 + level / 2, df) * np.sqrt(total)
    return np.where(total > 0, width, 0.0)


def _guarded(n: np.ndarray, var: np.ndarray) -> np.ndarray:
    """The variance's upper `GUARD` confidence bound: ``(n-1) s² / chi2_{1-GUARD}(n-1)`` (nan for ``n < 2``)."""
    from scipy import stats as scipy_stats

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n >= 2, (n - 1) * var / scipy_stats.chi2.ppf(1 - GUARD, np.maximum(n - 1, 1)), np.nan)


def first_seeds(draws: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof=1; nan with fewer than two) of seeds ``0 .. k-1`` of each spec. `draws` holds seed
    j of each spec at ``[..., j, spec]``, `k` the seed counts as ``[..., spec]``; numpy-broadcast over leading
    axes."""
    k = np.asarray(k)
    mask = np.arange(draws.shape[-2])[:, None] < k[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (draws * mask).sum(-2) / k
        var = (((draws - mean[..., None, :]) * mask) ** 2).sum(-2) / (k - 1)
    return mean, np.where(k >= 2, var, np.nan)


def seen_variance(draws: np.ndarray, n: np.ndarray) -> np.ndarray:
    """What a decision reads: the variance of seeds ``0 .. n-2`` of each spec, every seed but its newest
    (`first_seeds` of ``n - 1``)."""
    return first_seeds(draws, np.asarray(n) - 1)[1]


def decide(n: np.ndarray, seen_var: np.ndarray, reference: int, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """One round's decision: ``(seeds to add, decision width)`` per spec.

    `n` holds each spec's seed count along the last axis (leading axes are independent studies), `seen_var` the
    test-accuracy variance of its seeds but the newest (`seen_variance`); `reference` is the reference spec's
    index. A spec is open while the guarded width of its difference from the reference, from the seeds the
    decision sees, is over `target.width` (or cannot be computed yet) and it has fewer than `target.max_seeds`;
    an open spec gets one seed, and the reference gets one when some open comparison's uncertainty is mostly the
    reference's.
    """
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


# ---------------------------------------------------------------------------------------------- replay
def seeds_needed(std: float, ref_std: float, width: float, cap: int = 1000) -> int:
    """Equal seeds per side that a fixed design needs for Welch's 95% interval of the difference to be at most
    `width` wide, if the seed stds were exactly `std` and `ref_std` (at least 2)."""
    for n in range(2, cap + 1):
        if welch_width(n, std**2, n, ref_std**2) <= width:
            return n
    return cap


def replay(suite_dir: Path, width: float, reference: str = "pixel", min_seeds: int = 3, max_seeds: int = 10) -> str:
    """What the rule would have run on the finished results of `suite_dir` (markdown)."""
    from ablations.report import load_results
    from ablations.report.stats import compare_with_reference

    results, _ = load_results(Path(suite_dir))
    finished = finished_values(results)
    if reference not in finished:
        raise ValueError(f"reference {reference!r} has no results in {suite_dir}")
    order = {r["spec"]: r.get("order", 0) for r in results}
    specs = sorted(finished, key=lambda s: (order[s], s))
    target = Target(width, min_seeds, max_seeds)
    rounds = plan_rounds(specs, reference, finished, target)
    ref_std = float(np.std(list(finished[reference].values()), ddof=1))
    lines = [f"# Replay of `--target-ci {width:g}` on {suite_dir}", "", status_table(rounds), ""]
    groups = {s: [finished[s][k] for k in sorted(finished[s])] for s in specs}
    tests = {c.name: c for c in compare_with_reference(groups, reference)}
    lines += [
        "| spec | seed std | 95% CI (3 seeds) | Holm p | seeds needed (fixed design) |",
        "|---|---:|---:|---:|---:|",
    ]
    fixed = 0
    for s in specs:
        std = float(np.std(groups[s], ddof=1))
        if s == reference:
            lines.append(f"| {s} | {std:.4f} | reference | | |")
            continue
        need = seeds_needed(std, ref_std, width)
        fixed = max(fixed, need)
        c = tests[s]
        lines.append(f"| {s} | {std:.4f} | [{c.effect.low:+.4f}, {c.effect.high:+.4f}] | {c.p_holm:.3g} | {need} |")
    adaptive = sum(
        max(seeds_needed(float(np.std(groups[s], ddof=1)), ref_std, width), min_seeds) for s in specs if s != reference
    )
    ref_need = max(seeds_needed(float(np.std(groups[s], ddof=1)), ref_std, width) for s in specs if s != reference)
    lines += [
        "",
        f"Trials run: {sum(len(v) for v in groups.values())}. Trials the rule asks for in its next "
        f"round: {sum(s.next_seeds for s in rounds.states)}.",
        f"Estimated from the seed stds (equal seeds per side): a fixed-seed design needs {fixed} seeds for "
        f"every spec, {fixed * len(specs)} trials; seeds per spec as each needs "
        f"(reference at {ref_need}): about {adaptive + ref_need} trials.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- simulate
# Noise like the notebook study's (seed std 0.002 to 0.1) and known true accuracies; the reference is index 0 and
# three specs (1, 5, 7) equal it, so their comparisons are the nulls.
SIMULATED_STDS = (0.002, 0.002, 0.006, 0.01, 0.02, 0.05, 0.1, 0.006, 0.012)
SIMULATED_TRUTHS = (0.64, 0.64, 0.645, 0.59, 0.44, 0.64, 0.40, 0.64, 0.655)


@dataclass(frozen=True)
class Simulation:
    """Simulated studies of the rule: per study (rows) and spec, what the rule ran and reported."""

    truths: np.ndarray  # (specs,) true accuracy; the reference is spec 0
    seeds: np.ndarray  # (studies, specs) seeds each spec got
    low: np.ndarray  # (studies, specs - 1) Welch 95% CI of each spec's difference from the reference
    high: np.ndarray
    p: np.ndarray  # (studies, specs - 1) Welch p-values of those differences

    @property
    def differences(self) -> np.ndarray:
        return self.truths[1:] - self.truths[0]

    def covered(self) -> np.ndarray:
        """(studies, specs - 1): whether each interval contains the true difference."""
        return (self.low <= self.differences) & (self.differences <= self.high)

    def holm_fwer(self, alpha: float = 0.05) -> float:
        """Share of studies where Holm's correction rejects at least one true null (nan without nulls)."""
        nulls = np.flatnonzero(self.differences == 0)
        return float(holm_rejects(self.p, alpha)[:, nulls].any(1).mean()) if nulls.size else float("nan")


def holm_rejects(p: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down rejections per row of p-values (statsmodels' rule, vectorized over studies)."""
    order = np.argsort(p, axis=1)
    ranked = np.take_along_axis(p, order, 1)
    passes = np.cumprod(ranked <= alpha / (p.shape[1] - np.arange(p.shape[1])), axis=1).astype(bool)
    reject = np.zeros_like(passes)
    np.put_along_axis(reject, order, passes, 1)
    return reject


def simulate(
    stds: Sequence[float], truths: Sequence[float], target: Target, studies: int = 1000, seed: int = 0
) -> Simulation:
    """Run the rule on `studies` simulated studies whose seed k of spec i scores ``N(truths[i], stds[i]²)``, the
    reference being spec 0, and compute the report's Welch intervals and p-values on the seeds it ran."""
    from scipy import stats as scipy_stats

    truth, std = np.asarray(truths, float), np.asarray(stds, float)
    if truth.shape != std.shape or truth.ndim != 1 or truth.size < 2:
        raise ValueError(f"stds and truths must be two lists of the same length >= 2, not {std.size} and {truth.size}")
    if studies < 1:
        raise ValueError(f"studies={studies!r} must be >= 1")
    rng = np.random.default_rng(seed)
    draws = rng.normal(truth, std, size=(studies, target.max_seeds, truth.size))  # seed k of each spec
    n = np.full((studies, truth.size), target.min_seeds)
    while True:
        add, _ = decide(n, seen_variance(draws, n), 0, target)
        if not add.any():
            break
        n = n + add
    mean, var = first_seeds(draws, n)
    va, vb = var / n, (var / n)[:, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n[:, :1] - 1))
        half = scipy_stats.t.ppf(0.5 + LEVEL / 2, df) * np.sqrt(va + vb)
        diff = mean - mean[:, :1]
        p = 2 * scipy_stats.t.sf(np.abs(diff) / np.sqrt(va + vb), df)
    return Simulation(truth, n, (diff - half)[:, 1:], (diff + half)[:, 1:], p[:, 1:])


def simulation_table(sim: Simulation, target: Target) -> str:
    """Coverage, seeds and Holm's false-positive rate of a simulation (markdown)."""
    covered = sim.covered()
    lines = [
        f"{sim.seeds.shape[0]} simulated studies, target width {target.width:g} (seeds {target.min_seeds} to "
        f"{target.max_seeds}); reference: spec 0, true accuracy {sim.truths[0]:g}, mean seeds "
        f"{sim.seeds[:, 0].mean():.1f}.",
        "",
        "| spec | true difference | mean seeds | CI covers the truth |",
        "|---:|---:|---:|---:|",
    ]
    for i, d in enumerate(sim.differences):
        lines.append(f"| {i + 1} | {d:+.4f} | {sim.seeds[:, i + 1].mean():.1f} | {covered[:, i].mean():.3f} |")
    lines += [
        "",
        f"All intervals: {covered.mean():.3f} contain the truth. Holm-corrected family-wise false-positive "
        f"rate: {sim.holm_fwer():.3f}. Trials: {sim.seeds.sum(1).mean():.1f} per study, against "
        f"{target.max_seeds * sim.truths.size} for every spec at {target.max_seeds} seeds.",
    ]
    return "\n".join(lines) + "\n"


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
    run_plan: Callable[[Any], list[dict[str, Any]]],
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
        return not any(s["status"] == "failed" for s in statuses)

    rounds = run_rounds(specs, reference, target, read, run_round)
    if not args.dry_run:
        from ablations.report import write_report

        print(write_report(suite_dir, reference=full.reference))
    print(status_table(rounds))
    if args.dry_run or not rounds.done:
        return 0 if args.dry_run else 1
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.adaptive", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replay", help="what --target-ci would have run on finished results")
    rep.add_argument("suite_dir", type=Path)
    rep.add_argument("--reference", default="pixel")
    sim = sub.add_parser("simulate", help="the rule's coverage and false-positive rate on simulated studies")
    sim.add_argument(
        "--stds",
        type=_floats,
        default=list(SIMULATED_STDS),
        help="seed std of each spec, the reference first (default: noise like the notebook study's)",
    )
    sim.add_argument(
        "--truths",
        type=_floats,
        default=list(SIMULATED_TRUTHS),
        help="true test accuracy of each spec, the reference first",
    )
    sim.add_argument("--studies", type=int, default=1000)
    sim.add_argument("--seed", type=int, default=0)
    for command in (rep, sim):
        command.add_argument("--target-ci", type=float, default=0.03, metavar="W")
        command.add_argument("--min-seeds", type=int, default=3)
        command.add_argument("--max-seeds", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        if args.command == "simulate":
            target = Target(args.target_ci, args.min_seeds, args.max_seeds)
            print(simulation_table(simulate(args.stds, args.truths, target, args.studies, args.seed), target), end="")
            return 0
        if not args.suite_dir.is_dir():
            parser.error(f"{args.suite_dir} is not a folder")
        print(replay(args.suite_dir, args.target_ci, args.reference, args.min_seeds, args.max_seeds), end="")
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
