"""The results of a suite, rebuilt from its trial folders: tables with statistics, CSVs, charts and TensorBoard.

`write_report` (``python -m ablations.report logs/notebook [--reference pixel]``: `ablations.report.__main__`)
reads every ``<spec>/seed=<s>/result.json`` under the suite folder (e.g. after all shards of a job array finish) and
writes, all atomically:

- ``results.md``: the settings; per spec the test accuracy (mean ± std over seeds and its 95% t-based confidence
  interval), the difference from a reference spec (default ``pixel``), validation accuracy, the notebook's figure,
  the train − validation gap and the wall time; each spec against the reference by Welch's t-test with Holm's
  correction, saying which differences this number of seeds resolves; specs whose numbers are identical to
  another's, and why; the max-norm and BatchNorm diagnostics; for a factorial suite (specs covering every
  combination of their varying fields, e.g. ``full``) the main effects and two-factor interactions on test
  accuracy with their CIs; notes when the results mix settings, code versions or thread counts;
- ``results.csv`` (one row per spec) and, for a factorial suite, ``effects.csv``;
- ``results.png`` (test accuracy per spec), ``curves.png`` (validation accuracy per epoch: mean and range over
  seeds) and ``effects.png``, each title carrying the suite's ``caption.txt`` if it has one;
- the TensorBoard run ``<suite>/_report``: the verdict table, ``results.md`` as text and the charts as images; and
  the suite's HParams record (``_hparams``) and each trial's session, one group per cell (see
  `ablations.report.board`).

Imports no torch: it reads the files `ablations.store` names.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ablations.report import board, plots
from ablations.report.stats import LEVEL, FactorialFit, compare_with_reference, mean_ci
from ablations.identity import cell_view
from ablations.store import (
    RESULT_FILE,
    folder_lock,
    list_trials,
    settings_key,
    write_bytes_atomic,
    write_text_atomic,
)
from ablations.report.analysis import diagnostics, factorial_analysis, identical_specs, mixed_environment

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
    vs_reference_ci_low: Optional[float] = None
    vs_reference_ci_high: Optional[float] = None
    p_value: Optional[float] = None  # Welch's t-test against the reference
    p_holm: Optional[float] = None  # Holm-corrected over every comparison with the reference
    resolved: Optional[bool] = None  # p_holm < 1 - LEVEL
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


def compare(rows: list[SpecSummary], reference: str) -> None:
    """Fill in every row's comparison with the reference spec (Welch's t-test, Holm-corrected)."""
    tests = {t.name: t for t in compare_with_reference({r.spec: r.test_acc_values for r in rows}, reference)}
    for row in rows:
        test = tests.get(row.spec)
        if test is None:  # the reference itself
            row.vs_reference = 0.0
            continue
        row.vs_reference = test.effect.estimate
        if test.effect.known:
            row.vs_reference_ci_low, row.vs_reference_ci_high = test.effect.low, test.effect.high
            row.p_value, row.p_holm, row.resolved = test.p_value, test.p_holm, test.resolved


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


def build_report(suite_dir: Path, reference: Optional[str] = None, settings: Optional[str] = None) -> SuiteReport:
    """Read and analyse the suite's results of one set of settings (`select_settings`).

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
        compare(rows, reference)
    identical = identical_specs(results)
    same_as = {spec: earlier for spec, earlier, _ in identical}
    for row in rows:
        row.identical_to = same_as.get(row.spec)
    notes += mixed_environment(results)
    return SuiteReport(
        suite_dir.name, results, rows, reference, identical, factorial_analysis(results), notes, problems
    )


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


def verdict(report: SuiteReport) -> str:
    """One paragraph: which differences from the reference this number of seeds resolves."""
    compared = [r for r in report.rows if r.spec != report.reference]
    tested = [r for r in compared if r.p_holm is not None]
    if not compared:
        return ""
    if not tested:
        return (
            f"No difference from `{report.reference}` can be tested: a comparison needs at least two seeds of "
            "both specs."
        )
    seeds = "/".join(map(str, sorted({r.seeds for r in tested})))
    resolved = [f"{r.spec} ({r.vs_reference:+.3f})" for r in tested if r.resolved]
    unresolved = [r.spec for r in tested if not r.resolved]
    text = f"**Resolved at {seeds} seeds** (Holm-corrected p < {1 - LEVEL:.2f}): " + (", ".join(resolved) or "none")
    if unresolved:
        text += (
            f". **Not resolved**: {', '.join(unresolved)}: their difference from `{report.reference}` is "
            "within what the seed-to-seed spread allows; more seeds are needed to tell."
        )
    untested = [r.spec for r in compared if r.p_holm is None]
    if untested:
        text += f" Not tested (fewer than two seeds, or no spread at all): {', '.join(untested)}."
    return text


def comparison_table(report: SuiteReport) -> str:
    """Each spec against the reference (markdown)."""
    lines = ["| spec | difference | 95% CI | p | Holm p | resolved |", "|---|---:|---:|---:|---:|---|"]
    for r in report.rows:
        if r.spec == report.reference:
            continue
        resolved = "—" if r.resolved is None else ("yes" if r.resolved else "no")
        interval = _ci(r.vs_reference_ci_low, r.vs_reference_ci_high)
        lines.append(
            f"| {r.spec} | {_opt(r.vs_reference, '+.4f')} | {interval} | {_opt(r.p_value, '.3g')} | "
            f"{_opt(r.p_holm, '.3g')} | {resolved} |"
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


def effects_table(fit: FactorialFit) -> str:
    lines = ["| effect | change in test acc | 95% CI | Holm p | resolved |", "|---|---:|---:|---:|---|"]
    for t in fit.effects:
        lines.append(
            f"| {t.name} | {t.effect.estimate:+.4f} | {_ci(t.effect.low, t.effect.high)} | "
            f"{_opt(t.p_holm, '.3g')} | {'yes' if t.resolved else 'no'} |"
        )
    return "\n".join(lines)


def effects_section(fit: Optional[FactorialFit]) -> str:
    if fit is None:
        return ""
    if fit.problem:
        return f"Not estimated: {fit.problem}."
    model = "every main effect and two-factor interaction" if fit.interactions else "main effects only"
    return (
        f"A linear model of test accuracy over the trials ({model}; {fit.residual_df} residual degrees of "
        "freedom, higher interactions taken as noise). A main effect `X` is the mean change when X is switched "
        "on, averaged over every level of the other factors; `X × Y` is how much more (or less) X changes "
        "accuracy when Y is on. CIs are 95%; p-values Holm-corrected over all effects.\n\n"
        + effects_table(fit)
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
        f"Welch's t-test on test accuracy, p-values Holm-corrected over the {len(report.rows) - 1} "
        f"comparisons.\n\n{comparison_table(report)}\n\n{verdict(report)}"
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
        (f"## Each spec against `{report.reference}`", comparison_section(report)),
        ("## Identical results", identical_section(report)),
        ("## Diagnostics (last epoch, mean over seeds)", diagnostics_table(report)),
        ("## Factorial effects on test accuracy", effects_section(report.factorial)),
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


def effect_records(fit: FactorialFit) -> list[dict[str, Any]]:
    return [
        {
            "effect": t.name,
            "kind": "interaction" if " × " in t.name else "main",
            "estimate": t.effect.estimate,
            "ci_low": t.effect.low,
            "ci_high": t.effect.high,
            "p_value": t.p_value,
            "p_holm": t.p_holm,
            "resolved": t.resolved,
        }
        for t in fit.effects
    ]


def _verdict_key(row: SpecSummary, reference: Optional[str]) -> str:
    if row.spec == reference:
        return "reference"
    if not row.resolved:
        return "unresolved"
    return "better" if (row.vs_reference or 0.0) > 0 else "worse"


CHARTS = {
    "results.png": "report/test_accuracy",
    "curves.png": "report/val_accuracy",
    "effects.png": "report/effects",
}  # file -> its TensorBoard image tag


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


def charts(report: SuiteReport, layout: plots.Layout) -> dict[str, bytes]:
    """The report's charts by file name (`CHARTS`), drawn at `layout`'s size."""
    settings = settings_line(report)
    counts = {r.seeds for r in report.rows}
    bars = [
        plots.Bar(
            r.spec
            + ("" if len(counts) == 1 else f"  (n={r.seeds})")
            + (f" (= {r.identical_to})" if r.identical_to else ""),
            r.test_acc_values,
            r.test_acc,
            r.test_acc_ci_low,
            r.test_acc_ci_high,
            _verdict_key(r, report.reference),
            r.notebook,
        )
        for r in report.rows
    ]
    curves = [
        plots.Curve(
            r.spec, r.val_acc_curve, r.identical_to, *_seed_range(report, r.spec), reference=r.spec == report.reference
        )
        for r in report.rows
    ]
    suite = f"Suite '{report.name}'" + (f" ({report.caption})" if report.caption else "")
    pngs = {
        "results.png": plots.results_chart(
            bars,
            f"{suite}: test accuracy per spec vs {report.reference}",
            f"{settings} · mean and 95% CI over seeds",
            layout,
        ),
        "curves.png": plots.curves_chart(
            curves,
            f"{suite}: validation accuracy per epoch",
            f"{settings} · line: mean over seeds · band: lowest to highest seed",
            layout,
        ),
    }
    fit = report.factorial
    if fit is not None and fit.effects:
        rows = [
            plots.EffectRow(t.name, t.effect.estimate, t.effect.low, t.effect.high, t.resolved) for t in fit.effects
        ]
        title = f"{suite}: effects on test accuracy: main and two-factor interactions"
        pngs["effects.png"] = plots.effects_chart(rows, title, f"{settings} · 95% CIs", layout)
    return pngs


def tensorboard_run(report: SuiteReport, text: str) -> list[Any]:
    """The summaries of the suite's ``_report`` run: the text and the charts (card-sized)."""
    images = [board.image_summary(CHARTS[name], png) for name, png in charts(report, plots.CARD).items()]
    return [board.text_summary("report/results", text), *images]


def write_report(suite_dir: Path, reference: Optional[str] = None, settings: Optional[str] = None) -> str:
    """Write results.md/.csv, effects.csv, the charts and the ``_report`` run for the suite in `suite_dir`;
    returns the per-spec table and the verdict on the comparisons (what a sweep prints).

    Only trials of one set of settings are reported (`select_settings`; `settings` picks which). Problems (failed,
    unreadable or excluded trials) are listed on stderr and at the end of results.md.
    Raises `NothingToReport` (a ValueError) for a folder without results of its suite, ValueError if `reference`
    is given and is not a spec of the results, OSError if a file cannot be written (e.g. a full disk).
    """
    suite_dir = Path(suite_dir)
    with folder_lock(suite_dir, wait=True):  # two sweeps on one logdir take turns writing the report
        report = build_report(suite_dir, reference, settings)
        report.caption = read_caption(suite_dir)
        _write_files(suite_dir, report)
    return report_text(report)


def report_text(report: SuiteReport) -> str:
    """The per-spec table and the verdict on the comparisons (what a sweep and the report print)."""
    return spec_table(report) + ("\n\n" + verdict(report) if report.reference else "")


def _write_files(suite_dir: Path, report: SuiteReport) -> None:
    text = markdown(report)
    write_text_atomic(suite_dir / "results.md", text)
    write_text_atomic(suite_dir / "results.csv", csv_text(spec_records(report.rows)))
    if report.factorial is not None and report.factorial.effects:
        write_text_atomic(suite_dir / "effects.csv", csv_text(effect_records(report.factorial)))
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not report.rows:
        return
    for name, png in charts(report, plots.PAGE).items():
        write_bytes_atomic(suite_dir / name, png)
    answer = board.text_summary(board.ANSWER_TAG, board.verdict_markdown(suite_dir))  # from the CSVs just written
    board.write_run(suite_dir / REPORT_RUN, [answer, *tensorboard_run(report, text)], replace=True)
    board.write_suite_runs(suite_dir, report.results)  # the HParams record and each trial's session
