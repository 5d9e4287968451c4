"""The results of a suite, rebuilt from its trial directories: table, CSV, plots, and a TensorBoard summary.

    python -m ablations.report logs/notebook

reads every ``<spec>/seed=<s>/result.json`` under the suite folder (e.g. after all shards of a job array finish)
and writes ``results.md``, ``results.csv``, ``results.png`` (test accuracy, mean +- std over seeds, with the
notebook's figures marked) and ``curves.png`` (validation accuracy per epoch, one line per spec); it also logs the
table as text and the chart as an image to TensorBoard under ``<suite>/_report``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from ablations.store import ERROR_FILE, RESULT_FILE, folder_lock, read_result, write_text_atomic

REPORT_RUN = "_report"  # TensorBoard run (sub-folder of the suite) that holds the suite's table and chart


@dataclass
class SpecSummary:
    """One row of the results table: a spec's metrics over its seeds."""

    spec: str
    order: int
    seeds: int
    test_acc: float
    test_acc_std: float
    val_acc: float
    val_acc_std: float
    vs_baseline: Optional[float]  # test accuracy minus the baseline's, both means over seeds
    notebook: Optional[float]
    train_val_gap: float  # final train accuracy minus final val accuracy: how much the spec overfits
    wall_time_s: float
    val_acc_curve: list[float]  # mean over seeds, per epoch


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def load_results(suite_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable result.json of the suite, and a line for each problem (unreadable results, failures)."""
    results, problems = [], []
    for path in sorted(suite_dir.glob(f"*/seed=*/{RESULT_FILE}")):
        try:
            results.append(read_result(path.parent))
        except ValueError as error:
            problems.append(f"{error}: the trial will be rerun, it is not counted")
    for path in sorted(suite_dir.glob(f"*/seed=*/{ERROR_FILE}")):
        if not (path.parent / RESULT_FILE).exists():
            try:
                problems.append(f"failed {path.parent.relative_to(suite_dir)}: {json.loads(path.read_text())['error']}")
            except (OSError, ValueError, KeyError):
                problems.append(f"failed {path.parent.relative_to(suite_dir)} (unreadable {ERROR_FILE})")
    return results, problems


def summarize(results: list[dict[str, Any]]) -> list[SpecSummary]:
    """One `SpecSummary` per spec, in suite order."""
    by_spec: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_spec.setdefault(result["spec"], []).append(result)
    rows = []
    for spec, runs in by_spec.items():
        test = [r["metrics"]["test/acc"] for r in runs]
        val = [r["metrics"]["val/acc"] for r in runs]
        epochs = min(len(r["history"]) for r in runs)
        curve = [statistics.fmean(r["history"][e].get("val/acc", float("nan")) for r in runs) for e in range(epochs)]
        rows.append(SpecSummary(
            spec=spec, order=runs[0]["order"], seeds=len(runs), test_acc=statistics.fmean(test),
            test_acc_std=_std(test), val_acc=statistics.fmean(val), val_acc_std=_std(val), vs_baseline=None,
            notebook=runs[0].get("notebook"), wall_time_s=statistics.fmean(r["wall_time_s"] for r in runs),
            train_val_gap=statistics.fmean(r["metrics"]["train/acc"] - r["metrics"]["val/acc"] for r in runs),
            val_acc_curve=curve))
    rows.sort(key=lambda row: (row.order, row.spec))
    baseline = next((row for row in rows if row.spec == "baseline"), None)
    for row in rows:
        row.vs_baseline = row.test_acc - baseline.test_acc if baseline else None
    return rows


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f}" if std != std else f"{mean:.4f} ± {std:.4f}"


def _opt(value: Optional[float], fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown_table(rows: list[SpecSummary]) -> str:
    lines = ["| spec | seeds | test acc | val acc | vs baseline | notebook | train − val | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.spec} | {r.seeds} | {_pm(r.test_acc, r.test_acc_std)} | {_pm(r.val_acc, r.val_acc_std)} | "
                     f"{_opt(r.vs_baseline, '+.4f')} | {_opt(r.notebook, '.3f')} | {r.train_val_gap:+.4f} | "
                     f"{r.wall_time_s:.0f} |")
    return "\n".join(lines)


def write_csv(rows: list[SpecSummary], path: Path) -> None:
    columns = [name for name in asdict(rows[0]) if name != "val_acc_curve"] if rows else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def plot_results(rows: list[SpecSummary], path: Path, title: str) -> Any:
    """Horizontal bars of test accuracy (mean +- std over seeds), the notebook's figures as red marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.0 + 0.32 * len(rows)))
    y = list(range(len(rows)))[::-1]
    errors = [0.0 if r.seeds < 2 else r.test_acc_std for r in rows]
    ax.barh(y, [r.test_acc for r in rows], xerr=errors, color="tab:blue", alpha=0.8, capsize=3,
            label="ours: test accuracy, mean ± std over seeds")
    for yy, r, err in zip(y, rows, errors):
        ax.text(r.test_acc + err + 0.005, yy, f"{r.test_acc:.3f}", va="center", fontsize=7)
    marked = [(yy, r.notebook) for yy, r in zip(y, rows) if r.notebook is not None]
    if marked:
        ax.scatter([m[1] for m in marked], [m[0] for m in marked], marker="|", s=300, color="tab:red", zorder=3,
                   label="notebook (one run, validated on the test set)")
    ax.set_yticks(y, [f"{r.spec}  (n={r.seeds})" for r in rows])
    values = [r.test_acc for r in rows] + [m[1] for m in marked]
    high = max(r.test_acc + e for r, e in zip(rows, errors))
    ax.set_xlim(max(0.0, min(values) - 0.1), min(1.0, max(high + 0.06, *values) + 0.02))
    ax.set_xlabel("test accuracy")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6 / (1 + 0.25 * len(rows))), ncol=2, fontsize=8,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def plot_curves(rows: list[SpecSummary], path: Path, title: str) -> None:
    """Validation accuracy per epoch, mean over seeds, one line per spec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5))
    for r in rows:
        ax.plot(range(1, len(r.val_acc_curve) + 1), r.val_acc_curve, marker="o", markersize=3, label=r.spec)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (mean over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 + len(rows) // 30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(suite_dir: Path) -> str:
    """Write results.md/.csv/.png and curves.png for the suite in `suite_dir`; returns the markdown table.

    Problems (failed or unreadable trials) are listed on stderr and at the end of results.md.
    """
    suite_dir = Path(suite_dir)
    with folder_lock(suite_dir, wait=True):  # two sweeps on one logdir take turns writing the report
        return _write_report(suite_dir)


def _write_report(suite_dir: Path) -> str:
    results, problems = load_results(suite_dir)
    rows = summarize(results)
    seeds = sorted({r["seed"] for r in results})
    settings = {json.dumps({k: v for k, v in r["settings"].items() if k not in ("spec", "seed")}, sort_keys=True)
                for r in results}
    if len(settings) > 1:
        problems.append(f"the results were trained with {len(settings)} different settings: {sorted(settings)}")
    table = markdown_table(rows)
    header = (f"# {suite_dir.name}: {len(rows)} specs, {len(results)} trials (seeds {seeds})\n\n"
              + (f"Settings: `{next(iter(settings))}`\n\n" if len(settings) == 1 else ""))
    footer = "".join(f"\n- {p}" for p in problems)
    write_text_atomic(suite_dir / "results.md", header + table + "\n" + ("\nProblems:" + footer + "\n"
                                                                         if problems else ""))
    write_csv(rows, suite_dir / "results.csv")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if rows:
        title = f"{suite_dir.name}: test accuracy, {len(results)} trials"
        figure = plot_results(rows, suite_dir / "results.png", title)
        plot_curves(rows, suite_dir / "curves.png", f"{suite_dir.name}: validation accuracy per epoch")
        _log_to_tensorboard(suite_dir / REPORT_RUN, header + table, figure)
    return table


def _log_to_tensorboard(run_dir: Path, text: str, figure: Any) -> None:
    import shutil

    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(run_dir, ignore_errors=True)  # one current report, not a history of them
    with SummaryWriter(str(run_dir)) as writer:
        writer.add_text("results/table", text, 0)
        writer.add_figure("results/test_accuracy", figure, 0, close=True)
    plt.close("all")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite_dir", type=Path, help="a suite's folder under the logdir, e.g. logs/notebook")
    args = parser.parse_args(argv)
    if not args.suite_dir.is_dir():
        parser.error(f"{args.suite_dir} is not a folder: give a suite's folder under the logdir, e.g. logs/notebook")
    print(write_report(args.suite_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
