"""What several test files share: the repository root, the tiny training settings of a test sweep, readers of a
logdir's results, and waiting on processes (from `tests.processes`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ablations.store import RESULT_FILE
from tests.processes import DEADLINE_S, alive, children, wait_until

__all__ = ["DEADLINE_S", "REPO", "TINY", "alive", "children", "numbers", "results", "sweep", "wait_until"]

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--val-size", "100", "--batch-size", "64"]  # a sweep on tests.synthetic's images


def results(logdir: Path) -> dict[str, dict]:
    """{trial folder relative to `logdir`: its result.json} for every finished trial under a logdir."""
    return {str(p.parent.relative_to(logdir)): json.loads(p.read_text()) for p in logdir.glob(f"*/*/*/{RESULT_FILE}")}


def numbers(result: dict) -> tuple:
    """The parts of a result that training determines (not timings or the environment)."""
    return result["metrics"], result["history"], result["settings_hash"]


def sweep(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run `python -m ablations.run ARGS` in-process; returns (exit status, stdout, stderr)."""
    from ablations.run import main

    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err
