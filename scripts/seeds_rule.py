"""The seeds rules of `ablations.adaptive` simulated on known truths and replayed on finished results, from a
checkout:

    python scripts/seeds_rule.py answered [--from logs/replication/notebook] [--studies 20000]
    python scripts/seeds_rule.py replay logs/replication/notebook --target-ci 0.03
    python scripts/seeds_rule.py simulate --target-ci 0.02 [--studies 20000]

``answered`` runs the until-answered rule's own decisions (`ablations.adaptive.decide_answered`) on simulated
studies: how often any verdict is wrong (family-wise), how often every interval contains its truth, the trials it
runs, and the trials of the fixed design (equal seeds for every spec, one look) that answers every comparison as
often at the same family-wise error rate. ``--from`` takes the truths from a suite's finished results (each
cell's mean and seed std, read with the report's reader). ``replay`` says which trials ``--target-ci`` would have
run and how many seeds each spec needs in a fixed design; ``simulate`` runs the target-precision rule
(`ablations.adaptive.decide`) and reports how often its Welch intervals contain the truth and how often the
report's simultaneous intervals call a true null better or worse. docs/fewest-trials.md quotes them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ablations.adaptive import (
    OPEN,
    Answer,
    Target,
    answer_interval,
    decide,
    decide_answered,
    finished_values,
    plan_rounds,
    status_table,
    verdicts,
)
from ablations.report.stats import LEVEL, compare_with_reference, family_level, welch_width

# Noise like the notebook study's (seed std 0.002 to 0.1) and known true accuracies; the reference is index 0 and
# three specs (1, 5, 7) equal it, so their comparisons are the nulls.
SIMULATED_STDS = (0.002, 0.002, 0.006, 0.01, 0.02, 0.05, 0.1, 0.006, 0.012)
SIMULATED_TRUTHS = (0.64, 0.64, 0.645, 0.59, 0.44, 0.64, 0.40, 0.64, 0.655)


# ---------------------------------------------------------------------------------------------- replay
def in_suite_order(results: Sequence[dict]) -> list[str]:
    """The cells of result records (`ablations.adaptive.finished_values`' keys) in their suite's order."""
    order = {r.get("cell", r["spec"]): r.get("order", 0) for r in results}
    return sorted(order, key=lambda cell: (order[cell], cell))


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

    results, _ = load_results(Path(suite_dir))
    finished = finished_values(results)
    if reference not in finished:
        raise ValueError(f"reference {reference!r} has no results in {suite_dir}")
    specs = in_suite_order(results)
    target = Target(width, min_seeds, max_seeds)
    rounds = plan_rounds(specs, reference, finished, target)
    groups = {s: [finished[s][k] for k in sorted(finished[s])] for s in specs}
    stds = {s: float(np.std(groups[s], ddof=1)) for s in specs}
    tests = {c.name: c for c in compare_with_reference(groups, reference)}
    lines = [f"# Replay of `--target-ci {width:g}` on {suite_dir}", "", status_table(rounds), ""]
    lines += [
        "| spec | seed std | simultaneous 95% interval | adjusted p | seeds needed (fixed design) |",
        "|---|---:|---:|---:|---:|",
    ]
    needs = {s: seeds_needed(stds[s], stds[reference], width) for s in specs if s != reference}
    for s in specs:
        if s == reference:
            lines.append(f"| {s} | {stds[s]:.4f} | reference | | |")
            continue
        c = tests[s]
        lines.append(
            f"| {s} | {stds[s]:.4f} | [{c.effect.low:+.4f}, {c.effect.high:+.4f}] | {c.p_adjusted:.3g} | {needs[s]} |"
        )
    fixed = max(needs.values())  # also what the reference needs, to serve its noisiest comparison
    adaptive = sum(max(n, min_seeds) for n in needs.values())
    lines += [
        "",
        f"Trials run: {sum(len(v) for v in groups.values())}. Trials the rule asks for in its next "
        f"round: {sum(s.next_seeds for s in rounds.states)}.",
        f"Estimated from the seed stds (equal seeds per side): a fixed-seed design needs {fixed} seeds for "
        f"every spec, {fixed * len(specs)} trials; seeds per spec as each needs "
        f"(reference at {fixed}): about {adaptive + fixed} trials.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- simulate
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
    """What a decision reads: the variance of seeds ``0 .. n-2`` of each spec, every seed but its newest."""
    return first_seeds(draws, np.asarray(n) - 1)[1]


@dataclass(frozen=True)
class Simulation:
    """Simulated studies of the rule: per study (rows) and spec, what the rule ran and reported."""

    truths: np.ndarray  # (specs,) true accuracy; the reference is spec 0
    seeds: np.ndarray  # (studies, specs) seeds each spec got
    low: np.ndarray  # (studies, specs - 1) Welch 95% CI of each spec's difference from the reference
    high: np.ndarray
    joint_low: np.ndarray  # (studies, specs - 1) the report's intervals: simultaneous over the comparisons
    joint_high: np.ndarray

    @property
    def differences(self) -> np.ndarray:
        return self.truths[1:] - self.truths[0]

    def covered(self) -> np.ndarray:
        """(studies, specs - 1): whether each interval contains the true difference."""
        return (self.low <= self.differences) & (self.differences <= self.high)

    def fwer(self) -> float:
        """Share of studies where the report's simultaneous interval of some true null excludes 0 (nan without
        nulls)."""
        nulls = np.flatnonzero(self.differences == 0)
        if not nulls.size:
            return float("nan")
        return float(((self.joint_low[:, nulls] > 0) | (self.joint_high[:, nulls] < 0)).any(1).mean())


def simulate(
    stds: Sequence[float], truths: Sequence[float], target: Target, studies: int = 1000, seed: int = 0
) -> Simulation:
    """Run the rule on `studies` simulated studies whose seed k of spec i scores ``N(truths[i], stds[i]²)``, the
    reference being spec 0, and compute Welch's 95% intervals and the report's simultaneous ones on its seeds."""
    truth, std = _check_truths(stds, truths, studies)
    draws = _draws(truth, std, studies, target.max_seeds, np.random.default_rng(seed))
    n = np.full((studies, truth.size), target.min_seeds)
    while True:
        add, _ = decide(n, seen_variance(draws, n), 0, target)
        if not add.any():
            break
        n = n + add
    mean, var = first_seeds(draws, n)
    diff = (mean - mean[:, :1])[:, 1:]
    half = welch_width(n, var, n[:, :1], var[:, :1])[:, 1:] / 2
    joint = welch_width(n, var, n[:, :1], var[:, :1], level=family_level(LEVEL, truth.size - 1))[:, 1:] / 2
    return Simulation(truth, n, diff - half, diff + half, diff - joint, diff + joint)


def simulation_table(sim: Simulation, target: Target) -> str:
    """Coverage, seeds and the report's family-wise false-positive rate of a simulation (markdown)."""
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
        f"All intervals: {covered.mean():.3f} contain the truth. Family-wise false-positive rate of the report's "
        f"simultaneous intervals: {sim.fwer():.3f}. Trials: {sim.seeds.sum(1).mean():.1f} per study, against "
        f"{target.max_seeds * sim.truths.size} for every spec at {target.max_seeds} seeds.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- answered
@dataclass(frozen=True)
class Answered:
    """Simulated studies of the until-answered rule and of the fixed design it is measured against."""

    truths: np.ndarray  # (specs,) true accuracy; the reference is spec 0
    answer: Answer
    seeds: np.ndarray  # (studies, specs) seeds each spec got
    low: np.ndarray  # (studies, specs - 1) the interval each verdict was read from
    high: np.ndarray
    verdict: np.ndarray  # (studies, specs - 1) the rule's verdicts ("open" at the cap)
    fixed_seeds: int  # seeds per spec the fixed design needs (0: none up to `fixed_cap`)
    fixed_cap: int
    fixed_decisive: np.ndarray  # (specs - 1,) share of studies the fixed design answers each comparison in
    fixed_wrong: float  # its family-wise rate of a wrong verdict

    @property
    def differences(self) -> np.ndarray:
        return self.truths[1:] - self.truths[0]

    def covered(self) -> np.ndarray:
        """(studies, specs - 1): whether each interval contains the true difference."""
        return (self.low <= self.differences) & (self.differences <= self.high)

    def wrong(self) -> np.ndarray:
        """(studies, specs - 1): whether each verdict is wrong about its true difference."""
        return wrong_verdicts(self.verdict, self.differences, self.answer.margin)

    @property
    def trials(self) -> float:
        """Mean trials per study."""
        return float(self.seeds.sum(1).mean())

    @property
    def ratio(self) -> float:
        """The rule's trials over the fixed design's (nan when no fixed design up to the cap answers as often)."""
        return self.trials / (self.fixed_seeds * self.truths.size) if self.fixed_seeds else float("nan")


def wrong_verdicts(verdict: np.ndarray, differences: np.ndarray, margin: float) -> np.ndarray:
    """Whether each verdict is wrong: ``better`` of a difference <= 0, ``worse`` of one >= 0, ``equivalent`` of one
    outside ``±margin`` (``open`` is never wrong)."""
    return (
        ((verdict == "better") & (differences <= 0))
        | ((verdict == "worse") & (differences >= 0))
        | ((verdict == "equivalent") & (np.abs(differences) > margin))
    )


def _draws(truth: np.ndarray, std: np.ndarray, studies: int, seeds: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(truth, std, size=(studies, seeds, truth.size))  # seed k of each spec at [:, k, :]


def simulate_answered(
    stds: Sequence[float],
    truths: Sequence[float],
    answer: Answer,
    studies: int = 1000,
    seed: int = 0,
    fixed_cap: int = 200,
) -> Answered:
    """Run the until-answered rule on `studies` simulated studies whose seed k of spec i scores
    ``N(truths[i], stds[i]²)`` (the reference is spec 0), then find the fixed design: the fewest equal seeds `n`
    for every spec (up to `fixed_cap`) at which, reading each comparison once at level ``1 - alpha /
    comparisons``, every comparison gets a verdict other than open in at least as many studies as under the
    rule."""
    truth, std = _check_truths(stds, truths, studies)
    rng = np.random.default_rng(seed)
    draws = _draws(truth, std, studies, answer.max_seeds, rng)
    n = np.full((studies, truth.size), answer.min_seeds)
    while True:
        add = decide_answered(n, *first_seeds(draws, n), 0, answer)
        if not add.any():
            break
        n = n + add
    comparisons = truth.size - 1
    mean, var = first_seeds(draws, n)
    ref_mean, ref_var = first_seeds(np.repeat(draws[..., :1], comparisons, axis=-1), n[:, 1:])
    low, high = answer_interval(n[:, 1:], mean[:, 1:], var[:, 1:], ref_mean, ref_var, answer, comparisons)
    verdict = verdicts(low, high, answer.margin)
    decisive = (verdict != OPEN).mean(0)
    fixed, shares, wrong = _fixed_design(truth, std, answer, decisive, studies, rng, fixed_cap)
    return Answered(truth, answer, n, low, high, verdict, fixed, fixed_cap, shares, wrong)


def _fixed_design(
    truth: np.ndarray,
    std: np.ndarray,
    answer: Answer,
    decisive: np.ndarray,
    studies: int,
    rng: np.random.Generator,
    cap: int,
) -> tuple[int, np.ndarray, float]:
    """The fewest seeds per spec (2 to `cap`) whose single look answers each comparison at least as often as
    `decisive`; (0, shares at `cap`, ...) if none does. Seeds are drawn one at a time (running sums)."""
    one_look = Answer(answer.margin, 2, 2, answer.alpha)  # level 1 - alpha / comparisons
    total = np.zeros((studies, truth.size))
    squares = np.zeros_like(total)
    for n in range(1, cap + 1):
        x = rng.normal(truth, std, size=total.shape)
        total, squares = total + x, squares + x**2
        if n < 2:
            continue
        mean = total / n
        var = np.maximum(squares - n * mean**2, 0) / (n - 1)
        low, high = answer_interval(n, mean[:, 1:], var[:, 1:], mean[:, :1], var[:, :1], one_look, truth.size - 1)
        verdict = verdicts(low, high, answer.margin)
        shares = (verdict != OPEN).mean(0)
        if np.all(shares >= decisive) or n == cap:
            wrong = wrong_verdicts(verdict, truth[1:] - truth[0], answer.margin).any(1).mean()
            return (n if np.all(shares >= decisive) else 0), shares, float(wrong)
    raise AssertionError("unreachable")


def _check_truths(stds: Sequence[float], truths: Sequence[float], studies: int) -> tuple[np.ndarray, np.ndarray]:
    truth, std = np.asarray(truths, float), np.asarray(stds, float)
    if truth.shape != std.shape or truth.ndim != 1 or truth.size < 2:
        raise ValueError(f"stds and truths must be two lists of the same length >= 2, not {std.size} and {truth.size}")
    if studies < 1:
        raise ValueError(f"studies={studies!r} must be >= 1")
    return truth, std


def answered_table(sim: Answered, names: Optional[Sequence[str]] = None) -> str:
    """Error rates, coverage, seeds and the trial ratio of an until-answered simulation (markdown)."""
    a = sim.answer
    names = list(names or [str(i) for i in range(sim.truths.size)])
    covered, wrong = sim.covered(), sim.wrong()
    verdict_share = {v: (sim.verdict == v).mean(0) for v in ("better", "worse", "equivalent", OPEN)}
    lines = [
        f"{sim.seeds.shape[0]} simulated studies, until answered (margin {a.margin:g}, seeds {a.min_seeds} to "
        f"{a.max_seeds}, alpha {a.alpha:g}); reference `{names[0]}`, true accuracy {sim.truths[0]:.4f}, mean "
        f"seeds {sim.seeds[:, 0].mean():.1f}.",
        "",
        "| spec | true difference | mean seeds | better | worse | equivalent | open | wrong | covered | fixed "
        "design answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, d in enumerate(sim.differences):
        shares = " | ".join(f"{verdict_share[v][i]:.3f}" for v in verdict_share)
        lines.append(
            f"| {names[i + 1]} | {d:+.4f} | {sim.seeds[:, i + 1].mean():.1f} | {shares} | {wrong[:, i].mean():.3f} "
            f"| {covered[:, i].mean():.3f} | {sim.fixed_decisive[i]:.3f} |"
        )
    fixed = (
        f"{sim.fixed_seeds} seeds per spec, {sim.fixed_seeds * sim.truths.size} trials (its family-wise wrong-verdict "
        f"rate: {sim.fixed_wrong:.3f}); the rule runs {sim.ratio:.1%} of them"
        if sim.fixed_seeds
        else f"more than {sim.fixed_cap} seeds per spec (no ratio)"
    )
    lines += [
        "",
        f"Family-wise: a wrong verdict in {wrong.any(1).mean():.4f} of the studies; every interval contains its "
        f"truth in {covered.all(1).mean():.4f}. Trials: {sim.trials:.1f} per study. The fixed design that "
        f"answers every comparison as often (one look at level 1 - alpha/{sim.truths.size - 1}): {fixed}.",
    ]
    return "\n".join(lines) + "\n"


def replication_truths(suite_dir: Path, reference: str = "pixel") -> tuple[list[str], list[float], list[float]]:
    """(cells, seed stds, means) of a suite's finished results, the reference first, read with the report's
    reader (`ablations.report.load_results`)."""
    from ablations.report import load_results

    results, _ = load_results(Path(suite_dir))
    finished = finished_values(results)
    if reference not in finished:
        raise ValueError(f"reference {reference!r} has no results in {suite_dir}")
    cells = [reference] + [c for c in in_suite_order(results) if c != reference]
    values = [list(finished[c].values()) for c in cells]
    if min(len(v) for v in values) < 2:
        raise ValueError(f"every cell of {suite_dir} needs two seeds for a seed std")
    return cells, [float(np.std(v, ddof=1)) for v in values], [float(np.mean(v)) for v in values]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/seeds_rule.py", description=__doc__.split("\n\n")[0])
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
        help="true test accuracy of each spec, reference first",
    )
    ans = sub.add_parser("answered", help="the until-answered rule's error rates and trials against a fixed design")
    ans.add_argument("--from", dest="source", type=Path, help="take truths and stds from this suite's results")
    ans.add_argument("--reference", default="pixel", help="with --from: the reference cell (default pixel)")
    ans.add_argument("--margin", type=float, default=None, help="equivalence margin (default: the report's, 0.01)")
    for command in (sim, ans):
        command.add_argument("--studies", type=int, default=1000)
        command.add_argument("--seed", type=int, default=0)
    for command in (rep, sim):
        command.add_argument("--target-ci", type=float, default=0.03, metavar="W")
    ans.add_argument("--stds", type=_floats, default=list(SIMULATED_STDS), help="as for simulate (without --from)")
    ans.add_argument("--truths", type=_floats, default=list(SIMULATED_TRUTHS), help="as for simulate")
    for command in (rep, sim, ans):
        command.add_argument("--min-seeds", type=int, default=3)
        command.add_argument("--max-seeds", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        if args.command == "answered":
            names, stds, truths = None, args.stds, args.truths
            if args.source is not None:
                if not args.source.is_dir():
                    parser.error(f"{args.source} is not a folder")
                names, stds, truths = replication_truths(args.source, args.reference)
            margin = {} if args.margin is None else {"margin": args.margin}
            answer = Answer(min_seeds=args.min_seeds, max_seeds=args.max_seeds, **margin)
            print(answered_table(simulate_answered(stds, truths, answer, args.studies, args.seed), names), end="")
            return 0
        target = Target(args.target_ci, args.min_seeds, args.max_seeds)
        if args.command == "simulate":
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
