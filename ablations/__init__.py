"""The ablation harness: `python -m ablations.run` sweeps RegularizationSpecs and reports mean +- std; from Python,
``ablations.load_results(path)`` and ``ablations.run_suite(suite, **flags)`` (`ablations.api`, imported on first use).
It needs the extra ``ablations``: without it each console script says so in one line, exit status 2.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from typing import Any, Optional

__all__ = ["load_results", "run_suite"]

HARNESS_MODULES = ("yaml", "tqdm", "matplotlib", "scipy", "statsmodels", "pandas")  # what the extra installs


def require_extra(prog: str) -> None:
    """Exit with status 2 and one line on stderr, naming the missing modules, if the harness's extra is missing."""
    missing = [
        m for m in HARNESS_MODULES if (sys.modules[m] is None if m in sys.modules else not importlib.util.find_spec(m))
    ]
    if missing:
        print(
            f"{prog}: error: the harness needs the extra 'ablations' ({', '.join(missing)} missing): "
            'pip install "lit-cifar[ablations]"',
            file=sys.stderr,
        )
        raise SystemExit(2)


# The console scripts pyproject.toml names: (the command, the module whose ``main`` it runs).
COMMANDS = {
    "ablate_main": ("lit-cifar-ablate", "ablations.run"),
    "report_main": ("lit-cifar-report", "ablations.report.__main__"),
    "compare_main": ("lit-cifar-compare", "ablations.report.compare"),
    "board_main": ("lit-cifar-board", "ablations.report.rebuild"),
}


def _command(prog: str, module: str, argv: Optional[list[str]] = None) -> int:
    require_extra(prog)
    return int(importlib.import_module(module).main(argv))


def __getattr__(name: str) -> Any:
    if name in COMMANDS:
        return functools.partial(_command, *COMMANDS[name])
    if name in __all__:
        return getattr(importlib.import_module("ablations.api"), name)
    raise AttributeError(f"module 'ablations' has no attribute {name!r}")
