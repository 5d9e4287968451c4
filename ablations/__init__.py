"""The ablation harness: `python -m ablations.run` sweeps RegularizationSpecs and reports mean +- std.

From Python: ``ablations.load_results(path)`` (a pandas DataFrame, torch-free) and ``ablations.run_suite(suite,
**flags)`` (see `ablations.api`); both are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_results", "run_suite"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("ablations.api"), name)
    raise AttributeError(f"module 'ablations' has no attribute {name!r}")
