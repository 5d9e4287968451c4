"""A suite's report from its trial folders (``<spec>/seed=<s>/result.json``, one set of settings): results.md,
results.csv, effects.csv, results.png, curves.png, effects.png and the TensorBoard run ``<suite>/_report`` with the
suite's HParams. A suite run ``--until-answered`` has its intervals read as its rule read them. Torch-free.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from tensorboard.plugins.text.summary_v2 import text_pb

from ablations.suite import cell_view
from ablations.report import board, plots, stats
from ablations.rules import MARGIN, check_margin
from ablations.store import RESULT_FILE, folder_lock, list_trials, settings_key, write_bytes_atomic, write_text_atomic
from lit_cifar.spec import MAXNORM_RESCALED, RegularizationSpec

DEFAULT_REFERENCE = "pixel"
CAPTION_FILE = "caption.txt"  # one line every chart's title carries
SEEDS_RULE_FILE = "seeds_rule.json"  # written by ``--until-answered``: how its intervals were read
IDENTITY_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")
DIAGNOSTICS = {  # logged per epoch; the report shows the last epoch's mean over seeds
    MAXNORM_RESCALED: "max-norm: fraction of rows rescaled",
    "val/bn_mean_gap": "BN: mean gap (running σ)",
    "val/bn_std_ratio": "BN: batch σ / running σ",
}
ENVIRONMENT_KEYS = {
    "code_version": "code versions",
    "git_commit": "git commits",
    "source_sha256": "source code",
    "cpu_threads": "CPU thread counts",
}
CHARTS = {"results.png": "report/test_accuracy", "curves.png": "report/val_accuracy", "effects.png": "report/effects"}
MAX_SHOWN = 10  # a suite of more specs charts the reference and its best and worst cells (never a 96-row chart)


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
    verdict_low: Optional[float] = None  # the difference's simultaneous interval
    verdict_high: Optional[float] = None
    margin: Optional[float] = None
    detectable: Optional[float] = None  # the smallest difference these seeds could detect (80% power)
    p_value: Optional[float] = None  # Welch's t-test against the reference
    p_adjusted: Optional[float] = None  # Bonferroni: < 1 - LEVEL when the interval excludes 0
    identical_to: Optional[str] = None  # an earlier spec with exactly the same numbers
    test_acc_values: list[float] = field(default_factory=list)  # one per seed, in seed order
    val_acc_curve: list[float] = field(default_factory=list)  # mean over seeds, per epoch


@dataclass
class SuiteReport:
    """Everything the report says about a suite, before it is rendered."""

    name: str
    results: list[dict[str, Any]]
    rows: list[SpecSummary]
    reference: str
    identical: list[tuple[str, str, str]]  # (spec, same as, why)
    factorial: Optional[stats.FactorialFit]
    notes: list[str]
    problems: list[str]
    margin: float = MARGIN
    caption: str = ""  # said in every chart's title (``caption.txt``)
    rule: dict[str, Any] = field(default_factory=dict)  # ``seeds_rule.json``: alpha and looks of --until-answered

    @property
    def intervals(self) -> str:
        """How the comparisons' intervals were read, said in every table and chart."""
        compared = len(self.rows) - 1
        if not self.rule:
            return f"simultaneous over the {compared} comparisons ({stats.LEVEL:.0%} family-wise, Bonferroni)"
        return (
            f"read as --until-answered read them: alpha {self.rule['alpha']:g} spent over {compared} "
            f"comparisons x {self.rule['looks']} looks, each at the look it stopped at"
        )


def load_results(suite_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every result of the suite that counts, and a line for each problem (`ablations.store.list_trials`)."""
    listing = list_trials(suite_dir)
    return list(listing.results.values()), listing.problems


def summarize(results: list[dict[str, Any]]) -> list[SpecSummary]:
    """One `SpecSummary` per spec, in suite order (its comparison is filled in by `build_report`)."""
    by_spec: dict[str, list[dict[str, Any]]] = {}
    for result in sorted(results, key=lambda r: r["seed"]):
        by_spec.setdefault(result["spec"], []).append(result)
    rows = []
    for spec, runs in by_spec.items():
        test, val = [r["metrics"]["test/acc"] for r in runs], [r["metrics"]["val/acc"] for r in runs]
        interval = stats.mean_ci(test)
        epochs = min(len(r.get("history", [])) for r in runs)
        curve = [statistics.fmean(r["history"][e].get("val/acc", math.nan) for r in runs) for e in range(epochs)]
        rows.append(
            SpecSummary(
                spec=spec,
                order=runs[0].get("order", 0),
                seeds=len(runs),
                test_acc=interval.estimate,
                test_acc_std=statistics.stdev(test) if len(test) > 1 else math.nan,
                test_acc_ci_low=interval.low,
                test_acc_ci_high=interval.high,
                val_acc=statistics.fmean(val),
                val_acc_std=statistics.stdev(val) if len(val) > 1 else math.nan,
                notebook=runs[0].get("notebook"),
                train_val_gap=statistics.fmean(r["metrics"]["train/acc"] - r["metrics"]["val/acc"] for r in runs),
                wall_time_s=statistics.fmean(r.get("wall_time_s", math.nan) for r in runs),
                test_acc_values=test,
                val_acc_curve=curve,
            )
        )
    return sorted(rows, key=lambda row: (row.order, row.spec))


class NothingToReport(ValueError):
    """The folder holds no finished trial of the suite, or results of another suite."""


def _trial_name(result: dict[str, Any]) -> str:
    return f"{result['spec']}/seed={result['seed']}"


def check_suite_folder(suite_dir: Path, results: list[dict[str, Any]], problems: list[str]) -> None:
    """Raise `NothingToReport` if `suite_dir` holds no result, or results of another suite (never merged)."""
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
    """The results of one set of settings (a `settings_key`; None: the most trials), and a line per excluded set."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        factors = tuple(result.get("factors") or {})  # a setting factor's levels differ within one comparison
        groups.setdefault(settings_key(result.get("settings", {}), factors), []).append(result)
    if settings is None:
        settings = max(groups, key=lambda key: (len(groups[key]), key)) if groups else ""
    chosen = json.loads(settings) if settings else {}
    lines = []
    for key, excluded in {k: v for k, v in groups.items() if k != settings}.items():
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
    return groups.get(settings, []), lines


# ------------------------------------------------------------------------------------------------ analysis
def identical_specs(results: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(spec, earlier spec, why)`` for every spec whose numbers equal an earlier spec's for every seed."""
    ordered = sorted(results, key=lambda r: (r.get("order", 0), r["spec"]))
    prints: dict[str, dict[int, tuple]] = {}
    for r in ordered:
        prints.setdefault(r["spec"], {})[r["seed"]] = tuple(r["metrics"].get(k) for k in IDENTITY_METRICS)
    found: list[tuple[str, str, str]] = []
    for earlier, later in itertools.combinations(prints, 2):
        if later in {f[0] for f in found} or prints[earlier] != prints[later]:
            continue
        a, b = (next(r for r in ordered if r["spec"] == s).get("spec_fields", {}) for s in (earlier, later))
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        why = f"they differ only in {', '.join(differ)}, which changed no computation in these runs"
        runs = [r for r in ordered if r["spec"] in (earlier, later)]
        rescaled = [e[MAXNORM_RESCALED] for r in runs for e in r.get("history", []) if MAXNORM_RESCALED in e]
        if differ == ["max_norm"] and rescaled and not any(rescaled):
            cap = a.get("max_norm") or b.get("max_norm")
            why = f"the max-norm cap ({cap}) never rescaled a row ({MAXNORM_RESCALED} = 0 in every epoch)"
        found.append((later, earlier, why if differ else "their spec fields are the same"))
    return found


def _level(name: str, value: Any) -> str:
    """A spec field's value as its spec token (``bn``, ``dropout=0.5``); ``off`` for the default."""
    try:
        token = str(RegularizationSpec(**{name: value}))
    except (TypeError, ValueError):
        return f"{name}={value}"
    return "off" if token == "baseline" else token


def factorial_frame(results: list[dict[str, Any]]) -> Optional[tuple[pd.DataFrame, list[stats.Factor]]]:
    """The trials' varying spec fields (as levels) and test accuracy, with the factors; None below two factors."""
    fields = [r.get("spec_fields") or {} for r in results]
    known = [f.name for f in dataclasses.fields(RegularizationSpec)]  # in the spec's canonical order
    names = [n for n in dict.fromkeys(known + [k for f in fields for k in f]) if any(n in f for f in fields)]

    def order(value: Any) -> tuple:
        return (value not in (None, False, 0, "none"), str(type(value)), 0 if value is None else value)

    values = {n: sorted({f.get(n) for f in fields}, key=order) for n in names}
    varying = [n for n in names if len(values[n]) > 1]
    if len(varying) < 2:
        return None
    frame = pd.DataFrame({n: [_level(n, f.get(n)) for f in fields] for n in varying})
    frame["test_acc"] = [r["metrics"]["test/acc"] for r in results]
    return frame, [stats.Factor(n, tuple(_level(n, v) for v in values[n])) for n in varying]


def mixed_environment(results: list[dict[str, Any]]) -> list[str]:
    """A note for every `ENVIRONMENT_KEYS` entry the results disagree on or some lack."""
    notes = []
    for key, what in ENVIRONMENT_KEYS.items():
        values = [(r.get("environment") or {}).get(key) for r in results]
        known = [str(v) for v in values if v is not None]
        if len(set(known)) > 1:
            counts = ", ".join(f"{v} ({known.count(v)} trials)" for v in sorted(set(known)))
            notes.append(f"the results mix {what}: {counts}; compare them with care")
        if known and len(known) < len(values):
            notes.append(
                f"{len(values) - len(known)} of {len(values)} results do not record their {key} (written by older code)"
            )
    return notes


def build_report(
    suite_dir: Path, reference: Optional[str] = None, settings: Optional[str] = None, margin: float = MARGIN
) -> SuiteReport:
    """Analyse the suite's results of one set of settings (`select_settings`) at `margin`; problems go to stderr."""
    suite_dir = Path(suite_dir)
    results, problems = load_results(suite_dir)
    check_suite_folder(suite_dir, results, problems)
    results, excluded = select_settings(results, settings)
    if not results:
        raise NothingToReport(f"{suite_dir} holds no finished trial of the settings asked for; " + "; ".join(excluded))
    results = [cell_view(r) for r in results]  # a setting factor is a row's field like a spec field
    rows = summarize(results)
    specs, notes = [row.spec for row in rows], []
    if reference is not None and reference not in specs:
        raise ValueError(f"--reference {reference!r} is not a spec of these results; choose one of {', '.join(specs)}")
    if reference is None:
        reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in specs else specs[0]
        if reference != DEFAULT_REFERENCE:
            notes.append(f"reference spec: {reference} (the default, {DEFAULT_REFERENCE}, is not in these results)")
    identical = identical_specs(results)
    same_as = {spec: earlier for spec, earlier, _ in identical}
    for row in rows:
        row.identical_to = same_as.get(row.spec)
    design = factorial_frame(results)
    factorial = None if design is None else stats.factorial_effects(*design, "test_acc", margin=margin)
    rule_file, caption = suite_dir / SEEDS_RULE_FILE, suite_dir / CAPTION_FILE
    rule = json.loads(rule_file.read_text()) if rule_file.is_file() else {}
    notes += mixed_environment(results)
    report = SuiteReport(suite_dir.name, results, rows, reference, identical, factorial, notes, problems + excluded)
    report.margin, report.rule = margin, rule
    report.caption = (caption.read_text().strip().splitlines() or [""])[0] if caption.is_file() else ""
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    level, looks = (1 - rule["alpha"], rule["looks"]) if rule else (stats.LEVEL, 1)
    groups = {r.spec: r.test_acc_values for r in rows}
    tests = {t.name: t for t in stats.compare_with_reference(groups, reference, level, margin, looks)}
    for row in rows:  # the comparison with the reference, as the seeds rule read it when there is one
        test = tests.get(row.spec)
        row.vs_reference = 0.0 if test is None else test.effect.estimate
        if test is not None:
            row.verdict, row.margin = test.verdict, margin
        if test is not None and test.effect.known:
            row.verdict_low, row.verdict_high = test.effect.low, test.effect.high
            row.p_value, row.p_adjusted, row.detectable = test.p_value, test.p_adjusted, test.detectable
    return report


# ------------------------------------------------------------------------------------------------ rendering
def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f}" if std != std else f"{mean:.4f} ± {std:.4f}"


def _ci(low: Optional[float], high: Optional[float], fmt: str = ".4f") -> str:
    return "—" if low is None or low != low else f"[{low:{fmt}}, {high:{fmt}}]"


def _opt(value: Optional[float], fmt: str) -> str:
    return "—" if value is None or value != value else format(value, fmt)


def _detectable(value: Optional[float]) -> str:
    return "" if value is None or value != value else f"could detect ±{value:.3f}"


def settings_line(report: SuiteReport) -> str:
    """The training settings every chart and table carries."""
    first, seeds = report.results[0], sorted({r["seed"] for r in report.results})
    s = first["settings"]
    return (
        f"{s.get('epochs', '?')} epochs · {first.get('train_images', 0):,} training images · "
        f"{first.get('val_images', 0):,} validation · {first.get('test_images', 0):,} test · "
        f"batch {s.get('batch_size', '?')} · seeds {', '.join(map(str, seeds))}"
    )


def constant_settings(report: SuiteReport) -> str:
    """Every training setting the trials share (the HParams tab shows only what varies)."""
    shared = dict(report.results[0]["settings"])
    for result in report.results[1:]:
        shared = {k: v for k, v in shared.items() if result["settings"].get(k) == v}
    shared = {
        k: (v["class_path"] if isinstance(v, dict) and "class_path" in v else v)
        for k, v in shared.items()
        if k not in ("spec", "seed")
    }
    return "\n\nSettings of every trial: " + ", ".join(f"`{k}={v}`" for k, v in sorted(shared.items()))


def spec_table(report: SuiteReport) -> str:
    """The per-spec table (markdown)."""
    header = ["spec", "seeds", "test acc", "95% CI", f"vs {report.reference}", "val acc"]
    rows = [
        [
            r.spec + (f" (= {r.identical_to})" if r.identical_to else ""),
            r.seeds,
            _pm(r.test_acc, r.test_acc_std),
            _ci(r.test_acc_ci_low, r.test_acc_ci_high),
            _opt(r.vs_reference, "+.4f"),
            _pm(r.val_acc, r.val_acc_std),
            _opt(r.notebook, ".3f"),
            f"{r.train_val_gap:+.4f}",
            _opt(r.wall_time_s, ".0f"),
        ]
        for r in report.rows
    ]
    return board.markdown_table([*header, "notebook", "train − val", "wall s"], rows)


def verdicts_text(report: SuiteReport) -> str:
    """One paragraph: each spec's verdict against the reference, grouped by verdict."""
    compared = [r for r in report.rows if r.spec != report.reference]
    tested = [r for r in compared if r.verdict_low is not None]
    if not compared:
        return ""
    if not tested:
        return (
            f"No difference from `{report.reference}` can be tested: a comparison needs at least two seeds of "
            "both specs."
        )
    parts = []
    for key in stats.VERDICTS:
        specs = [r for r in tested if r.verdict == key]
        names = ", ".join(
            f"{r.spec} ({r.vs_reference:+.3f}" + (f"; {_detectable(r.detectable)})" if key == "open" else ")")
            for r in specs
        )
        parts += [f"**{key}**: {names}"] if specs else []
    seeds = "/".join(map(str, sorted({r.seeds for r in tested})))
    text = (
        f"Verdicts against `{report.reference}` at {seeds} seeds (margin ±{report.margin:g}; intervals "
        f"{report.intervals}): " + "; ".join(parts) + "."
    )
    untested = [r.spec for r in compared if r.verdict_low is None]
    return text + (
        f" Not tested (fewer than two seeds, or no spread at all): {', '.join(untested)}." if untested else ""
    )


def comparison_section(report: SuiteReport) -> str:
    """Each spec against the reference (markdown): the difference, the interval its verdict reads, the verdict."""
    if len(report.rows) < 2:
        return ""
    rows = [
        [
            r.spec,
            _opt(r.vs_reference, "+.4f"),
            _ci(r.verdict_low, r.verdict_high, "+.4f"),
            r.verdict if r.verdict_low is not None else "— (not tested)",
            _opt(r.detectable, ".3f") if r.verdict == "open" else "—",
            _opt(r.p_value, ".3g"),
            _opt(r.p_adjusted, ".3g"),
        ]
        for r in report.rows
        if r.spec != report.reference
    ]
    header = ["spec", "difference", "simultaneous interval", f"verdict (margin ±{report.margin:g})", "could detect"]
    return (
        f"Welch's interval of each difference in test accuracy, {report.intervals}. The verdict reads that "
        f"interval: `equivalent` within ±{report.margin:g}, else `better` / `worse` when it excludes 0, else "
        f"`open`, with the smallest difference these seeds could detect ({stats.POWER:.0%} power).\n\n"
        + board.markdown_table([*header, "p", "adjusted p"], rows)
        + f"\n\n{verdicts_text(report)}"
    )


def diagnostics_table(report: SuiteReport) -> str:
    """The `DIAGNOSTICS` of the last epoch per spec, mean over seeds (markdown), or "" when none was logged."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in sorted(report.results, key=lambda r: (r.get("order", 0), r["spec"])):
        last = (r.get("history") or [{}])[-1]
        for key, label in DIAGNOSTICS.items():
            if key in last and not math.isnan(last[key]):
                table.setdefault(r["spec"], {}).setdefault(label, []).append(last[key])
    names = list(dict.fromkeys(name for values in table.values() for name in values))
    rows = [
        [spec, *(_opt(statistics.fmean(v[n]), ".4f") if n in v else "—" for n in names)] for spec, v in table.items()
    ]
    return board.markdown_table(["spec", *names], rows) if table else ""


def _effect_cells(t: stats.Contrast) -> list[str]:
    detect = _opt(t.detectable, ".3f") if t.verdict == "open" else "—"
    interval = _ci(t.effect.low, t.effect.high, "+.4f")
    return [t.name, f"{t.effect.estimate:+.4f}", interval, t.verdict, detect, _opt(t.p_adjusted, ".3g")]


def effects_section(fit: Optional[stats.FactorialFit], seeds: int, margin: float) -> str:
    """The factorial effects, the simple effects of the resolved interactions and the aliased effects."""
    if fit is None:
        return ""
    if fit.problem:
        return f"Not estimated: {fit.problem}."
    model = "every main effect and two-factor interaction" if fit.interactions else "main effects only"
    pooled = "three-factor and higher interactions" if fit.interactions else "interactions"
    noise = (
        f"One seed per cell: the intervals come from the model's residuals, the {fit.residual_df} degrees of "
        f"freedom of the {pooled} pooled as noise (the seed-to-seed spread is not measured apart)."
        if seeds == 1
        else f"The intervals come from the model's residuals ({fit.residual_df} degrees of freedom): the seeds' "
        f"spread and the {pooled}, pooled."
    )
    rows = [
        [*_effect_cells(t), ", ".join(f"`{q}`: see its simple effects" for q in fit.qualifiers(t.name))]
        for t in fit.effects
    ]
    header = ["effect", "change in test acc", f"{stats.LEVEL:.0%} simultaneous interval"]
    table = board.markdown_table(
        [*header, f"verdict (margin ±{margin:g})", "could detect", "adjusted p", "read with"], rows
    )
    text = (
        f"A linear model of test accuracy over the trials ({model}). A main effect `X` is the mean change when X is "
        "switched on, averaged over every level of the other factors; `X × Y` is how much more (or less) X changes "
        f"accuracy when Y is on. {noise} Intervals are {stats.LEVEL:.0%} simultaneous (Bonferroni) over the family of "
        f"{fit.family} contrasts fixed before looking: the effects below and every interaction's simple effects. A "
        "main effect that a resolved interaction qualifies is read with that interaction's simple effects, not "
        "alone.\n\n" + table
    )
    resolved = fit.resolved_interactions()
    if resolved:
        rows = [[i.name, *_effect_cells(t)] for i in resolved for t in fit.simple[i.name]]
        header = ["interaction", "simple effect", "change in test acc", "interval", "verdict", "could detect"]
        text += "\n\n### Simple effects of the resolved interactions\n\n" + board.markdown_table(
            [*header, "adjusted p"], rows
        )
    if fit.aliased:
        text += (
            f"\n\nFractional design: these {len(fit.aliased)} effects are aliased with the model's (the trials "
            "run cannot separate them) and are not estimated: " + ", ".join(f"`{n}`" for n in fit.aliased) + "."
        )
    return text


def sections(report: SuiteReport) -> list[tuple[str, str]]:
    """results.md's sections, ``(title, markdown)``, empty where there is nothing to say."""
    identical = "\n".join(
        f"- `{spec}` gave exactly the numbers of `{same}` for every seed: {why}" for spec, same, why in report.identical
    )
    seeds = min((r.seeds for r in report.rows), default=1)
    return [
        (
            f"# Suite `{report.name}`: {len(report.rows)} specs, {len(report.results)} trials",
            settings_line(report) + constant_settings(report),
        ),
        (
            "## Test accuracy per spec",
            "Mean ± std over seeds, and the 95% confidence interval of the mean (t-based); "
            f"`vs {report.reference}` is the difference of means from the reference spec.\n\n" + spec_table(report),
        ),
        (f"## Each spec against `{report.reference}` (margin ±{report.margin:g})", comparison_section(report)),
        ("## Identical results", identical),
        ("## Diagnostics (last epoch, mean over seeds)", diagnostics_table(report)),
        (
            f"## Factorial effects on test accuracy (margin ±{report.margin:g})",
            effects_section(report.factorial, seeds, report.margin),
        ),
        ("## Notes", "\n".join(f"- {note}" for note in report.notes)),
        ("Problems:", "\n".join(f"- {problem}" for problem in report.problems)),
    ]


def markdown(report: SuiteReport, only: Optional[tuple[int, ...]] = None) -> str:
    """results.md: every section that has something to say (`only`: these of `sections`)."""
    parts = [part for i, part in enumerate(sections(report)) if only is None or i in only]
    return "\n\n".join(f"{title}\n\n{body}" for title, body in parts if body) + "\n"


def csv_text(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


EFFECT_COLUMNS: tuple[str, ...] = ("effect", "kind", "estimate", "verdict", "verdict_low", "verdict_high", "margin")
EFFECT_COLUMNS += ("detectable", "p_value", "p_adjusted", "family", "qualified_by")  # effects.csv's header


def effect_records(fit: stats.FactorialFit) -> list[dict[str, Any]]:
    """effects.csv: the effects, then the resolved interactions' simple effects (``qualified_by`` names them)."""
    rows = [
        (t, "interaction" if stats.INTERACTION in t.name else "main", " ".join(fit.qualifiers(t.name)))
        for t in fit.effects
    ]
    rows += [(t, "simple", i.name) for i in fit.resolved_interactions() for t in fit.simple[i.name]]
    records = []
    for t, kind, qualified_by in rows:
        values = (t.name, kind, t.effect.estimate, t.verdict, t.effect.low, t.effect.high, t.margin, t.detectable)
        records.append(dict(zip(EFFECT_COLUMNS, (*values, t.p_value, t.p_adjusted, t.family, qualified_by))))
    return records


def shown_rows(report: SuiteReport) -> tuple[list[SpecSummary], str]:
    """The specs every chart draws and a note when some are left out: all up to `MAX_SHOWN`, else the reference
    and the best and worst cells by mean test accuracy (copies of another spec's numbers left out), best first."""
    if len(report.rows) <= MAX_SHOWN:
        return list(report.rows), ""
    reference = [r for r in report.rows if r.spec == report.reference]
    others = sorted((r for r in report.rows if r not in reference and not r.identical_to), key=lambda r: r.test_acc)
    worst = (MAX_SHOWN - len(reference)) // 2
    best = MAX_SHOWN - len(reference) - worst
    kept = [*reference, *others[:worst], *others[-best:]]
    note = f"{len(kept)} of {len(report.rows)} specs: " + ("the reference, " if reference else "")
    return sorted(kept, key=lambda r: -r.test_acc), note + f"the {best} best and the {worst} worst cells, best first"


def headline(report: SuiteReport) -> str:
    """What every chart's title says: the suite (and caption), its cells, precision and seeds (the subtitle,
    `settings_line`, gives the images and the rest of the settings)."""
    first = report.results[0]
    counts = sorted({r.seeds for r in report.rows})
    cells = f"{len(report.rows)} specs"
    design = factorial_frame(report.results) if report.factorial is not None and report.factorial.effects else None
    if design is not None:
        grid = math.prod(len(f.levels) for f in design[1])
        cells = f"{len(report.rows)} of {grid} cells" if len(report.rows) < grid else f"{grid} cells"
    caption = f" ({report.caption})" if report.caption else ""
    return (
        f"Suite '{report.name}'{caption} · {cells} · precision "
        f"{first.get('settings', {}).get('precision', '?')} · {'/'.join(map(str, counts))} seed"
        + ("" if counts == [1] else "s")
    )


def _difference(row: SpecSummary, reference: Optional[str], colour: Any) -> plots.Row:
    label = f"{row.spec}  {row.test_acc:.3f}"
    if row.spec == reference:
        return plots.Row(label, 0.0, math.nan, math.nan, None, colour)
    if row.verdict_low is None or row.verdict_high is None:
        note = "no interval: one seed" if row.seeds < 2 else "no interval: no spread"
        return plots.Row(label, row.vs_reference or 0.0, math.nan, math.nan, row.verdict, colour, note)
    note = _detectable(row.detectable) if row.verdict == "open" else ""
    return plots.Row(label, row.vs_reference or 0.0, row.verdict_low, row.verdict_high, row.verdict, colour, note)


def _effect_row(fit: stats.FactorialFit, t: stats.Contrast) -> plots.Row:
    qualified = tuple(fit.qualifiers(t.name))  # none for an interaction
    label = t.name + (f"  (see {', '.join(qualified)})" if qualified else "")
    return plots.Row(label, t.effect.estimate, t.effect.low, t.effect.high, t.verdict, qualified_by=qualified)


def charts(report: SuiteReport, layout: plots.Layout) -> dict[str, bytes]:
    """The report's charts by file name (`CHARTS`) at `layout`'s size, the same specs in the same colours."""
    settings, title, margin = settings_line(report), headline(report), report.margin
    shown, note = shown_rows(report)
    colours = plots.spec_colours([r.spec for r in shown])
    subtitle = settings + (f" · {note}" if note else "")
    curves = []
    for r in shown:
        runs = [x for x in report.results if x["spec"] == r.spec]
        epochs = [[x["history"][e].get("val/acc", math.nan) for x in runs] for e in range(len(r.val_acc_curve))]
        low, high = [min(v) for v in epochs], [max(v) for v in epochs]
        curves.append(
            plots.Curve(r.spec, r.val_acc_curve, colours[r.spec], r.identical_to, low, high, r.spec == report.reference)
        )
    pngs = {
        "results.png": plots.differences_chart(
            [_difference(r, report.reference, colours[r.spec]) for r in shown],
            margin,
            f"Test accuracy minus {report.reference}'s, with verdicts · {title}",
            f"{subtitle} · intervals {report.intervals} · margin ±{margin:g}",
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
        one_seed = min(r.seeds for r in report.rows) == 1
        noise = " · one seed: intervals from the model's residuals, higher interactions pooled" if one_seed else ""
        pngs["effects.png"] = plots.effects_chart(
            [_effect_row(fit, t) for t in fit.effects],
            [_effect_row(fit, t) for i in fit.resolved_interactions() for t in fit.simple[i.name]],
            margin,
            f"Effects on test accuracy · {title}",
            f"{settings} · intervals simultaneous over {fit.family} contrasts ({stats.LEVEL:.0%}) · margin ±{margin:g}"
            + noise,
            layout,
        )
    return pngs


def report_text(report: SuiteReport) -> str:
    """The per-spec table and the verdicts on the comparisons (what a sweep and the report print)."""
    return spec_table(report) + "\n\n" + verdicts_text(report)


def write_report(
    suite_dir: Path, reference: Optional[str] = None, settings: Optional[str] = None, margin: float = MARGIN
) -> str:
    """Write the report of `suite_dir` (`build_report`) and return `report_text`; problems go to stderr too. Raises
    `NothingToReport` (a ValueError) without results, ValueError for a bad `reference` or `margin`, OSError."""
    suite_dir = Path(suite_dir)
    check_margin(margin)
    with folder_lock(suite_dir, wait=True):  # two sweeps on one logdir take turns writing the report
        report = build_report(suite_dir, reference, settings, margin)
        text = markdown(report)
        write_text_atomic(suite_dir / "results.md", text)
        records = [
            {k: v for k, v in asdict(r).items() if k not in ("test_acc_values", "val_acc_curve")} for r in report.rows
        ]
        write_text_atomic(suite_dir / "results.csv", csv_text(records))
        effects = effect_records(report.factorial) if report.factorial is not None and report.factorial.effects else []
        if effects:
            write_text_atomic(suite_dir / "effects.csv", csv_text(effects))
        for name, png in charts(report, plots.PAGE).items():
            write_bytes_atomic(suite_dir / name, png)
        verdicts = markdown(report, only=(2, 5)).strip() or "No comparison has a verdict (one spec only)."
        answer = text_pb(board.ANSWER_TAG, verdicts)  # each spec against the reference, the effects
        images = [board.image_summary(CHARTS[name], png) for name, png in charts(report, plots.CARD).items()]
        board.write_run(suite_dir / board.REPORT_RUN, [answer, text_pb("report/results", text), *images], replace=True)
        board.write_suite_runs(suite_dir, report.results)  # the HParams record and each trial's session
    return report_text(report)
