"""The ablation harness: `python -m ablations.run` sweeps RegularizationSpecs and reports mean +- std.

From Python: ``ablations.load_results(path)`` (a pandas DataFrame, torch-free) and ``ablations.run_suite(suite,
**flags)`` (see `ablations.api`); both are imported on first use.

The harness needs the extra ``ablations`` (``pip install "lit-cifar[ablations]"``). Its console scripts
(`ablate_main`, `report_main`, `compare_main`, `board_main`) start from here: without the extra each says so in one
line, exit status 2, instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, Optional

__all__ = ["load_results", "run_suite"]

HARNESS_MODULES = ("yaml", "tqdm", "matplotlib", "scipy", "statsmodels", "pandas")  # what the extra installs
HARNESS_EXTRA = 'pip install "lit-cifar[ablations]"'


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def missing_extra() -> Optional[str]:
    """Why the harness cannot run here (its extra is not installed, naming the missing modules), or None."""
    missing = [m for m in HARNESS_MODULES if not _installed(m)]
    if not missing:
        return None
    return f"the harness needs the extra 'ablations' ({', '.join(missing)} missing): {HARNESS_EXTRA}"


def require_extra(prog: str) -> None:
    """Exit with status 2 and one line on stderr if the harness's extra is not installed."""
    problem = missing_extra()
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        raise SystemExit(2)


def _command(prog: str, module: str, argv: Optional[list[str]]) -> int:
    require_extra(prog)
    return int(importlib.import_module(module).main(argv))


def ablate_main(argv: Optional[list[str]] = None) -> int:
    """``lit-cifar-ablate``: `ablations.run`."""
    return _command("lit-cifar-ablate", "ablations.run", argv)


def report_main(argv: Optional[list[str]] = None) -> int:
    """``lit-cifar-report``: ``python -m ablations.report``."""
    return _command("lit-cifar-report", "ablations.report.__main__", argv)


def compare_main(argv: Optional[list[str]] = None) -> int:
    """``lit-cifar-compare``: `ablations.report.compare`."""
    return _command("lit-cifar-compare", "ablations.report.compare", argv)


def board_main(argv: Optional[list[str]] = None) -> int:
    """``lit-cifar-board``: `ablations.report.rebuild`."""
    return _command("lit-cifar-board", "ablations.report.rebuild", argv)


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("ablations.api"), name)
    raise AttributeError(f"module 'ablations' has no attribute {name!r}")
