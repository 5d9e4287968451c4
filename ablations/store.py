"""The on-disk contract of a sweep, torch-free: a trial's files (`TrialPaths`), atomic writes, results, locks.
A trial's folder ``<logdir>/<suite>/<cell>/seed=<s>/`` holds its checksummed ``result.json`` (or ``error.json``),
``model.ckpt``, the ``.lock`` held while it runs, TensorBoard events, ``superseded/`` and ``result.json.damaged``
results, and the user's files, never touched. `list_trials` is the one reader of a suite's folder. No symlink is
followed where the harness deletes, moves, locks or writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
LOCK_FILE = ".lock"
SUPERSEDED_DIR = "superseded"
CHECKSUM_KEY = "checksum"
# what a trial writes (replaced by a retrain): its results, model, and Lightning's hparams.yaml, csv and wandb logs
TRIAL_OUTPUTS = (RESULT_FILE, ERROR_FILE, "model.ckpt", "hparams.yaml", "csv", "wandb")
LOCK_NOTE_S = 5.0  # how long a waiting sweep waits for a lock before it names the holder


class UnsafePath(ValueError):
    """A symlink where the harness would delete, move, lock or write: refused, never followed."""


def refuse_symlinks(*paths: Path) -> None:
    """Raise `UnsafePath` if any of `paths` is a symlink."""
    for path in paths:
        if Path(path).is_symlink():
            raise UnsafePath(
                f"{path} is a symlink to {os.readlink(path)}: the harness never deletes, moves or writes "
                "through one; replace it with a real one"
            )


def is_trial_output(name: str) -> bool:
    """Whether `name` in a trial folder is the trial's (replaced by a retrain), not the user's."""
    return (
        name in TRIAL_OUTPUTS
        or name.startswith("events.out.tfevents.")
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def _in_folder(name: str) -> Any:
    return property(lambda paths: paths.folder / name)


@dataclass(frozen=True)
class TrialPaths:
    """Every file of one trial, from its folder."""

    folder: Path

    @classmethod
    def of(cls, logdir: Path | str, suite: str, spec: str, seed: int) -> TrialPaths:
        """``<logdir>/<suite>/<spec>/seed=<seed>``."""
        return cls(Path(logdir) / suite / spec / f"seed={seed}")

    result = _in_folder(RESULT_FILE)
    error = _in_folder(ERROR_FILE)
    superseded = _in_folder(SUPERSEDED_DIR)
    damaged = _in_folder(RESULT_FILE + ".damaged")
    checkpoint = _in_folder("model.ckpt")

    def refuse_symlinks(self) -> None:
        refuse_symlinks(self.folder.parent.parent, self.folder.parent, self.folder)

    def make_ready(self, old: Optional[dict[str, Any]]) -> Optional[Path]:
        """Ready the locked folder for a new run: a finished result (`old`) moves with its outputs to
        ``superseded/<settings hash>/`` (returned), an untrusted one to ``result.json.damaged``; the rest goes."""
        if old is None and os.path.lexists(self.result):
            os.replace(self.result, self.damaged)
        kept = None
        if old is not None:
            self.superseded.mkdir(exist_ok=True)
            refuse_symlinks(self.superseded)
            kept, n = self.superseded / str(old["settings_hash"]), 1
            while kept.exists():
                n += 1
                kept = self.superseded / f"{old['settings_hash']}.{n}"
            kept.mkdir()
            for entry in list(self.folder.iterdir()):
                if is_trial_output(entry.name):
                    os.replace(entry, kept / entry.name)
        self.clear()
        return kept

    def clear(self, empty_only: bool = False) -> None:
        """Remove the trial's outputs (symlinks unfollowed), or with `empty_only` the empty files a full disk left."""
        for entry in self.folder.iterdir():
            if not is_trial_output(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                if not empty_only:
                    shutil.rmtree(entry)
            elif not empty_only or (not entry.is_symlink() and not entry.stat().st_size):
                entry.unlink()


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path (``.<name>.<pid>.tmp``, which readers skip) renamed to `path` once the block succeeds and it
    is synced, else removed: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` of `text`."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """`write_bytes_atomic` of `data` as indented JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def content_checksum(result: dict[str, Any]) -> str:
    """The SHA-256 of a result's content (every key but ``checksum``), in canonical JSON."""
    content = {k: v for k, v in result.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a trial's result.json atomically, with the checksum `read_result` verifies."""
    write_json_atomic(path, {**result, CHECKSUM_KEY: content_checksum(result)})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _texts(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _metrics(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and all(_number(v) for v in value.values())
        and {"test/acc", "val/acc", "train/acc"} <= value.keys()
    )


# result.json's fields the harness reads: what each must be, and its check; the last four may be absent
RESULT_SCHEMA: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "suite": ("a text", lambda v: isinstance(v, str)),
    "spec": ("a text", lambda v: isinstance(v, str)),
    "seed": ("an integer >= 0", lambda v: _number(v) and isinstance(v, int) and v >= 0),
    "settings": ("a mapping", lambda v: isinstance(v, dict)),
    "settings_hash": ("a text", lambda v: isinstance(v, str)),
    "metrics": ("a mapping of numbers with test/acc, val/acc and train/acc", _metrics),
    "history": ("a list of mappings", lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v)),
    "order": ("an integer", lambda v: _number(v) and isinstance(v, int)),
    "notebook": ("a number or null", lambda v: v is None or _number(v)),
    CHECKSUM_KEY: ("a SHA-256 text", lambda v: isinstance(v, str)),
    "cell": ("a text", lambda v: isinstance(v, str)),
    "wall_time_s": ("a number", _number),
    "levels": ("a mapping of factor to label text", _texts),
    "fingerprints": ("a mapping of texts", _texts),
}
OPTIONAL_FIELDS = ("cell", "wall_time_s", "levels", "fingerprints")


def read_result(run_dir: Path) -> Optional[dict[str, Any]]:
    """The trial's result.json (None: absent); ValueError naming the file and why if it cannot be trusted."""
    path = Path(run_dir) / RESULT_FILE
    if not os.path.lexists(path):
        return None
    try:
        refuse_symlinks(path)
        result = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"unreadable {path}: {error}") from None
    if not isinstance(result, dict):
        raise ValueError(f"{path} must hold a mapping, not {type(result).__name__}")
    for name, (what, ok) in RESULT_SCHEMA.items():
        if name not in result and name not in OPTIONAL_FIELDS:
            why = " (a result must carry its checksum)" if name == CHECKSUM_KEY else ""
            raise ValueError(f"{path} has no field {name!r}{why}")
        if name in result and not ok(result[name]):
            raise ValueError(f"{path} field {name!r} must be {what}, not {json.dumps(result[name])[:60]}")
    if result[CHECKSUM_KEY] != content_checksum(result):
        raise ValueError(f"{path} does not match its checksum: it was changed after the trial wrote it")
    return result


@dataclass(frozen=True)
class SuiteListing:
    """The results that count, by trial folder, and one line for each problem."""

    results: dict[Path, dict[str, Any]]
    problems: list[str]


def result_folder(result: dict[str, Any]) -> str:
    """``<cell>/seed=<s>``: the only folder (under its suite's) where `result` counts."""
    return f"{result.get('cell', result['spec'])}/seed={result['seed']}"


def list_trials(suite_dir: Path) -> SuiteListing:
    """The one reader of a suite's trial folders. A result counts only in the folder its own (cell, seed) names: a
    copy (``seed=0.bak``) is a problem, never another seed, as are untrusted results, failures and symlinks."""
    suite_dir = Path(suite_dir)
    results: dict[Path, dict[str, Any]] = {}
    problems: list[str] = []
    for folder in sorted(p for p in suite_dir.glob("*/seed=*") if p.parent.name != SUPERSEDED_DIR):
        name = folder.relative_to(suite_dir).as_posix()
        if folder.is_symlink() or folder.parent.is_symlink():
            problems.append(f"{name} is a symlink: not followed, not counted")
            continue
        try:
            result = read_result(folder)
        except ValueError as error:
            problems.append(f"{error}: the trial will be rerun, it is not counted")
            continue
        if result is not None and result_folder(result) != name:
            problems.append(
                f"{name} holds a copy of the result of {result_folder(result)}: it counts only in its own "
                "folder; move or remove the copy"
            )
        elif result is not None:
            results[folder] = result
        elif (folder / ERROR_FILE).is_file():
            try:
                problems.append(f"failed {name}: {json.loads((folder / ERROR_FILE).read_text())['error']}")
            except (OSError, ValueError, KeyError, TypeError):
                problems.append(f"failed {name} (unreadable {ERROR_FILE})")
    return SuiteListing(results, problems)


def settings_key(settings: dict[str, Any], factors: tuple[str, ...] = ()) -> str:
    """What trials compared in one table share: their hashed settings but spec, seed and the `factors`."""
    drop = {"spec", "seed"} | {factor.partition(".")[0] for factor in factors}
    return json.dumps({k: v for k, v in settings.items() if k not in drop}, sort_keys=True)


def proc_stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command's name (state, parent, ...); empty if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def lock_holder(folder: Path) -> str:
    """Who holds `folder`'s lock (``pid 123 on host node1``), and whether it is stopped or gone; empty if unknown."""
    try:
        pid_text, host = (folder / LOCK_FILE).read_text().split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return ""
    holder = f"pid {pid} on host {host}"
    if host != socket.gethostname():
        return holder
    state = proc_stat(pid)[:1]
    if not state:
        return f"{holder} (no such process on this host)"
    return f"{holder} (stopped)" if state[0] in ("T", "t") else holder


@contextmanager
def folder_lock(folder: Path, wait: bool = False) -> Iterator[bool]:
    """Hold `folder`'s ``flock`` (the kernel releases it when its holder dies) in the block, naming us in it; if
    another process holds it, `wait` (naming the holder after `LOCK_NOTE_S`) or yield False."""
    folder = Path(folder)
    refuse_symlinks(folder, folder / LOCK_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC  # O_NOFOLLOW: no race makes it a symlink
    with open(os.open(folder / LOCK_FILE, flags, 0o644), "r+b", buffering=0) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            said = f"waiting for {folder}: its lock is held by {lock_holder(folder) or 'another process'}"
            note = threading.Timer(LOCK_NOTE_S, print, [said], {"file": sys.stderr})
            note.start()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            finally:
                note.cancel()
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, it just names no one
            handle.truncate(0)
            os.pwrite(handle.fileno(), f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=None)
def code_provenance() -> dict[str, Any]:
    """Which code made a result: version, git commit and dirtiness (None outside our checkout), `source_hash`."""
    import ablations
    import lit_cifar
    from lit_cifar import __version__

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = status = None
    if (root / ".git").exists():  # never report the commit of a repository we merely sit in
        commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    packages = [Path(str(package.__file__)).resolve().parent for package in (lit_cifar, ablations)]
    return {
        "code_version": __version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "source_sha256": source_hash(packages),
    }


def source_hash(folders: list[Path]) -> str:
    """SHA-256 over every ``.py`` and ``.yaml`` file under `folders`: its path, then its bytes, in sorted order."""
    digest = hashlib.sha256()
    for folder in folders:
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.suffix in (".py", ".yaml") and p.is_file() and "__pycache__" not in p.parts
        )
        for path in files:
            digest.update(path.relative_to(folder.parent).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
