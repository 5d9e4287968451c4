"""The results of a suite, rebuilt from its trial folders: tables with statistics, CSVs, charts and TensorBoard.

`write_report` (``python -m ablations.report logs/notebook [--reference pixel] [--margin 0.01]``:
`ablations.report.__main__`) reads every ``<spec>/seed=<s>/result.json`` under the suite folder (e.g. after all
shards of a job array finish) and writes, all atomically:

- ``results.md``: the settings; per spec the test accuracy (mean ± std over seeds and its 95% t-based confidence
  interval), the difference from a reference spec (default ``pixel``), validation accuracy, the notebook's figure,
  the train − validation gap and the wall time; each spec's verdict against the reference (`stats.verdict` of
  Welch's interval, simultaneous over the comparisons, at ``margin``), with the smallest difference the seeds
  could detect when it is open; specs whose numbers are identical to another's, and why; the max-norm and
  BatchNorm diagnostics; for a factorial suite (specs covering every combination of their varying fields, e.g.
  ``full``) the main effects and two-factor interactions with their verdicts, and the simple effects of every
  resolved interaction; notes when the results mix settings, code versions or thread counts;
- ``results.csv`` (one row per spec) and, for a factorial suite, ``effects.csv``, each row with its ``verdict``,
  ``verdict_low``, ``verdict_high`` and ``margin``;
- ``results.png`` (each spec's difference from the reference with its verdict interval and the margin band; the
  best and worst cells of a large suite), ``curves.png`` (validation accuracy per epoch of the same specs in the
  same colours) and ``effects.png``, each title naming the suite (and its ``caption.txt``), cells, training
  images, precision and seeds;
- the TensorBoard run ``<suite>/_report``: the verdict table, ``results.md`` as text and the charts as images; and
  the suite's HParams record (``_hparams``) and each trial's session, one group per cell (see
  `ablations.report.board`).

Imports no torch: it reads the files `ablations.store` names.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ablations.report import board, plots
from ablations.rules import MARGIN, check_margin
from ablations.report.stats import (
    INTERACTION,
    LEVEL,
    POWER,
    VERDICTS,
    Contrast,
    FactorialFit,
    compare_with_reference,
    mean_ci,
)
from ablations.suite import cell_view
from ablations.store import (
    RESULT_FILE,
    folder_lock,
    list_trials,
    settings_key,
    write_bytes_atomic,
    write_text_atomic,
)
from ablations.report.analysis import (
    diagnostics,
    factorial_analysis,
    factorial_frame,
    identical_specs,
    mixed_environment,
)

DEFAULT_REFERENCE = "pixel"
REPORT_RUN = board.REPORT_RUN
CAPTION_FILE = "caption.txt"  # one line every chart's title carries


@dataclass
class SpecSummary:
    """One row of the results table: a spec's metrics over its seeds and its comparison with the reference."""

    spec: str
    order: int
    seeds: int
    test_acc: float
    test_acc_std: float
    test_acc_ci_low: float
    test_acc_ci_high: float
    val_acc: float
    val_acc_std: float
    notebook: Optional[float]
    train_val_gap: float  # final train accuracy minus final val accuracy: how much the spec overfits
    wall_time_s: float
    vs_reference: Optional[float] = None  # test accuracy minus the reference spec's, both means over seeds
    verdict: Optional[str] = None  # `stats.verdict` of the interval below (None for the reference itself)
    verdict_low: Optional[float] = None  # the difference's interval, simultaneous over every comparison
    verdict_high: Optional[float] = None
    margin: Optional[float] = None  # the equivalence margin the verdict was read with
    detectable: Optional[float] = None  # the smallest difference these seeds could detect (80% power)
    p_value: Optional[float] = None  # Welch's t-test against the reference
    p_adjusted: Optional[float] = None  # Bonferroni over every comparison: < 1 - LEVEL when the interval excludes 0
    identical_to: Optional[str] = None  # an earlier spec with exactly the same numbers
    test_acc_values: list[float] = field(default_factory=list)  # one per seed, in seed order
    val_acc_curve: list[float] = field(default_factory=list)  # mean over seeds, per epoch


@dataclass
class SuiteReport:
    """Everything the report says about a suite, before it is rendered."""

    name: str
    results: list[dict[str, Any]]
    rows: list[SpecSummary]
    reference: Optional[str]
    identical: list[tuple[str, str, str]]  # (spec, same as, why)
    factorial: Optional[FactorialFit]
    notes: list[str]
    problems: list[str]
    margin: float = MARGIN  # the equivalence margin every verdict is read with
    caption: str = ""  # said in every chart's title (`read_caption`)

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.results})


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def load_results(suite_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every result of the suite that counts, and a line for each problem (`ablations.store.list_trials`)."""
    listing = list_trials(suite_dir)
    return list(listing.results.values()), listing.problems


def _spec_row(spec: str, runs: list[dict[str, Any]]) -> SpecSummary:
    runs = sorted(runs, key=lambda r: r["seed"])
    test = [r["metrics"]["test/acc"] for r in runs]
    val = [r["metrics"]["val/acc"] for r in runs]
    interval = mean_ci(test)
    epochs = min(len(r.get("history", [])) for r in runs)
    curve = [statistics.fmean(r["history"][e].get("val/acc", float("nan")) for r in runs) for e in range(epochs)]
    return SpecSummary(
        spec=spec,
        order=runs[0].get("order", 0),
        seeds=len(runs),
        test_acc=interval.estimate,
        test_acc_std=_std(test),
        test_acc_ci_low=interval.low,
        test_acc_ci_high=interval.high,
        val_acc=statistics.fmean(val),
        val_acc_std=_std(val),
        notebook=runs[0].get("notebook"),
        train_val_gap=statistics.fmean(r["metrics"]["train/acc"] - r["metrics"]["val/acc"] for r in runs),
        wall_time_s=statistics.fmean(r.get("wall_time_s", float("nan")) for r in runs),
        test_acc_values=test,
        val_acc_curve=curve,
    )


def summarize(results: list[dict[str, Any]]) -> list[SpecSummary]:
    """One `SpecSummary` per spec, in suite order (comparisons not filled in: see `compare`)."""
    by_spec: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_spec.setdefault(result["spec"], []).append(result)
    rows = [_spec_row(spec, runs) for spec, runs in by_spec.items()]
    rows.sort(key=lambda row: (row.order, row.spec))
    return rows


def choose_reference(rows: list[SpecSummary], requested: Optional[str]) -> tuple[Optional[str], list[str]]:
    """The reference spec and a note if the default had to be replaced.

    Raises:
        ValueError: if `requested` is not one of the specs.
    """
    specs = [row.spec for row in rows]
    if requested is not None:
        if requested not in specs:
            raise ValueError(
                f"--reference {requested!r} is not a spec of these results; choose one of {', '.join(specs)}"
            )
        return requested, []
    if not rows or DEFAULT_REFERENCE in specs:
        return (DEFAULT_REFERENCE if rows else None), []
    return specs[0], [f"reference spec: {specs[0]} (the default, {DEFAULT_REFERENCE}, is not in these results)"]


def compare(rows: list[SpecSummary], reference: str, margin: float = MARGIN) -> None:
    """Fill in every row's comparison with the reference spec (`stats.compare_with_reference`: Welch intervals
    simultaneous over the comparisons, and their verdicts at `margin`)."""
    groups = {r.spec: r.test_acc_values for r in rows}
    tests = {t.name: t for t in compare_with_reference(groups, reference, margin=margin)}
    for row in rows:
        test = tests.get(row.spec)
        if test is None:  # the reference itself
            row.vs_reference = 0.0
            continue
        row.vs_reference, row.verdict, row.margin = test.effect.estimate, test.verdict, margin
        if test.effect.known:
            row.verdict_low, row.verdict_high = test.effect.low, test.effect.high
            row.p_value, row.p_adjusted, row.detectable = test.p_value, test.p_adjusted, test.detectable


class NothingToReport(ValueError):
    """The folder holds no finished trial of the suite, or results of another suite."""


def _trial_name(result: dict[str, Any]) -> str:
    return f"{result['spec']}/seed={result['seed']}"


def check_suite_folder(suite_dir: Path, results: list[dict[str, Any]], problems: list[str]) -> None:
    """Raise `NothingToReport` if `suite_dir` holds no result at all, or results of a suite of another name (a
    suite's folder is ``LOGDIR/SUITE``: results of other suites are never merged into its table)."""
    if not results:
        inside = sorted(
            {p.parents[2].relative_to(suite_dir).as_posix() for p in suite_dir.glob(f"*/*/seed=*/{RESULT_FILE}")}
        )
        hint = f"; it holds the suite folders {', '.join(inside)}: give one of them" if inside else ""
        failed = f" ({len(problems)} problem(s): {'; '.join(problems[:3])})" if problems else ""
        raise NothingToReport(f"{suite_dir} holds no finished trial (no <spec>/seed=<s>/{RESULT_FILE}){failed}{hint}")
    foreign = [r for r in results if r.get("suite", suite_dir.name) != suite_dir.name]
    if foreign:
        suites = sorted({str(r["suite"]) for r in foreign})
        raise NothingToReport(
            f"{suite_dir} is the folder of suite {suite_dir.name!r}, but {len(foreign)} of its "
            f"{len(results)} results belong to suite(s) {', '.join(suites)} (e.g. "
            f"{_trial_name(foreign[0])}): they are not merged into one table; report each suite "
            "from its own folder, LOGDIR/SUITE"
        )


def select_settings(
    results: list[dict[str, Any]], settings: Optional[str] = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The results of one set of settings (`ablations.store.settings_key`), and a line for each other set, whose
    trials are excluded: trials of different settings never enter one comparison.

    `settings`: the key to keep (a sweep passes its own); None keeps the set with the most trials.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        factors = tuple(result.get("factors") or {})  # a setting factor's levels differ within one comparison
        groups.setdefault(settings_key(result.get("settings", {}), factors), []).append(result)
    if settings is None:
        settings = max(groups, key=lambda key: (len(groups[key]), key)) if groups else ""
    kept = groups.get(settings, [])
    chosen = json.loads(settings) if settings else {}
    lines = []
    for key, excluded in groups.items():
        if key == settings:
            continue
        other = json.loads(key)
        changed = ", ".join(
            f"{k}={json.dumps(other.get(k))} (the table's: {json.dumps(chosen.get(k))})"
            for k in sorted(set(other) | set(chosen))
            if other.get(k) != chosen.get(k)
        )
        names = ", ".join(_trial_name(r) for r in excluded[:5]) + (" ..." if len(excluded) > 5 else "")
        lines.append(
            f"excluded {len(excluded)} trial(s) trained with other settings, {changed}: {names}; "
            "they are not compared with the table's trials"
        )
    return kept, lines


def build_report(
    suite_dir: Path, reference: Optional[str] = None, settings: Optional[str] = None, margin: float = MARGIN
) -> SuiteReport:
    """Read and analyse the suite's results of one set of settings (`select_settings`); verdicts at `margin`.

    Raises:
        NothingToReport: `suite_dir` holds no finished trial, none of `settings`, or results of another suite.
        ValueError: for an unknown `reference`.
    """
    results, problems = load_results(suite_dir)
    check_suite_folder(suite_dir, results, problems)
    results, excluded = select_settings(results, settings)
    if not results:
        raise NothingToReport(f"{suite_dir} holds no finished trial of the settings asked for; " + "; ".join(excluded))
    problems += excluded
    results = [cell_view(r) for r in results]  # a setting factor is a row's field like a spec field
    rows = summarize(results)
    reference, notes = choose_reference(rows, reference)
    if reference is not None:
        compare(rows, reference, margin)
    identical = identical_specs(results)
    same_as = {spec: earlier for spec, earlier, _ in identical}
    for row in rows:
        row.identical_to = same_as.get(row.spec)
    notes += mixed_environment(results)
    factorial = factorial_analysis(results, margin)
    return SuiteReport(suite_dir.name, results, rows, reference, identical, factorial, notes, problems, margin)


# ------------------------------------------------------------------------------------------------ rendering
def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f}" if std != std else f"{mean:.4f} ± {std:.4f}"


def _ci(low: Optional[float], high: Optional[float], fmt: str = ".4f") -> str:
    return "—" if low is None or low != low else f"[{low:{fmt}}, {high:{fmt}}]"


def _opt(value: Optional[float], fmt: str) -> str:
    return "—" if value is None or value != value else format(value, fmt)


def _number(count: int) -> str:
    return f"{count:,}"


def settings_line(report: SuiteReport) -> str:
    """The training settings every chart and table carries (from the first result; mixes are noted apart)."""
    if not report.results:
        return "no finished trials"
    first = report.results[0]
    s = first["settings"]
    seeds = report.seeds
    parts = [
        f"{s.get('epochs', '?')} epochs",
        f"{_number(first.get('train_images', 0))} training images",
        f"{_number(first.get('val_images', 0))} validation",
        f"{_number(first.get('test_images', 0))} test",
        f"batch {s.get('batch_size', '?')}",
        f"seeds {', '.join(map(str, seeds))}",
    ]
    return " · ".join(parts)


def constant_settings(report: SuiteReport) -> str:
    """Every training setting the trials share (the HParams tab shows only what varies)."""
    if not report.results:
        return ""
    shared = dict(report.results[0]["settings"])
    for result in report.results[1:]:
        shared = {k: v for k, v in shared.items() if result["settings"].get(k) == v}
    shared = {k: v for k, v in shared.items() if k not in ("spec", "seed")}
    shared = {k: (v["class_path"] if isinstance(v, dict) and "class_path" in v else v) for k, v in shared.items()}
    return "\n\nSettings of every trial: " + ", ".join(f"`{k}={v}`" for k, v in sorted(shared.items()))


def spec_table(report: SuiteReport) -> str:
    """The per-spec table (markdown)."""
    ref = report.reference or "reference"
    lines = [
        f"| spec | seeds | test acc | 95% CI | vs {ref} | val acc | notebook | train − val | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        same = f" (= {r.identical_to})" if r.identical_to else ""
        lines.append(
            f"| {r.spec}{same} | {r.seeds} | {_pm(r.test_acc, r.test_acc_std)} | "
            f"{_ci(r.test_acc_ci_low, r.test_acc_ci_high)} | {_opt(r.vs_reference, '+.4f')} | "
            f"{_pm(r.val_acc, r.val_acc_std)} | {_opt(r.notebook, '.3f')} | {r.train_val_gap:+.4f} | "
            f"{_opt(r.wall_time_s, '.0f')} |"
        )
    return "\n".join(lines)


def _detectable(value: Optional[float]) -> str:
    return "" if value is None or value != value else f"could detect ±{value:.3f}"


def verdicts_text(report: SuiteReport) -> str:
    """One paragraph: each spec's verdict against the reference, grouped by verdict."""
    compared = [r for r in report.rows if r.spec != report.reference]
    if not compared:
        return ""
    tested = [r for r in compared if r.verdict_low is not None]
    if not tested:
        return (
            f"No difference from `{report.reference}` can be tested: a comparison needs at least two seeds of "
            "both specs."
        )
    seeds = "/".join(map(str, sorted({r.seeds for r in tested})))
    parts = []
    for key in VERDICTS:
        specs = [r for r in tested if r.verdict == key]
        if specs:
            names = ", ".join(
                f"{r.spec} ({r.vs_reference:+.3f}" + (f"; {_detectable(r.detectable)})" if key == "open" else ")")
                for r in specs
            )
            parts.append(f"**{key}**: {names}")
    text = (
        f"Verdicts against `{report.reference}` at {seeds} seeds (margin ±{report.margin:g}; intervals "
        f"simultaneous over the {len(compared)} comparisons at {LEVEL:.0%}): " + "; ".join(parts) + "."
    )
    untested = [r.spec for r in compared if r.verdict_low is None]
    if untested:
        text += f" Not tested (fewer than two seeds, or no spread at all): {', '.join(untested)}."
    return text


def comparison_table(report: SuiteReport) -> str:
    """Each spec against the reference (markdown): the difference, the interval its verdict reads, the verdict."""
    lines = [
        f"| spec | difference | {LEVEL:.0%} simultaneous interval | verdict (margin ±{report.margin:g}) | "
        "could detect | p | adjusted p |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in report.rows:
        if r.spec == report.reference:
            continue
        detect = _opt(r.detectable, ".3f") if r.verdict == "open" else "—"
        lines.append(
            f"| {r.spec} | {_opt(r.vs_reference, '+.4f')} | {_ci(r.verdict_low, r.verdict_high, '+.4f')} | "
            f"{r.verdict if r.verdict_low is not None else '— (not tested)'} | {detect} | "
            f"{_opt(r.p_value, '.3g')} | {_opt(r.p_adjusted, '.3g')} |"
        )
    return "\n".join(lines)


def identical_section(report: SuiteReport) -> str:
    return "\n".join(
        f"- `{spec}` gave exactly the numbers of `{same}` for every seed: {why}" for spec, same, why in report.identical
    )


def diagnostics_table(report: SuiteReport) -> str:
    """The last epoch's diagnostics per spec, mean over seeds (markdown), or "" when none was logged."""
    table = diagnostics(report.results)
    if not table:
        return ""
    names = list(dict.fromkeys(name for values in table.values() for name in values))
    lines = [f"| spec | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    for spec, values in table.items():
        lines.append(f"| {spec} | " + " | ".join(_opt(values.get(n), ".4f") for n in names) + " |")
    return "\n".join(lines)


def _effect_line(t: Contrast, read_with: str = "") -> str:
    detect = _opt(t.detectable, ".3f") if t.verdict == "open" else "—"
    return (
        f"| {t.name} | {t.effect.estimate:+.4f} | {_ci(t.effect.low, t.effect.high, '+.4f')} | {t.verdict} | "
        f"{detect} | {_opt(t.p_adjusted, '.3g')} | {read_with} |"
    )


def effects_table(fit: FactorialFit) -> str:
    """The effects (markdown), each main effect qualified by a resolved interaction pointing to it."""
    margin = fit.effects[0].margin if fit.effects else MARGIN
    lines = [
        f"| effect | change in test acc | {LEVEL:.0%} simultaneous interval | verdict (margin ±{margin:g}) | "
        "could detect | adjusted p | read with |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for t in fit.effects:
        qualifiers = fit.qualifiers(t.name) if INTERACTION not in t.name else []
        lines.append(_effect_line(t, ", ".join(f"`{q}`: see its simple effects" for q in qualifiers)))
    return "\n".join(lines)


def simple_effects_table(fit: FactorialFit) -> str:
    """The simple effects of every resolved interaction (markdown), or ""."""
    resolved = fit.resolved_interactions()
    if not resolved:
        return ""
    lines = [
        "| interaction | simple effect | change in test acc | interval | verdict | could detect | adjusted p | |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for interaction in resolved:
        for t in fit.simple[interaction.name]:
            lines.append(f"| {interaction.name} " + _effect_line(t))
    return "\n".join(lines)


def _noise_source(fit: FactorialFit, seeds: int) -> str:
    """Where the intervals' noise comes from."""
    pooled = "three-factor and higher interactions" if fit.interactions else "interactions"
    if seeds == 1:
        return (
            f"One seed per cell: the intervals come from the model's residuals, the {fit.residual_df} degrees of "
            f"freedom of the {pooled} pooled as noise (the seed-to-seed spread is not measured apart)."
        )
    return (
        f"The intervals come from the model's residuals ({fit.residual_df} degrees of freedom): the seeds' spread "
        f"and the {pooled}, pooled."
    )


def effects_section(fit: Optional[FactorialFit], seeds: int = 1) -> str:
    if fit is None:
        return ""
    if fit.problem:
        return f"Not estimated: {fit.problem}."
    model = "every main effect and two-factor interaction" if fit.interactions else "main effects only"
    simple = simple_effects_table(fit)
    return (
        f"A linear model of test accuracy over the trials ({model}). A main effect `X` is the mean change when X is "
        "switched on, averaged over every level of the other factors; `X × Y` is how much more (or less) X changes "
        "accuracy when Y is on. "
        + _noise_source(fit, seeds)
        + f" Intervals are {LEVEL:.0%} simultaneous (Bonferroni) over the family of {fit.family} contrasts fixed "
        "before looking: the effects below and every interaction's simple effects. A main effect that a resolved "
        "interaction qualifies is read with that interaction's simple effects, not alone.\n\n"
        + effects_table(fit)
        + (f"\n\n### Simple effects of the resolved interactions\n\n{simple}" if simple else "")
        + aliased_note(fit)
    )


def aliased_note(fit: FactorialFit) -> str:
    """For a fractional design: the effects it cannot separate, which the table leaves out."""
    if not fit.aliased:
        return ""
    return (
        f"\n\nFractional design: these {len(fit.aliased)} effects are aliased with the model's (the trials "
        "run cannot separate them) and are not estimated: " + ", ".join(f"`{n}`" for n in fit.aliased) + "."
    )


def comparison_section(report: SuiteReport) -> str:
    if len(report.rows) < 2:
        return ""
    return (
        f"Welch's interval of each difference in test accuracy, simultaneous over the {len(report.rows) - 1} "
        f"comparisons (Bonferroni, {LEVEL:.0%} family-wise). The verdict reads that interval: `equivalent` within "
        f"±{report.margin:g}, else `better` / `worse` when it excludes 0, else `open`, with the smallest "
        f"difference these seeds could detect ({POWER:.0%} power).\n\n"
        f"{comparison_table(report)}\n\n{verdicts_text(report)}"
    )


def markdown(report: SuiteReport) -> str:
    """results.md: every section that has something to say."""
    sections = [
        (
            f"# Suite `{report.name}`: {len(report.rows)} specs, {len(report.results)} trials",
            settings_line(report) + constant_settings(report),
        ),
        (
            "## Test accuracy per spec",
            report.rows
            and "Mean ± std over seeds, and the 95% confidence interval of the "
            f"mean (t-based); `vs {report.reference}` is the difference of means from the reference spec.\n\n"
            + spec_table(report),
        ),
        (f"## Each spec against `{report.reference}` (margin ±{report.margin:g})", comparison_section(report)),
        ("## Identical results", identical_section(report)),
        ("## Diagnostics (last epoch, mean over seeds)", diagnostics_table(report)),
        (
            f"## Factorial effects on test accuracy (margin ±{report.margin:g})",
            effects_section(report.factorial, min((r.seeds for r in report.rows), default=1)),
        ),
        ("## Notes", "\n".join(f"- {note}" for note in report.notes)),
        ("Problems:", "\n".join(f"- {problem}" for problem in report.problems)),
    ]
    return "\n\n".join(f"{title}\n\n{body}" for title, body in sections if body) + "\n"


def csv_text(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if records:
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    return buffer.getvalue()


def spec_records(rows: list[SpecSummary]) -> list[dict[str, Any]]:
    """results.csv: one record per spec, without the per-seed and per-epoch lists."""
    return [{k: v for k, v in asdict(row).items() if k not in ("test_acc_values", "val_acc_curve")} for row in rows]


def _effect_record(t: Contrast, kind: str, qualified_by: str = "") -> dict[str, Any]:
    return {
        "effect": t.name,
        "kind": kind,
        "estimate": t.effect.estimate,
        "verdict": t.verdict,
        "verdict_low": t.effect.low,
        "verdict_high": t.effect.high,
        "margin": t.margin,
        "detectable": t.detectable,
        "p_value": t.p_value,
        "p_adjusted": t.p_adjusted,
        "family": t.family,
        "qualified_by": qualified_by,
    }


def effect_records(fit: FactorialFit) -> list[dict[str, Any]]:
    """effects.csv: the main effects and interactions, then the simple effects of the resolved interactions
    (``kind`` simple, ``qualified_by`` naming their interaction)."""
    records = [
        _effect_record(
            t,
            "interaction" if INTERACTION in t.name else "main",
            "" if INTERACTION in t.name else " ".join(fit.qualifiers(t.name)),
        )
        for t in fit.effects
    ]
    for interaction in fit.resolved_interactions():
        records += [_effect_record(t, "simple", interaction.name) for t in fit.simple[interaction.name]]
    return records


CHARTS = {
    "results.png": "report/test_accuracy",  # differences in test accuracy from the reference
    "curves.png": "report/val_accuracy",
    "effects.png": "report/effects",
}  # file -> its TensorBoard image tag
MAX_SHOWN = 10  # a suite of more specs shows the reference and its best and worst cells (never a 96-row chart)


def _seed_range(report: SuiteReport, spec: str) -> tuple[list[float], list[float]]:
    """Per epoch, the lowest and the highest validation accuracy over the spec's seeds (for the band)."""
    runs = [r for r in report.results if r["spec"] == spec]
    epochs = min(len(r.get("history", [])) for r in runs)
    values = [[r["history"][e].get("val/acc", float("nan")) for r in runs] for e in range(epochs)]
    return [min(v) for v in values], [max(v) for v in values]


def read_caption(suite_dir: Path) -> str:
    """The suite's chart caption: the first line of ``<suite>/caption.txt`` (e.g. that its data are synthetic),
    or ""."""
    path = Path(suite_dir) / CAPTION_FILE
    return path.read_text().strip().splitlines()[0] if path.is_file() and path.read_text().strip() else ""


def shown_rows(report: SuiteReport) -> tuple[list[SpecSummary], str]:
    """The specs every chart draws, in suite order, and a note when some are left out: all of them up to
    `MAX_SHOWN`, else the reference and the best and worst cells by mean test accuracy (copies of another spec's
    numbers left out)."""
    if len(report.rows) <= MAX_SHOWN:
        return list(report.rows), ""
    reference = [r for r in report.rows if r.spec == report.reference]
    others = sorted((r for r in report.rows if r not in reference and not r.identical_to), key=lambda r: r.test_acc)
    worst = (MAX_SHOWN - len(reference)) // 2
    best = MAX_SHOWN - len(reference) - worst
    kept = {r.spec for r in [*reference, *others[:worst], *others[-best:]]}
    note = f"{len(kept)} of {len(report.rows)} specs: " + ("the reference, " if reference else "")
    shown = sorted((r for r in report.rows if r.spec in kept), key=lambda r: -r.test_acc)  # best first
    return shown, note + f"the {best} best and the {worst} worst cells, best first"


def headline(report: SuiteReport) -> str:
    """What every chart's title says: the suite (and caption), its cells, training images, precision and seeds."""
    first = report.results[0] if report.results else {}
    settings = first.get("settings", {})
    counts = sorted({r.seeds for r in report.rows})
    seeds = "/".join(map(str, counts)) + (" seed" if counts == [1] else " seeds")
    cells = f"{len(report.rows)} specs"
    design = factorial_frame(report.results) if report.factorial is not None and report.factorial.effects else None
    if design is not None:
        grid = math.prod(len(f.levels) for f in design[1])
        cells = f"{len(report.rows)} of {grid} cells" if len(report.rows) < grid else f"{grid} cells"
    parts = [
        f"Suite '{report.name}'" + (f" ({report.caption})" if report.caption else ""),
        cells,
        f"{_number(first.get('train_images', 0))} training images",
        f"precision {settings.get('precision', '?')}",
        seeds,
    ]
    return " · ".join(parts)


def _difference(row: SpecSummary, reference: Optional[str], colour: Any) -> plots.Difference:
    label = f"{row.spec}  {row.test_acc:.3f}"
    if row.spec == reference:
        return plots.Difference(label, 0.0, float("nan"), float("nan"), None, colour)
    low = float("nan") if row.verdict_low is None else row.verdict_low
    high = float("nan") if row.verdict_high is None else row.verdict_high
    note = _detectable(row.detectable) if row.verdict == "open" else ""
    if row.verdict_low is None:
        note = "no interval: one seed" if row.seeds < 2 else "no interval: no spread"
    tested = row.verdict_low is not None
    return plots.Difference(label, row.vs_reference or 0.0, low, high, row.verdict, colour, note, tested)


def _effect_row(fit: FactorialFit, t: Contrast) -> plots.EffectRow:
    qualified = tuple(fit.qualifiers(t.name)) if INTERACTION not in t.name else ()
    label = t.name + (f"  (see {', '.join(qualified)})" if qualified else "")
    return plots.EffectRow(label, t.effect.estimate, t.effect.low, t.effect.high, t.verdict, qualified)


def charts(report: SuiteReport, layout: plots.Layout) -> dict[str, bytes]:
    """The report's charts by file name (`CHARTS`), drawn at `layout`'s size; every chart draws the same specs
    (`shown_rows`) in the same colours."""
    settings = settings_line(report)
    title = headline(report)
    shown, note = shown_rows(report)
    colours = plots.spec_colours([r.spec for r in shown])
    margin = report.margin
    subtitle = f"{settings}" + (f" · {note}" if note else "")
    differences = [_difference(r, report.reference, colours[r.spec]) for r in shown]
    curves = [
        plots.Curve(
            r.spec,
            r.val_acc_curve,
            colours[r.spec],
            r.identical_to,
            *_seed_range(report, r.spec),
            reference=r.spec == report.reference,
        )
        for r in shown
    ]
    compared = len(report.rows) - 1
    pngs = {
        "results.png": plots.differences_chart(
            differences,
            margin,
            f"Test accuracy minus {report.reference}'s, with verdicts · {title}",
            f"{subtitle} · intervals simultaneous over the {compared} comparisons ({LEVEL:.0%}) · margin ±{margin:g}",
            layout,
        ),
        "curves.png": plots.curves_chart(
            curves,
            f"Validation accuracy per epoch · {title}",
            f"{subtitle} · line: mean over seeds · band: lowest to highest seed",
            layout,
        ),
    }
    fit = report.factorial
    if fit is not None and fit.effects:
        simple = [_effect_row(fit, t) for i in fit.resolved_interactions() for t in fit.simple[i.name]]
        seeds = min(r.seeds for r in report.rows)
        noise = "one seed: intervals from the model's residuals, higher interactions pooled" if seeds == 1 else ""
        pngs["effects.png"] = plots.effects_chart(
            [_effect_row(fit, t) for t in fit.effects],
            simple,
            margin,
            f"Effects on test accuracy · {title}",
            f"{settings} · intervals simultaneous over {fit.family} contrasts ({LEVEL:.0%}) · margin ±{margin:g}"
            + (f" · {noise}" if noise else ""),
            layout,
        )
    return pngs


def tensorboard_run(report: SuiteReport, text: str) -> list[Any]:
    """The summaries of the suite's ``_report`` run: the text and the charts (card-sized)."""
    images = [board.image_summary(CHARTS[name], png) for name, png in charts(report, plots.CARD).items()]
    return [board.text_summary("report/results", text), *images]


def write_report(
    suite_dir: Path, reference: Optional[str] = None, settings: Optional[str] = None, margin: float = MARGIN
) -> str:
    """Write results.md/.csv, effects.csv, the charts and the ``_report`` run for the suite in `suite_dir`, every
    verdict read at `margin`; returns the per-spec table and the verdicts (what a sweep prints).

    Only trials of one set of settings are reported (`select_settings`; `settings` picks which). Problems (failed,
    unreadable or excluded trials) are listed on stderr and at the end of results.md.
    Raises `NothingToReport` (a ValueError) for a folder without results of its suite, ValueError if `reference`
    is given and is not a spec of the results or for a bad `margin`, OSError if a file cannot be written (e.g. a
    full disk).
    """
    suite_dir = Path(suite_dir)
    check_margin(margin)
    with folder_lock(suite_dir, wait=True):  # two sweeps on one logdir take turns writing the report
        report = build_report(suite_dir, reference, settings, margin)
        report.caption = read_caption(suite_dir)
        write_tables_and_charts(suite_dir, report)
        if report.rows:
            answer = board.text_summary(board.ANSWER_TAG, board.verdict_markdown(suite_dir))  # from the CSVs
            board.write_run(suite_dir / REPORT_RUN, [answer, *tensorboard_run(report, markdown(report))], replace=True)
            board.write_suite_runs(suite_dir, report.results)  # the HParams record and each trial's session
    return report_text(report)


def report_text(report: SuiteReport) -> str:
    """The per-spec table and the verdicts on the comparisons (what a sweep and the report print)."""
    return spec_table(report) + ("\n\n" + verdicts_text(report) if report.reference else "")


def write_tables_and_charts(suite_dir: Path, report: SuiteReport) -> None:
    """results.md, results.csv, effects.csv and the charts (not the TensorBoard runs)."""
    write_text_atomic(suite_dir / "results.md", markdown(report))
    write_text_atomic(suite_dir / "results.csv", csv_text(spec_records(report.rows)))
    if report.factorial is not None and report.factorial.effects:
        write_text_atomic(suite_dir / "effects.csv", csv_text(effect_records(report.factorial)))
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not report.rows:
        return
    for name, png in charts(report, plots.PAGE).items():
        write_bytes_atomic(suite_dir / name, png)
