"""Reports from the trial folders: tables and statistics, charts, TensorBoard runs, comparisons.

    python -m ablations.report logs/notebook [--reference pixel] [--margin 0.01]

- `ablations.report.report`: a suite's ``results.md/.csv``, charts and TensorBoard report run; its public names
  are importable from here (``from ablations.report import write_report``). ``python -m ablations.report`` is
  `ablations.report.__main__`.
- `ablations.report.stats`: the one verdict per comparison, simultaneous Welch intervals, factorial effects.
- `ablations.report.analysis`: identical specs, max-norm and BatchNorm diagnostics, mixed settings or code.
- `ablations.report.plots`: the matplotlib charts.
- `ablations.report.board`: TensorBoard's scalars, HParams and text, written with its own event writer.
- `ablations.report.rebuild`: a suite's TensorBoard runs rewritten from result.json (``python -m
  ablations.report.rebuild``).
- `ablations.report.compare`: one suite run twice, spec by spec (``python -m ablations.report.compare``).

Imports no torch. The names below are imported on first use, so importing one module of the package (as a training
worker does `board` and `plots`) does not import the statistics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ablations.report.report import (
        DEFAULT_REFERENCE,
        NothingToReport,
        SpecSummary,
        SuiteReport,
        build_report,
        load_results,
        markdown,
        write_report,
    )

__all__ = [
    "DEFAULT_REFERENCE",
    "NothingToReport",
    "SpecSummary",
    "SuiteReport",
    "build_report",
    "load_results",
    "markdown",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("ablations.report.report"), name)
    raise AttributeError(f"module 'ablations.report' has no attribute {name!r}")
