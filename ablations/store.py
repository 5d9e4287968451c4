"""The on-disk contract of a sweep, torch-free: where a trial's files live, atomic writes, results, locks.

A trial's folder ``<logdir>/<suite>/<cell>/seed=<s>/`` holds (`TrialPaths` names each) ``result.json``, written
atomically with a checksum of its content once the trial is tested; ``error.json`` instead when it failed;
``model.ckpt`` with ``--save-model``; ``.lock``, an ``flock`` held while the trial runs; TensorBoard events;
``superseded/<settings hash>/``, a finished result a ``--force`` run moved aside; ``result.json.damaged``, a result
that could not be trusted; and any file of the user's, never touched. `list_trials` is the one reader of a suite's
folder. No symlink is followed where the harness deletes, moves, locks or writes.
"""

from __future__ import annotations

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
CHECKPOINT_FILE = "model.ckpt"
# What a trial writes besides result.json, error.json and model.ckpt: Lightning's hparams.yaml, csv and wandb logs.
TRIAL_OUTPUTS = ("hparams.yaml", "csv", "wandb")
LOCK_NOTE_S = 5.0  # how long a waiting sweep waits for a lock before it names the holder


class UnsafePath(ValueError):
    """A path the harness would delete, move, lock or write through is a symlink: refused, never followed."""


def refuse_symlinks(*paths: Path) -> None:
    """Raise `UnsafePath` if any of `paths` is a symlink."""
    for path in paths:
        if Path(path).is_symlink():
            raise UnsafePath(
                f"{path} is a symlink to {os.readlink(path)}: the harness never deletes, moves or writes "
                "through one; replace it with a real one"
            )


def is_trial_output(name: str) -> bool:
    """Whether the file `name` in a trial folder is one the trial writes (replaced by a retrain), not the user's."""
    return (
        name in (RESULT_FILE, ERROR_FILE, CHECKPOINT_FILE, *TRIAL_OUTPUTS)
        or name.startswith("events.out.tfevents.")
        or (name.startswith(".") and ".tmp" in name)  # an atomic write's temporary file
    )


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
    def superseded(self) -> Path:
        return self.folder / SUPERSEDED_DIR

    @property
    def damaged(self) -> Path:
        return self.folder / (RESULT_FILE + ".damaged")

    @property
    def checkpoint(self) -> Path:
        """The final checkpoint ``--save-model`` keeps (``RegularizedClassifier.load_from_checkpoint`` reads it)."""
        return self.folder / CHECKPOINT_FILE

    def refuse_symlinks(self) -> None:
        """`UnsafePath` if the trial folder, its cell's folder or its suite's folder is a symlink."""
        refuse_symlinks(self.folder.parent.parent, self.folder.parent, self.folder)

    def make_ready(self, old: Optional[dict[str, Any]]) -> Optional[Path]:
        """Ready the folder for a new run (the caller holds its lock; `old` is its `read_result`, None if absent or
        untrusted): a finished result moves with its outputs to ``superseded/<its settings hash>/``, an untrusted
        one stays as ``result.json.damaged``, the rest of the last run's outputs go. Returns the superseded folder."""
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
        """Remove the trial's outputs (`is_trial_output`), or with `empty_only` the empty files a failed run left
        (a full disk leaves 0-byte events); the lock, ``superseded/`` and the user's files stay. A symlink is
        removed, never followed."""
        for entry in self.folder.iterdir():
            if not is_trial_output(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                if not empty_only:
                    shutil.rmtree(entry)
            elif not empty_only or (not entry.is_symlink() and not entry.stat().st_size):
                entry.unlink()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one; nothing half-written stays."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, for ``savefig``), synced and renamed to `path` when the block
    ends without error, removed otherwise: readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _texts(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


# result.json's fields the harness reads: (required, what it must be, the check)
RESULT_SCHEMA: dict[str, tuple[bool, str, Callable[[Any], bool]]] = {
    "suite": (True, "a text", lambda v: isinstance(v, str)),
    "spec": (True, "a text", lambda v: isinstance(v, str)),
    "seed": (True, "an integer >= 0", lambda v: _number(v) and isinstance(v, int) and v >= 0),
    "settings": (True, "a mapping", lambda v: isinstance(v, dict)),
    "settings_hash": (True, "a text", lambda v: isinstance(v, str)),
    "metrics": (
        True,
        "a mapping of numbers with test/acc, val/acc and train/acc",
        lambda v: (
            isinstance(v, dict)
            and all(_number(x) for x in v.values())
            and all(k in v for k in ("test/acc", "val/acc", "train/acc"))
        ),
    ),
    "history": (True, "a list of mappings", lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v)),
    "order": (True, "an integer", lambda v: _number(v) and isinstance(v, int)),
    "notebook": (True, "a number or null", lambda v: v is None or _number(v)),
    CHECKSUM_KEY: (True, "a SHA-256 text", lambda v: isinstance(v, str)),
    "cell": (False, "a text", lambda v: isinstance(v, str)),
    "wall_time_s": (False, "a number", _number),
    "levels": (False, "a mapping of factor to label text", _texts),
    "fingerprints": (False, "a mapping of texts", _texts),
}


def schema_problem(result: Any) -> Optional[str]:
    """The first field of a result.json that is missing or not what the harness reads, or None."""
    if not isinstance(result, dict):
        return f"must hold a mapping, not {type(result).__name__}"
    for name, (required, what, ok) in RESULT_SCHEMA.items():
        if name not in result:
            if required:
                why = " (a result must carry its checksum)" if name == CHECKSUM_KEY else ""
                return f"has no field {name!r}{why}"
        elif not ok(result[name]):
            return f"field {name!r} must be {what}, not {json.dumps(result[name])[:60]}"
    return None


def read_result(run_dir: Path) -> Optional[dict[str, Any]]:
    """The trial's result.json, or None if it is absent.

    One that cannot be trusted raises ValueError naming the file and why: unreadable, a field missing or of the
    wrong kind (`RESULT_SCHEMA`), no checksum or content that no longer matches it. A symlink is refused.
    """
    path = Path(run_dir) / RESULT_FILE
    if not os.path.lexists(path):
        return None
    try:
        refuse_symlinks(path)
        result = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"unreadable {path}: {error}") from None
    problem = schema_problem(result)
    if problem:
        raise ValueError(f"{path} {problem}")
    if result[CHECKSUM_KEY] != content_checksum(result):
        raise ValueError(f"{path} does not match its checksum: it was changed after the trial wrote it")
    return result


@dataclass(frozen=True)
class SuiteListing:
    """What a suite's folder holds (`list_trials`): the results that count, by trial folder, and one line for each
    problem."""

    results: dict[Path, dict[str, Any]]
    problems: list[str]


def result_folder(result: dict[str, Any]) -> str:
    """``<cell>/seed=<s>``: the only folder (under its suite's) where `result` counts."""
    return f"{result.get('cell', result['spec'])}/seed={result['seed']}"


def list_trials(suite_dir: Path) -> SuiteListing:
    """The one reader of a suite's trial folders: every result that counts, and a line for each problem. A result
    counts only in the folder its own (cell, seed) names (a copy such as ``seed=0.bak`` is a problem, never a second
    seed); an untrusted result, a failed trial and a symlinked folder (not followed) are problems."""
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
    """What trials compared in one table share: their hashed settings without spec, seed and what the suite's
    `factors` vary (``model.init_args.depth`` varies ``model``), as canonical JSON."""
    drop = {"spec", "seed"} | {factor.partition(".")[0] for factor in factors}
    return json.dumps({k: v for k, v in settings.items() if k not in drop}, sort_keys=True)


def lock_holder(folder: Path) -> str:
    """Who holds `folder`'s lock as its holder wrote it (``pid 123 on host node1``), and whether that process is
    stopped or gone when it is on this host; empty if unknown."""
    try:
        pid_text, host = (folder / LOCK_FILE).read_text().split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return ""
    holder = f"pid {pid} on host {host}"
    if host != socket.gethostname():
        return holder
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return f"{holder} (no such process on this host)"
    return f"{holder} (stopped)" if state in ("T", "t") else holder


@contextmanager
def folder_lock(folder: Path, wait: bool = False) -> Iterator[bool]:
    """Hold `folder`'s lock (an ``flock`` on ``folder/.lock``, which the kernel releases when its holder dies) while
    the block runs, writing our PID and host into it. If another process holds it, wait (after `LOCK_NOTE_S` a line
    on stderr names the holder) or, without `wait`, yield False at once. A symlinked folder or lock raises
    `UnsafePath`; the lock file is never truncated before it is ours."""
    folder = Path(folder)
    refuse_symlinks(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        refuse_symlinks(folder / LOCK_FILE)
        raise
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            note = threading.Timer(
                LOCK_NOTE_S,
                lambda: print(
                    f"waiting for {folder}: its lock is held by {lock_holder(folder) or 'another process'}",
                    file=sys.stderr,
                ),
            )
            note.daemon = True
            note.start()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            finally:
                note.cancel()
        try:
            os.ftruncate(handle, 0)
            os.pwrite(handle, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, it just names no one
            pass
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)


@functools.lru_cache(maxsize=None)
def code_provenance() -> dict[str, Any]:
    """Which code produced a result: lit_cifar's ``code_version``, the ``git_commit`` of the checkout it runs from
    and whether it was ``git_dirty`` (None outside our own checkout), and ``source_sha256`` (`source_hash` of the
    running packages: it tells two installs of one version apart)."""
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
    """SHA-256 over every ``.py`` and ``.yaml`` file under `folders` (path relative to its package's parent, then
    bytes, sorted; caches left out)."""
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
