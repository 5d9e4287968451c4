"""Reports from the trial folders: ``python -m ablations.report logs/notebook [--reference pixel] [--margin 0.01]``.

`report`'s public names load on first use, so a training worker importing `board` imports no statistics.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["NothingToReport", "load_results", "write_report"]  # what the harness and its scripts import from here


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("ablations.report.report"), name)
    raise AttributeError(f"module 'ablations.report' has no attribute {name!r}")
