"""Waiting on processes and files in tests: poll a condition with a generous deadline, never assert on timing."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

DEADLINE_S = 300  # how long to wait for something that should happen; a bound, not a measurement


def wait_until(condition: Callable[[], object], what: str, process: Optional[subprocess.Popen] = None) -> None:
    """Poll `condition` until it holds; fail if `process` ends first or nothing happens within DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert process is None or process.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether `pid` is still running (a zombie nobody reaped has ended). Linux /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    """The child processes of `pid`. Linux /proc."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
