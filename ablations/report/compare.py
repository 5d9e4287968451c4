"""``python -m ablations.report.compare A B`` (``lit-cifar-compare``): one suite run twice (another precision, code
or machine), spec by spec, then the paired difference over every (spec, seed) both hold, its 95% interval, p and
verdict. The two must share every training setting but the precision (`COMPARABLE`), else exit 2. Torch-free.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional

from scipy import stats as scipy_stats

from ablations.report import board
from ablations.report.report import load_results
from ablations.report.stats import Interval, mean_ci, verdict
from ablations.rules import MARGIN, margin_arg

COMPARABLE = ("precision",)  # the settings two compared suites may differ in (what the comparison is about)


class SpecPair(NamedTuple):
    """One spec's results in A and in B, by seed."""

    spec: str
    a: dict[int, dict[str, Any]]
    b: dict[int, dict[str, Any]]


def settings_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """What differs between two suites' trials (``epochs=5 vs 1``) but `COMPARABLE` settings, or ""."""
    seen = []
    for results in (a, b):
        settings = [{**r.get("settings", {}), "train_images": r.get("train_images")} for r in results]
        keys = {k for s in settings for k in s} - {*COMPARABLE, "spec", "seed"}  # a trial's spec and seed are paired
        seen.append({k: {str(s[k]) for s in settings if k in s} for k in keys})
    return ", ".join(
        f"{k}={'/'.join(sorted(seen[0].get(k, {'?'})))} vs {'/'.join(sorted(seen[1].get(k, {'?'})))}"
        for k in sorted(set(seen[0]) | set(seen[1]))
        if seen[0].get(k) != seen[1].get(k)
    )


def pair_specs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[SpecPair]:
    """The specs both suites hold, in the suite's order, with their results by seed."""
    by_spec: list[dict[str, dict[int, dict[str, Any]]]] = [{}, {}]
    for side, results in zip(by_spec, (a, b)):
        for r in results:
            side.setdefault(r["spec"], {})[r["seed"]] = r
    order = {r["spec"]: r.get("order", 0) for r in a}
    shared = sorted(set(by_spec[0]) & set(by_spec[1]), key=lambda s: (order[s], s))
    return [SpecPair(spec, by_spec[0][spec], by_spec[1][spec]) for spec in shared]


def paired_difference(pairs: list[SpecPair]) -> tuple[Interval, float, int]:
    """Mean of B − A over every (spec, seed) both hold, its confidence interval, the paired t-test's p, and n."""
    differences = [
        p.b[seed]["metrics"]["test/acc"] - p.a[seed]["metrics"]["test/acc"]
        for p in pairs
        for seed in sorted(p.a.keys() & p.b.keys())
    ]
    p_value = float(scipy_stats.ttest_1samp(differences, 0.0).pvalue) if len(differences) > 1 else float("nan")
    return mean_ci(differences), p_value, len(differences)


def format_comparison(pairs: list[SpecPair], a_name: str, b_name: str, margin: float = MARGIN) -> str:
    rows = []
    for p in pairs:
        a, b = ([runs[s]["metrics"]["test/acc"] for s in sorted(runs)] for runs in (p.a, p.b))
        shown = [f"{statistics.fmean(v):.4f}" + (f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else "") for v in (a, b)]
        rate_a, rate_b = (
            statistics.fmean(r.get("train_images_per_s", float("nan")) for r in runs.values()) for runs in (p.a, p.b)
        )
        rates = f"{rate_a:.0f} → {rate_b:.0f} ({rate_b / rate_a:.2f}x)" if rate_a > 0 and rate_b == rate_b else "—"
        inside = "yes" if min(a) <= statistics.fmean(b) <= max(a) else "no"
        difference = f"{statistics.fmean(b) - statistics.fmean(a):+.4f}"
        rows.append(
            [p.spec, f"{len(a)} / {len(b)}", *shown, difference, f"[{min(a):.4f}, {max(a):.4f}]", inside, rates]
        )
    header = ["spec", "seeds", f"{a_name} test acc", f"{b_name} test acc", "difference", f"{a_name} seed range"]
    lines = [board.markdown_table([*header, "inside it", "training images/s"], rows), ""]
    interval, p_value, n = paired_difference(pairs)
    said = f"Paired over {n} (spec, seed) trials: {b_name} − {a_name} = {interval.estimate:+.4f} test accuracy"
    if interval.known:
        said += (
            f", 95% CI [{interval.low:+.4f}, {interval.high:+.4f}], paired t-test p = {p_value:.3f}: "
            f"**{verdict(interval.low, interval.high, margin)}** (margin ±{margin:g})."
        )
    else:
        said += ": no interval (one pair, or no spread): run more seeds to tell."
    return "\n".join([*lines, said])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.report.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="a suite's folder, e.g. logs/precision/32-true/notebook")
    parser.add_argument("b", type=Path, help="the same suite run otherwise, e.g. logs/precision/bf16-mixed/notebook")
    parser.add_argument("--names", nargs=2, metavar=("A", "B"), help="column names (default: the folders' parents)")
    parser.add_argument("--margin", type=margin_arg, default=MARGIN, help=f"equivalence margin (default {MARGIN})")
    args = parser.parse_args(argv)
    for folder in (args.a, args.b):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder: give a suite's folder under a logdir, e.g. logs/notebook")
    a, b = load_results(args.a)[0], load_results(args.b)[0]
    differ = settings_difference(a, b)
    if differ:
        parser.exit(
            2,
            f"{parser.prog}: error: {args.a} and {args.b} were trained with other settings ({differ}): "
            "only a change of precision, code or machine is compared\n",
        )
    pairs = pair_specs(a, b)
    if not pairs:
        parser.error(f"{args.a} and {args.b} share no spec with results: nothing to compare")
    a_name, b_name = args.names or [args.a.resolve().parent.name, args.b.resolve().parent.name]
    print(format_comparison(pairs, a_name, b_name, margin=args.margin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
