"""A fraction of a finished full grid, reported on its own, and its main effects against the grid's.

A fractional suite (``design: {fraction: R}``, `ablations.designs`) runs rows of the full grid with the same trial
folders and hashes, so a finished grid already holds every fraction's trials. To report one alone, copy them into a
folder of its own, report it, and compare (torch-free)::

    python scripts/fraction_effects.py extract half.yaml --source logs/factorial/full --dest logs/factorial-half/full
    python -m ablations.report logs/factorial-half/full
    python scripts/fraction_effects.py compare logs/factorial/full logs/factorial-half/full
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def extract(suite: str, source: Path, dest: Path) -> list[str]:
    """Copy the trial folders (every ``seed=K``) of `suite`'s specs from the suite folder `source` into `dest`, so
    `dest` holds the fraction alone; returns the specs copied. Trials already in `dest` are kept as they are.

    Raises:
        ValueError: if a spec of the suite has no finished trial in `source`.
    """
    from ablations.store import RESULT_FILE
    from ablations.suite import load_suite

    specs = load_suite(suite).spec_names
    missing = [s for s in specs if not any((source / s).glob(f"seed=*/{RESULT_FILE}"))]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(specs)} specs of {suite} have no finished trial in {source}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    for spec in specs:
        for trial in sorted((source / spec).glob("seed=*")):
            if (trial / RESULT_FILE).exists() and not (dest / spec / trial.name).exists():
                shutil.copytree(trial, dest / spec / trial.name, ignore=shutil.ignore_patterns(".lock"))
    return specs


def main_effects(suite_dir: Path) -> dict[str, dict[str, float]]:
    """effect -> {estimate, ci_low, ci_high} of the main effects in a report's ``effects.csv`` (the interval is the
    one its verdict reads, simultaneous over the report's family)."""
    path = suite_dir / "effects.csv"
    if not path.exists():
        raise ValueError(
            f"{path} does not exist: run python -m ablations.report {suite_dir} (a factorial suite's report writes it)"
        )
    with open(path, newline="") as handle:
        return {
            row["effect"]: {
                "estimate": float(row["estimate"]),
                "ci_low": float(row["verdict_low"]),
                "ci_high": float(row["verdict_high"]),
            }
            for row in csv.DictReader(handle)
            if row["kind"] == "main"
        }


def compare(full: Path, others: Sequence[Path]) -> str:
    """Markdown: each main effect of the full grid next to the same effect estimated by each fraction, and
    whether they agree (same sign, and each estimate inside the other's 95% CI)."""
    ref = main_effects(full)
    fits = {str(o): main_effects(o) for o in others}
    head = ["effect", f"{full} (interval)"] + [f"{o} (interval)" for o in fits] + ["agree"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    disagreements = []
    for effect, e in ref.items():
        cells, verdicts = [effect, _interval(e)], []
        for name, fit in fits.items():
            f = fit.get(effect)
            if f is None:
                cells.append("not estimated")
                continue
            cells.append(_interval(f))
            verdict = _agreement(e, f)
            verdicts.append(verdict)
            if verdict != "yes":
                disagreements.append(f"{effect} in {name}: {verdict}")
        lines.append("| " + " | ".join(cells + ["yes" if all(v == "yes" for v in verdicts) else "no"]) + " |")
    lines += ["", "Agree: same sign, and each estimate inside the other's simultaneous 95% interval."]
    lines += [f"- {d}" for d in disagreements] or ["Every main effect agrees."]
    return "\n".join(lines) + "\n"


def _interval(e: dict[str, float]) -> str:
    return f"{e['estimate']:+.4f} [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"


def _agreement(a: dict[str, float], b: dict[str, float]) -> str:
    reasons = []
    if math.copysign(1, a["estimate"]) != math.copysign(1, b["estimate"]):
        reasons.append("opposite sign")
    if not (b["ci_low"] <= a["estimate"] <= b["ci_high"] and a["ci_low"] <= b["estimate"] <= a["ci_high"]):
        reasons.append("an estimate outside the other's CI")
    return " and ".join(reasons) or "yes"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/fraction_effects.py",
        description="A fraction of a finished full grid, and its effects against the grid's.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extract", help="copy a fractional suite's trials out of a finished grid's folder")
    ext.add_argument("suite", help="the fractional suite (a name or a .yaml file with design: {fraction: R})")
    ext.add_argument(
        "--source", type=Path, required=True, help="the full grid's suite folder, e.g. logs/factorial/full"
    )
    ext.add_argument("--dest", type=Path, required=True, help="the fraction's suite folder")
    cmp = sub.add_parser("compare", help="main effects of the full grid against those of fractions")
    cmp.add_argument("full", type=Path)
    cmp.add_argument("fractions", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "extract":
            specs = extract(args.suite, args.source, args.dest)
            print(f"{len(specs)} specs of {args.suite} in {args.dest}")
        else:
            print(compare(args.full, args.fractions), end="")
    except (ValueError, ImportError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
