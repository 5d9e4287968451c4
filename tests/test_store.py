"""`ablations.store`: checksummed results, atomic writes, locks that die with their holder, code provenance."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ablations.report import report
from ablations.status import is_finished
from ablations.store import RESULT_FILE, atomic_output, folder_lock, read_result, write_json_atomic
from tests.helpers import REPO
from tests.helpers import finished, notebook_trials


def test_an_edited_result_is_not_counted_and_its_trial_reruns(tmp_path, capsys):
    [t] = notebook_trials(only=["pixel"])
    path = finished(t, tmp_path, 0.5)
    assert is_finished(t, tmp_path)
    edited = json.loads(path.read_text())
    edited["metrics"]["test/acc"] = 0.99
    path.write_text(json.dumps(edited, indent=2, sort_keys=True))
    with pytest.raises(ValueError, match="does not match its checksum"):
        read_result(path.parent)
    assert not is_finished(t, tmp_path)
    assert (
        "does not match its checksum: it was changed after the trial wrote it; rerunning pixel/seed=0"
        in capsys.readouterr().err
    )
    results, problems = report.load_results(tmp_path / "notebook")
    assert results == [] and "does not match its checksum" in problems[0]


def test_a_result_without_a_checksum_is_a_problem_not_a_legacy_pass(tmp_path):
    [t] = notebook_trials(only=["pixel"])
    path = finished(t, tmp_path)
    stripped = json.loads(path.read_text())
    del stripped["checksum"]
    stripped["metrics"]["test/acc"] = 0.99
    path.write_text(json.dumps(stripped))
    with pytest.raises(ValueError, match="has no field 'checksum'"):
        read_result(path.parent)
    assert not is_finished(t, tmp_path, warn=False)
    results, problems = report.load_results(tmp_path / "notebook")
    assert results == [] and "has no field 'checksum'" in problems[0]


def test_a_full_disk_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / RESULT_FILE
    target.write_text("old")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_json_atomic(target, {"metrics": {}})
    with pytest.raises(OSError):
        with atomic_output(tmp_path / "results.png") as path:
            path.write_bytes(b"\x89PNG...")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [RESULT_FILE]


def test_lock_is_released_when_its_holder_dies(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import time
from pathlib import Path
from ablations.store import folder_lock
with folder_lock(Path({str(tmp_path)!r})) as locked:
    print(locked, flush=True)
    time.sleep(3600)  # until killed
""",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "True"
    with folder_lock(tmp_path) as locked:
        assert locked is False
    holder.kill()
    holder.wait()
    with folder_lock(tmp_path) as locked:
        assert locked is True


# ------------------------------------------------------------------------ 10. provenance outside a git checkout
PROVENANCE = "import json; from ablations.store import code_provenance; print(json.dumps(code_provenance()))"


def provenance_of_a_copy(root: Path, change: str = "") -> dict[str, Any]:
    """code_provenance() of a copy of the packages in `root` (no git there), with `change` appended to a module."""
    for package in ("lit_cifar", "ablations"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(root / "ablations" / "stats.py", "a") as f:
        f.write(change)
    done = subprocess.run(
        [sys.executable, "-c", PROVENANCE],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_two_installs_of_one_version_with_different_code_are_told_apart(tmp_path):
    same = provenance_of_a_copy(tmp_path / "a")
    again = provenance_of_a_copy(tmp_path / "b")
    changed = provenance_of_a_copy(tmp_path / "c", change="\n# a local change\n")
    assert same["git_commit"] is None and same["code_version"] == changed["code_version"]
    assert {"code_version", "git_commit", "git_dirty"} <= same.keys()
    assert len(same["source_sha256"]) == 64
    assert same["source_sha256"] == again["source_sha256"] != changed["source_sha256"]
