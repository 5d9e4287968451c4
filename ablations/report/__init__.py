"""Reports from the trial folders: ``python -m ablations.report logs/notebook [--reference pixel] [--margin 0.01]``.

`report`'s public names load on first use, so a training worker importing `board` imports no statistics.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_REFERENCE", "NothingToReport", "SpecSummary", "SuiteReport", "build_report", "load_results"]
__all__ += ["markdown", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("ablations.report.report"), name)
    raise AttributeError(f"module 'ablations.report' has no attribute {name!r}")
