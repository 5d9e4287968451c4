"""Fractional designs for factorial suites: which level combinations of the full grid a suite's ``design`` runs,
and which effects such a design cannot separate.

``design: full`` (the default) runs every combination. ``design: {fraction: R}`` runs about 1/R of them: a regular
two-level fraction (``pydoe.fracfact``) when every factor has two levels and R is a power of two, else a
generalized subset design (``pydoe.gsd``) for mixed levels. The selected combinations are rows of the full grid, so
their trials are the full grid's trials (same folders, same settings hashes): a fraction reuses full-grid results
in the same logdir and the other way round. Needs the optional extra ``pip install -e ".[design]"``.

To report a fraction on its own, copy its rows out of a finished full grid and compare its effects with the
grid's (torch-free)::

    python -m ablations.designs extract half.yaml --source logs/factorial/full --dest logs/factorial-half/full
    python -m ablations.report logs/factorial-half/full
    python -m ablations.designs compare logs/factorial/full logs/factorial-half/full logs/factorial-quarter/full
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import shutil
import string
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

DOE_ADVICE = 'pip install -e ".[design]"'


def _pydoe() -> Any:
    try:
        import pydoe
    except ImportError:
        try:
            import pyDOE3 as pydoe
        except ImportError:
            raise ImportError(f"fractional designs need pyDOE: {DOE_ADVICE}") from None
    return pydoe


def fraction_of(value: Any) -> int:
    """The reduction R of a suite's ``design`` value: 1 for ``full`` (or absent), R for ``{fraction: R}``.

    Raises:
        ValueError: for any other value.
    """
    if value in (None, "full"):
        return 1
    if isinstance(value, dict) and set(value) == {"fraction"}:
        r = value["fraction"]
        if not isinstance(r, bool) and isinstance(r, int) and r >= 1:
            return r
    raise ValueError(f"design {value!r} must be 'full' or {{fraction: R}} with an integer R >= 1 "
                     "(R = 2: a half, 4: a quarter of the grid)")


def select(levels: Sequence[int], reduction: int) -> list[tuple[int, ...]]:
    """The level indices (one tuple per run, in grid order) of the design for factors with `levels` levels."""
    if reduction == 1:
        return list(itertools.product(*(range(k) for k in levels)))
    doe = _pydoe()
    p = round(math.log2(reduction))
    if all(k == 2 for k in levels) and 2 ** p == reduction and p < len(levels):
        base = string.ascii_lowercase[:len(levels) - p]
        words = itertools.chain.from_iterable(itertools.combinations(base, r) for r in range(len(base), 1, -1))
        extra = ["".join(c) for c in words][:p]  # the longest words first: the highest resolution
        if len(extra) < p:
            raise ValueError(f"a 1/{reduction} fraction of {len(levels)} two-level factors has too few runs")
        rows = (doe.fracfact(" ".join([*base, *extra])) > 0).astype(int)
    else:
        try:
            rows = doe.gsd(list(levels), reduction)
        except ValueError as error:
            raise ValueError(f"no generalized subset design of levels {list(levels)} with reduction "
                             f"{reduction}: {error}") from None
    return sorted({tuple(int(v) for v in row) for row in np.atleast_2d(rows)})


def model_matrix(runs: Sequence[Sequence[int]] | np.ndarray, levels: Sequence[int],
                 interactions: bool = True) -> np.ndarray:
    """Intercept, treatment dummies of every non-reference level and (with `interactions`) their pairwise
    products across factors: the columns `ablations.report.stats` fits, here on level indices."""
    table = np.asarray(runs)
    blocks = [[(table[:, f] == lv).astype(float) for lv in range(1, k)] for f, k in enumerate(levels)]
    columns = [np.ones(len(table))] + [c for b in blocks for c in b]
    if interactions:
        for a, b in itertools.combinations(blocks, 2):
            columns += [x * y for x in a for y in b]
    return np.column_stack(columns)


def contrasts(levels: Sequence[int], interactions: bool = True) -> dict[tuple[int, ...], np.ndarray]:
    """The report's effects as rows over `model_matrix`'s columns, averaged over the full grid (as
    `ablations.report.stats` defines them): key ``(f, level)`` for a main effect, ``(f, a, g, b)`` for an
    interaction."""
    grid = np.array(list(itertools.product(*(range(k) for k in levels))))
    x = model_matrix(grid, levels, interactions)

    def mean(**fixed: int) -> np.ndarray:
        mask = np.logical_and.reduce([grid[:, int(f[1:])] == v for f, v in fixed.items()])
        return x[mask].mean(axis=0)

    rows: dict[tuple[int, ...], np.ndarray] = {}
    for f, k in enumerate(levels):
        for lv in range(1, k):
            rows[(f, lv)] = mean(**{f"f{f}": lv}) - mean(**{f"f{f}": 0})
    if interactions:
        for f, g in itertools.combinations(range(len(levels)), 2):
            for a, b in itertools.product(range(1, levels[f]), range(1, levels[g])):
                rows[(f, a, g, b)] = (mean(**{f"f{f}": a, f"f{g}": b}) - mean(**{f"f{f}": a, f"f{g}": 0})
                                      - mean(**{f"f{f}": 0, f"f{g}": b}) + mean(**{f"f{f}": 0, f"f{g}": 0}))
    return rows


def aliased(runs: Sequence[Sequence[int]], levels: Sequence[int], interactions: bool = True) -> list[tuple]:
    """The effects (`contrasts` keys) the runs cannot estimate under the model: an effect is estimable only if its
    row lies in the row space of the runs' model matrix (adding it leaves the rank unchanged); the others are
    aliased with effects in the model and must not be reported as estimated."""
    x = model_matrix(runs, levels, interactions)
    rank = np.linalg.matrix_rank(x)
    return [key for key, row in contrasts(levels, interactions).items()
            if np.linalg.matrix_rank(np.vstack([x, row])) > rank]


# ------------------------------------------------------------------------------- a fraction of a finished grid
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
        raise ValueError(f"{len(missing)} of the {len(specs)} specs of {suite} have no finished trial in {source}: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    for spec in specs:
        for trial in sorted((source / spec).glob("seed=*")):
            if (trial / RESULT_FILE).exists() and not (dest / spec / trial.name).exists():
                shutil.copytree(trial, dest / spec / trial.name, ignore=shutil.ignore_patterns(".lock"))
    return specs


def main_effects(suite_dir: Path) -> dict[str, dict[str, float]]:
    """effect -> {estimate, ci_low, ci_high} of the main effects in a report's ``effects.csv``."""
    path = suite_dir / "effects.csv"
    if not path.exists():
        raise ValueError(f"{path} does not exist: run python -m ablations.report {suite_dir} (a factorial suite's "
                         "report writes it)")
    with open(path, newline="") as handle:
        return {row["effect"]: {k: float(row[k]) for k in ("estimate", "ci_low", "ci_high")}
                for row in csv.DictReader(handle) if row["kind"] == "main"}


def compare(full: Path, others: Sequence[Path]) -> str:
    """Markdown: each main effect of the full grid next to the same effect estimated by each fraction, and
    whether they agree (same sign, and each estimate inside the other's 95% CI)."""
    ref = main_effects(full)
    fits = {str(o): main_effects(o) for o in others}
    head = ["effect", f"{full} (95% CI)"] + [f"{o} (95% CI)" for o in fits] + ["agree"]
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
    lines += ["", "Agree: same sign, and each estimate inside the other's 95% CI."]
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
    parser = argparse.ArgumentParser(prog="python -m ablations.designs",
                                     description="A fraction of a finished full grid, and its effects against "
                                                 "the grid's.")
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extract", help="copy a fractional suite's trials out of a finished grid's folder")
    ext.add_argument("suite", help="the fractional suite (a name or a .yaml file with design: {fraction: R})")
    ext.add_argument("--source", type=Path, required=True,
                     help="the full grid's suite folder, e.g. logs/factorial/full")
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
