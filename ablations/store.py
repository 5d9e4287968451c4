"""The on-disk contract of a sweep, torch-free: where every file of a trial lives, atomic writes, results, locks.

A trial's folder ``<logdir>/<suite>/<spec>/seed=<s>/`` holds (`TrialPaths` names each):

- ``result.json``: written atomically once the trial has finished and been tested;
- ``error.json``: written atomically instead when it failed (reason and traceback);
- ``.lock``: an ``flock`` held while the trial runs, so two sweeps never run it at once (the kernel releases it
  when its holder dies);
- TensorBoard event files.

The report, a dashboard or another engine can read and write these without importing torch or Lightning.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class TrialPaths:
    """Every file of one trial, from its folder."""

    folder: Path

    @classmethod
    def of(cls, logdir: Path | str, suite: str, spec: str, seed: int) -> TrialPaths:
        return cls(Path(logdir) / suite / spec / f"seed={seed}")

    @property
    def result(self) -> Path:
        return self.folder / RESULT_FILE

    @property
    def error(self) -> Path:
        return self.folder / ERROR_FILE

    @property
    def lock(self) -> Path:
        return self.folder / LOCK_FILE


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one, never a part.

    The temporary file is removed if the write fails (e.g. a full disk), so nothing half-written is left.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def read_result(run_dir: Path) -> Optional[dict[str, Any]]:
    """The trial's result.json, or None if it is absent. A truncated or unreadable one raises ValueError."""
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or "settings_hash" not in result or "metrics" not in result:
            raise ValueError("missing settings_hash or metrics")
        return result
    except (OSError, ValueError) as error:
        raise ValueError(f"unreadable {path}: {error}") from None


@contextmanager
def folder_lock(folder: Path, wait: bool = False) -> Iterator[bool]:
    """Hold `folder`'s lock (a trial's, or a suite's while its report is written) while the block runs. If
    another process holds it, wait for it (``wait``) or yield False at once, holding nothing. The lock is an
    ``flock`` on ``folder/.lock``: the kernel releases it when its holder dies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
