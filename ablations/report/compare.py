"""``python -m ablations.report.compare A B``: one suite run twice (another precision, code or machine), spec by spec.

    python -m ablations.report.compare logs/precision/32-true/notebook logs/precision/bf16-mixed/notebook

For every spec both folders hold: test accuracy (mean ± std over seeds) in A and in B, the difference B − A, whether
B's mean lies inside A's seed range (min to max), and training images/s in each with the ratio B / A. Then, over
every (spec, seed) pair both hold, the mean paired difference of test accuracy with its 95% confidence interval
(t-based) and the p-value of a paired t-test: whether B changes accuracy beyond what the seeds' spread allows.

The two must share every training setting but the precision (`COMPARABLE`): suites of other epochs, data or
batch sizes are refused. Exit status 2, with one line, when a folder is missing, the settings differ or the two
share no trial. A number that cannot be computed (one seed: no spread) prints as "—", never nan. Torch-free.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scipy import stats as scipy_stats

from ablations.report.report import load_results
from ablations.report.stats import Interval, mean_ci, verdict
from ablations.rules import MARGIN, check_margin

COMPARABLE = ("precision",)  # the settings two compared suites may differ in (what the comparison is about)


@dataclass(frozen=True)
class SpecPair:
    """One spec's results in A and in B, by seed."""

    spec: str
    a: dict[int, dict[str, Any]]
    b: dict[int, dict[str, Any]]

    def accuracy(self, side: str) -> list[float]:
        runs = self.a if side == "a" else self.b
        return [runs[seed]["metrics"]["test/acc"] for seed in sorted(runs)]

    def rate(self, side: str) -> float:
        runs = self.a if side == "a" else self.b
        return statistics.fmean(r.get("train_images_per_s", float("nan")) for r in runs.values())


def settings_difference(a_dir: Path, b_dir: Path) -> str:
    """ "" when the two folders' trials share every setting but `COMPARABLE` ones and their image counts, else
    what differs (``epochs=5 vs 1``)."""
    seen = []
    for folder in (a_dir, b_dir):
        results, _ = load_results(folder)
        values: dict[str, set[str]] = {}
        for r in results:
            fields = {**r.get("settings", {}), "train_images": r.get("train_images")}
            for key, value in fields.items():
                if key not in (*COMPARABLE, "spec", "seed"):  # a trial's own spec and seed are paired, not compared
                    values.setdefault(key, set()).add(str(value))
        seen.append(values)
    a, b = seen
    differ = [
        f"{k}={'/'.join(sorted(a.get(k, {'?'})))} vs {'/'.join(sorted(b.get(k, {'?'})))}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    return ", ".join(differ)


def pair_specs(a_dir: Path, b_dir: Path) -> list[SpecPair]:
    """The specs both suite folders hold, in the suite's order, with their results by seed."""
    found = []
    for folder in (a_dir, b_dir):
        results, _ = load_results(folder)
        by_spec: dict[str, dict[int, dict[str, Any]]] = {}
        for r in results:
            by_spec.setdefault(r["spec"], {})[r["seed"]] = r
        found.append(by_spec)
    a, b = found
    order = {r["spec"]: r.get("order", 0) for runs in a.values() for r in runs.values()}
    return [SpecPair(spec, a[spec], b[spec]) for spec in sorted(set(a) & set(b), key=lambda s: (order[s], s))]


def paired_difference(pairs: list[SpecPair]) -> tuple[Interval, float, int]:
    """Mean of B − A over every (spec, seed) both hold, its confidence interval, the paired t-test's p, and n."""
    differences = [
        p.b[seed]["metrics"]["test/acc"] - p.a[seed]["metrics"]["test/acc"]
        for p in pairs
        for seed in sorted(set(p.a) & set(p.b))
    ]
    p_value = float(scipy_stats.ttest_1samp(differences, 0.0).pvalue) if len(differences) > 1 else float("nan")
    return mean_ci(differences), p_value, len(differences)


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{statistics.fmean(values):.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def _rates(p: SpecPair) -> str:
    a, b = p.rate("a"), p.rate("b")
    if a != a or b != b or a == 0:
        return "—"
    return f"{a:.0f} → {b:.0f} ({b / a:.2f}x)"


def format_comparison(pairs: list[SpecPair], a_name: str, b_name: str, margin: float = MARGIN) -> str:
    lines = [
        f"| spec | seeds | {a_name} test acc | {b_name} test acc | difference | {a_name} seed range | inside it "
        f"| training images/s |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for p in pairs:
        a, b = p.accuracy("a"), p.accuracy("b")
        inside = min(a) <= statistics.fmean(b) <= max(a)
        lines.append(
            f"| {p.spec} | {len(a)} / {len(b)} | {_mean_std(a)} | {_mean_std(b)} | "
            f"{statistics.fmean(b) - statistics.fmean(a):+.4f} | [{min(a):.4f}, {max(a):.4f}] | "
            f"{'yes' if inside else 'no'} | {_rates(p)} |"
        )
    interval, p_value, n = paired_difference(pairs)
    said = f"Paired over {n} (spec, seed) trials: {b_name} − {a_name} = {interval.estimate:+.4f} test accuracy"
    if interval.known:
        answer = verdict(interval.low, interval.high, margin)
        said += (
            f", 95% CI [{interval.low:+.4f}, {interval.high:+.4f}], paired t-test p = {p_value:.3f}: "
            f"**{answer}** (margin ±{margin:g})."
        )
    else:
        said += ": no interval (one pair, or no spread): run more seeds to tell."
    return "\n".join([*lines, "", said])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.report.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="a suite's folder, e.g. logs/precision/32-true/notebook")
    parser.add_argument("b", type=Path, help="the same suite run otherwise, e.g. logs/precision/bf16-mixed/notebook")
    parser.add_argument("--names", nargs=2, metavar=("A", "B"), help="column names (default: the folders' parents)")
    parser.add_argument("--margin", type=float, default=MARGIN, help=f"equivalence margin (default {MARGIN})")
    args = parser.parse_args(argv)
    try:
        check_margin(args.margin)
    except ValueError as error:
        parser.error(f"--{error}")
    for folder in (args.a, args.b):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder: give a suite's folder under a logdir, e.g. logs/notebook")
    differ = settings_difference(args.a, args.b)
    if differ:
        parser.exit(
            2,
            f"{parser.prog}: error: {args.a} and {args.b} were trained with other settings ({differ}): "
            "only a change of precision, code or machine is compared\n",
        )
    pairs = pair_specs(args.a, args.b)
    if not pairs:
        parser.error(f"{args.a} and {args.b} share no spec with results: nothing to compare")
    a_name, b_name = args.names or [args.a.resolve().parent.name, args.b.resolve().parent.name]
    print(format_comparison(pairs, a_name, b_name, margin=args.margin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
