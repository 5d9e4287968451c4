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
- ``superseded/<settings hash>/``: a finished result a new run replaced (``--force``, or other settings with
  ``--force``), moved aside with its events instead of deleted;
- ``result.json.damaged``: a result.json that could not be trusted (unreadable, no or a wrong checksum, a broken
  schema), kept for inspection when its trial is rerun;
- any other file: the user's, never touched.

`list_trials` is the one reader of a suite's folder (the report, ``load_results`` and TensorBoard's suite runs use
it): a result counts only in the folder its own (cell, seed) names; every other copy is a problem. No symlink is
followed where the harness deletes, moves, locks or writes (`refuse_symlinks`).

The report, a dashboard or another engine can read and write these without importing torch or Lightning.
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
DAMAGED_SUFFIX = ".damaged"  # result.json.damaged: a result that could not be trusted, kept for inspection
# What a trial writes in its folder besides result.json, error.json and model.ckpt (a retrain replaces these; every
# other file in the folder is the user's): TensorBoard events, Lightning's hparams.yaml, the csv and wandb loggers.
TRIAL_OUTPUTS = ("hparams.yaml", "csv", "wandb")
EVENTS_PREFIX = "events.out.tfevents."
LOCK_NOTE_S = 5.0  # how long a waiting sweep waits for a lock before it names the holder


class UnsafePath(ValueError):
    """A path the harness would delete, move, lock or write through is a symlink: refused, never followed."""


def refuse_symlinks(*paths: Path) -> None:
    """Raise `UnsafePath` if any of `paths` is a symlink (a trial folder, its cell, its suite folder, a lock)."""
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
        or name.startswith(EVENTS_PREFIX)
        or (name.startswith(".") and name.endswith(".tmp"))
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
    def lock(self) -> Path:
        return self.folder / LOCK_FILE

    @property
    def superseded(self) -> Path:
        return self.folder / SUPERSEDED_DIR

    @property
    def damaged(self) -> Path:
        return self.folder / (RESULT_FILE + DAMAGED_SUFFIX)

    @property
    def checkpoint(self) -> Path:
        """The final checkpoint ``--save-model`` keeps (``RegularizedClassifier.load_from_checkpoint`` reads it)."""
        return self.folder / CHECKPOINT_FILE

    def refuse_symlinks(self) -> None:
        """`UnsafePath` if the trial folder, its cell's folder or its suite's folder is a symlink."""
        refuse_symlinks(self.folder.parent.parent, self.folder.parent, self.folder)

    def make_ready(self, old: Optional[dict[str, Any]]) -> Optional[Path]:
        """Make the folder ready for a new run of its trial (the caller holds its lock and has just read `old`, its
        `read_result`, None when there is none or it cannot be trusted): a finished result is moved with its
        outputs to ``superseded/<its settings hash>/`` (`supersede`), a result.json that cannot be trusted is kept
        as ``result.json.damaged``, and the rest of the last run's outputs are removed (`clear`); the user's own
        files stay. Returns the superseded folder, if any."""
        if old is None and os.path.lexists(self.result):
            os.replace(self.result, self.damaged)
        kept = self.supersede(str(old["settings_hash"])) if old is not None else None
        self.clear()
        return kept

    def supersede(self, settings_hash: str) -> Path:
        """Move the trial's outputs (its result, events, error, checkpoint) to a new folder
        ``superseded/<settings_hash>/`` (``<settings_hash>.2``, ... when that exists) and return it: a finished
        result is never deleted."""
        self.superseded.mkdir(exist_ok=True)
        refuse_symlinks(self.superseded)
        target, n = self.superseded / settings_hash, 1
        while target.exists():
            n += 1
            target = self.superseded / f"{settings_hash}.{n}"
        target.mkdir()
        for entry in list(self.folder.iterdir()):
            if is_trial_output(entry.name):
                os.replace(entry, target / entry.name)
        return target

    def drop_empty_outputs(self) -> None:
        """Remove the empty files a failed run left (a full disk leaves an event file or hparams.yaml of 0 bytes)."""
        for entry in self.folder.iterdir():
            if is_trial_output(entry.name) and entry.is_file() and not entry.is_symlink() and not entry.stat().st_size:
                entry.unlink()

    def clear(self) -> None:
        """Remove what a previous, partial run of the trial left (`is_trial_output`: events, error, a result);
        the lock, ``superseded/``, ``result.json.damaged`` and the user's files stay. A symlink is removed, never
        followed."""
        for entry in self.folder.iterdir():
            if not is_trial_output(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# result.json's fields the harness reads, and what each must be (`schema_problem`)
RESULT_SCHEMA: dict[str, tuple[str, Any]] = {
    "suite": ("a text", lambda v: isinstance(v, str)),
    "spec": ("a text", lambda v: isinstance(v, str)),
    "seed": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "settings": ("a mapping", lambda v: isinstance(v, dict)),
    "settings_hash": ("a text", lambda v: isinstance(v, str)),
    "metrics": (
        "a mapping of numbers with test/acc, val/acc and train/acc",
        lambda v: (
            isinstance(v, dict)
            and all(_number(x) for x in v.values())
            and all(k in v for k in ("test/acc", "val/acc", "train/acc"))
        ),
    ),
    "history": ("a list of mappings", lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v)),
    "order": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "notebook": ("a number or null", lambda v: v is None or _number(v)),
    CHECKSUM_KEY: ("a SHA-256 text", lambda v: isinstance(v, str)),
}


def _texts(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


OPTIONAL_FIELDS = {
    "cell": ("a text", lambda v: isinstance(v, str)),
    "wall_time_s": ("a number", _number),
    "levels": ("a mapping of factor to label text", _texts),
    "fingerprints": ("a mapping of texts", _texts),
}


def schema_problem(result: Any) -> Optional[str]:
    """The first field of a result.json that is missing or not what the harness reads (``field 'seed' must be an
    integer >= 0, not '0'``), or None."""
    if not isinstance(result, dict):
        return f"must hold a mapping, not {type(result).__name__}"
    for name, (what, ok) in RESULT_SCHEMA.items():
        if name not in result:
            return f"has no field {name!r}" + (" (a result must carry its checksum)" if name == CHECKSUM_KEY else "")
        if not ok(result[name]):
            return f"field {name!r} must be {what}, not {json.dumps(result[name])[:60]}"
    for name, (what, ok) in OPTIONAL_FIELDS.items():
        if name in result and not ok(result[name]):
            return f"field {name!r} must be {what}, not {json.dumps(result[name])[:60]}"
    return None


def read_result(run_dir: Path) -> Optional[dict[str, Any]]:
    """The trial's result.json, or None if it is absent.

    One that cannot be trusted raises ValueError, one line naming the file and why: unreadable or truncated, a
    field missing or of the wrong kind (`RESULT_SCHEMA`), no ``checksum`` or content that no longer matches it
    (edited by hand or damaged). It is not counted, and its trial is rerun (the file is kept as
    ``result.json.damaged``). A result.json that is a symlink is refused, never followed.
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
    problem (a copy in a folder its (cell, seed) does not name, an untrusted result, a failure, a symlink)."""

    results: dict[Path, dict[str, Any]]
    problems: list[str]


def result_folder(result: dict[str, Any]) -> str:
    """``<cell>/seed=<s>``: the only folder (under its suite's) where `result` counts."""
    return f"{result.get('cell', result['spec'])}/seed={result['seed']}"


def list_trials(suite_dir: Path) -> SuiteListing:
    """The one reader of a suite's trial folders (``<cell>/seed=<s>/``): every result that counts, and a line for
    each problem. A result counts only in the folder its own (cell, seed) names, so a copied folder
    (``seed=0.bak``, ``seed=7`` holding seed 0) is a problem, never a second seed; a result that cannot be trusted
    (`read_result`) is a problem and its trial is rerun; a failed trial (error.json, no result) is listed; a
    symlinked folder is listed and not followed."""
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
    """What trials compared in one table must share: their hashed settings without the per-trial ones (spec,
    seed) and what the suite's own `factors` vary (``model.init_args.depth`` varies ``model``), as canonical JSON."""
    drop = set(PER_TRIAL_SETTINGS) | {factor.partition(".")[0] for factor in factors}
    return json.dumps({k: v for k, v in settings.items() if k not in drop}, sort_keys=True)


def _open_lock(folder: Path) -> int:
    """The descriptor of `folder`'s lock file, created if absent; never truncated, never through a symlink."""
    refuse_symlinks(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if os.path.islink(folder / LOCK_FILE):
            refuse_symlinks(folder / LOCK_FILE)
        raise error


def lock_holder(folder: Path) -> str:
    """Who holds `folder`'s lock, as its holder wrote it (``pid 123 on host node1``), and whether that process is
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


def _wait_for_lock(handle: int, folder: Path) -> None:
    """Block until `folder`'s lock is ours; if that takes over `LOCK_NOTE_S`, say once on stderr who holds it."""
    note = threading.Timer(
        LOCK_NOTE_S,
        lambda: print(
            f"waiting for {folder}: its lock is held by {lock_holder(folder) or 'another process'}", file=sys.stderr
        ),
    )
    note.daemon = True
    note.start()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    finally:
        note.cancel()


@contextmanager
def folder_lock(folder: Path, wait: bool = False) -> Iterator[bool]:
    """Hold `folder`'s lock (a trial's, or a suite's while its report is written) while the block runs. If
    another process holds it, wait for it (``wait``: after `LOCK_NOTE_S` a line on stderr names the holder, its
    PID and host) or yield False at once, holding nothing. The lock is an ``flock`` on ``folder/.lock`` (the
    kernel releases it when its holder dies); its holder writes its PID and host into it. A symlinked folder or
    lock file raises `UnsafePath`."""
    folder = Path(folder)
    handle = _open_lock(folder)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            _wait_for_lock(handle, folder)
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
