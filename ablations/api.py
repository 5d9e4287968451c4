"""The harness from Python: `load_results` reads finished trials into a pandas DataFrame (without importing torch),
`run_suite` runs a suite as ``python -m ablations.run`` does and returns that DataFrame.

    import ablations
    df = ablations.run_suite("my_suite.yaml", logdir="logs", data_dir="data", seeds=[0, 1])
    df.groupby(["spec", "lr"]).test_acc.agg(["mean", "std"])
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from contextlib import nullcontext, suppress
from dataclasses import fields
from pathlib import Path
from typing import Any, Union

from ablations.suite import alias
from ablations.signals import interrupts
from ablations.status import TrialState, TrialStatus
from ablations.store import list_trials

__all__ = ["SweepError", "TrialsFailed", "load_results", "run_suite"]


class SweepError(ValueError):
    """What ``python -m ablations.run`` exits with status 2 for: a bad suite, argument, model, data or device."""


class TrialsFailed(RuntimeError):
    """Some trials failed (exit status 1): `statuses` holds every trial's `ablations.status.TrialStatus`, `results`
    the finished trials' DataFrame."""

    def __init__(self, message: str, statuses: list[TrialStatus], results: Any) -> None:
        super().__init__(message)
        self.statuses, self.results = statuses, results


def _row(result: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One result.json as a DataFrame row (`load_results`)."""
    settings = result.get("settings") or {}
    model, data = settings.get("model"), settings.get("data")
    row: dict[str, Any] = {
        "suite": result.get("suite"),
        "cell": result.get("cell", result["spec"]),
        "spec": result["spec"],
        **(result.get("spec_fields") or {}),
        "seed": result["seed"],
        "model": model["class_path"] if isinstance(model, Mapping) else "lit_cifar.models.NotebookCNN",
        "data": data["class_path"] if isinstance(data, Mapping) else data or "cifar10",
    }
    row.update({name: label for name, label in (result.get("levels") or {}).items() if name not in row})
    row.update({alias(k): v for k, v in (result.get("factors") or {}).items()})  # a factor's value over its label
    row.update({k.replace("/", "_"): v for k, v in sorted((result.get("metrics") or {}).items())})
    row.update(wall_time_s=result.get("wall_time_s"), settings_hash=result.get("settings_hash"), folder=str(folder))
    return row


def load_results(path: Union[str, Path]) -> Any:
    """Every finished trial under `path` (a logdir, or one suite's folder) as a pandas DataFrame, one row per
    result that counts (`ablations.store.list_trials`; the others are warnings on stderr): ``suite``, ``cell``,
    ``spec`` and its fields, ``seed``, ``model``, ``data``, a column per factor by its short name (its value, else its
    label), the final metrics, ``wall_time_s``, ``settings_hash``, ``folder``. Imports no torch; ValueError for a
    `path` that is not a folder."""
    import pandas as pd

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: give a logdir or a suite's folder under it, e.g. logs/notebook")
    suites = [root] if any(root.glob("*/seed=*")) else sorted(p for p in root.iterdir() if p.is_dir())
    rows = []
    for suite_dir in suites:
        listing = list_trials(suite_dir)
        for problem in listing.problems:
            print(f"warning: {problem}", file=sys.stderr)
        rows += [_row(result, folder) for folder, result in listing.results.items()]
    frame = pd.DataFrame(rows)
    return frame.sort_values(["suite", "cell", "seed"], ignore_index=True) if rows else frame


def run_suite(suite: Union[str, Path, Mapping[str, Any]], **overrides: Any) -> Any:
    """Run a suite (a shipped name, a suite file, or its content as a mapping) locally, resuming as ``python -m
    ablations.run`` does, and return `load_results` of its folder. Keyword arguments are the command's flags by name
    (`ablations.plan.Request`'s fields): ``seeds=[0, 1], model={"class_path": ...}, logger="csv"``. Raises
    `SweepError` (exit status 2), `TrialsFailed` (1) or `ablations.signals.Interrupted` (130 / 143)."""
    import pandas as pd

    from ablations.plan import Request, prepare
    from ablations.report import NothingToReport, write_report
    from ablations.run import run_plan

    names = [f.name for f in fields(Request) if f.name not in ("suite", "engine", "dry_run")]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SweepError(f"run_suite got unknown arguments {unknown}; it takes {', '.join(names)}")
    values: dict[str, Any] = {
        k: [v] if k in ("only", "logger") and isinstance(v, str) else v for k, v in overrides.items()
    }
    try:
        plan = prepare(Request(suite=suite if isinstance(suite, Mapping) else str(suite), **values))
    except Exception as error:  # noqa: BLE001 - every input problem is the command's exit 2
        raise SweepError(str(error)) from None
    with interrupts() if threading.current_thread() is threading.main_thread() else nullcontext():
        statuses = run_plan(plan) if plan.trials else []
    suite_dir = Path(plan.options.logdir) / plan.suite.name
    with suppress(NothingToReport):  # no trial finished: the statuses say why
        write_report(suite_dir, reference=plan.reference)
    frame = load_results(suite_dir) if suite_dir.is_dir() else pd.DataFrame()
    failed = [s for s in statuses if s.state is TrialState.FAILED]
    if failed:
        errors = "; ".join(f"{s.trial}: {s.error}" for s in failed)
        raise TrialsFailed(f"{len(failed)} of {len(statuses)} trials failed: {errors}", statuses, frame)
    return frame
