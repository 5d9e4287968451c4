"""The on-disk contract of a sweep, torch-free: where every file of a trial lives, atomic writes, results, locks.

A trial's folder ``<logdir>/<suite>/<cell>/seed=<s>/`` (``<cell>``: its spec, then any setting-factor levels)
holds (`TrialPaths` names each):

- ``result.json``: written atomically once the trial has finished and been tested, with a ``checksum`` of its
  content (`write_result`), verified whenever it is read (`read_result`);
- ``error.json``: written atomically instead when it failed (reason and traceback);
- ``model.ckpt``: with ``--save-model``, the trained model's final checkpoint (written atomically before
  result.json);
- ``.lock``: an ``flock`` held while the trial runs, so two sweeps never run it at once (the kernel releases it
  when its holder dies);
- TensorBoard event files;
- ``superseded/<settings hash>/``: what a run with other settings (``--force``) moved aside instead of deleting.

The report, a dashboard or another engine can read and write these without importing torch or Lightning.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
LOCK_FILE = ".lock"
SUPERSEDED_DIR = "superseded"
CHECKSUM_KEY = "checksum"
PER_TRIAL_SETTINGS = ("spec", "seed")  # hashed settings that differ from trial to trial within one comparison
SOURCE_SUFFIXES = (".py", ".yaml")  # the files whose content `source_hash` covers
CHECKPOINT_FILE = "model.ckpt"


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

    @property
    def superseded(self) -> Path:
        return self.folder / SUPERSEDED_DIR

    def supersede(self, settings_hash: str) -> Optional[Path]:
        """If the folder holds a finished result of settings other than `settings_hash`, move it and everything
        beside it (events, error) to ``superseded/<its settings hash>/`` and return that folder; else None.
        A finished result is never deleted by a run of other settings."""
        try:
            old = read_result(self.folder)
        except ValueError:  # unreadable or edited: not a result anyone can count
            return None
        if old is None or old["settings_hash"] == settings_hash:
            return None
        target = self.superseded / str(old["settings_hash"])
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for entry in list(self.folder.iterdir()):
            if entry.name not in (LOCK_FILE, SUPERSEDED_DIR):
                os.replace(entry, target / entry.name)
        return target

    @property
    def checkpoint(self) -> Path:
        """The final checkpoint ``--save-model`` keeps (``RegularizedClassifier.load_from_checkpoint`` reads it)."""
        return self.folder / CHECKPOINT_FILE

    def clear(self) -> None:
        """Remove what a previous, partial or outdated run of the trial left (events, result, error), except the
        lock, which the caller holds, and ``superseded/`` (see `supersede`)."""
        for entry in self.folder.iterdir():
            if entry.name == SUPERSEDED_DIR:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name != LOCK_FILE:
                entry.unlink()


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


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder for writers that need a file name (e.g. ``savefig``), renamed to `path`
    when the block ends without error and removed otherwise: readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # keeps the suffix: savefig reads it
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def content_checksum(result: dict[str, Any]) -> str:
    """The SHA-256 of a result's content (every key but ``checksum``), in canonical JSON."""
    content = {k: v for k, v in result.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a trial's result.json atomically, with the `content_checksum` that `read_result` verifies."""
    write_json_atomic(path, {**result, CHECKSUM_KEY: content_checksum(result)})


def read_result(run_dir: Path) -> Optional[dict[str, Any]]:
    """The trial's result.json, or None if it is absent.

    A truncated or unreadable one, or one whose content no longer matches its ``checksum`` (edited by hand or
    damaged), raises ValueError: it is not counted, and its trial is rerun. Results written before checksums
    existed (no ``checksum`` key) are read as they are.
    """
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or "settings_hash" not in result or "metrics" not in result:
            raise ValueError("missing settings_hash or metrics")
    except (OSError, ValueError) as error:
        raise ValueError(f"unreadable {path}: {error}") from None
    if CHECKSUM_KEY in result and result[CHECKSUM_KEY] != content_checksum(result):
        raise ValueError(f"{path} does not match its checksum: it was changed after the trial wrote it")
    return result


def settings_key(settings: dict[str, Any], factors: tuple[str, ...] = ()) -> str:
    """What trials compared in one table must share: their hashed settings without the per-trial ones (spec,
    seed) and the suite's own `factors`, as canonical JSON."""
    drop = set(PER_TRIAL_SETTINGS) | set(factors)
    return json.dumps({k: v for k, v in settings.items() if k not in drop}, sort_keys=True)


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


@functools.lru_cache(maxsize=None)
def code_provenance() -> dict[str, Any]:
    """Which code produced a result: ``code_version`` (the version of the lit_cifar package that runs),
    ``git_commit`` (the commit of the checkout it runs from; ``None`` outside a git checkout or without git),
    ``git_dirty`` (whether that checkout had uncommitted changes to tracked files) and ``source_sha256`` (a hash
    of the running packages' source, `source_hash`: it tells two installs of one version apart, git or not)."""
    import ablations
    import lit_cifar
    from lit_cifar import __version__  # torch-free: the package imports its classes lazily

    root = Path(__file__).resolve().parents[1]
    commit = dirty = None
    if (root / ".git").exists():  # only our own checkout: never report the commit of a repository we sit in
        commit = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    packages = [Path(str(package.__file__)).resolve().parent for package in (lit_cifar, ablations)]
    return {
        "code_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "source_sha256": source_hash(packages),
    }


def source_hash(folders: list[Path]) -> str:
    """SHA-256 over every source file (`SOURCE_SUFFIXES`) under `folders`: each file's path relative to its
    package's parent, then its bytes, in sorted order; caches (``__pycache__``) left out."""
    digest = hashlib.sha256()
    for folder in folders:
        files = sorted(
            p for p in folder.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
        )
        for path in files:
            digest.update(path.relative_to(folder.parent).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
