"""`lit_cifar.runtime`: the allocator tuning sets glibc once, says so, degrades to a no-op where it cannot apply,
and changes no number. The benchmark's own tests: tests/test_bench.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_cifar import runtime


@pytest.fixture
def fresh_allocator_state(monkeypatch):
    monkeypatch.setattr(runtime, "_state", {})
    monkeypatch.delenv(runtime.ENV, raising=False)


def test_tune_allocator_sets_glibc_once_and_says_so(fresh_allocator_state):
    assert runtime.allocator().endswith("(tune_allocator not called)")
    text = runtime.tune_allocator()
    assert text.startswith("glibc ") and "no mmap for large blocks" in text and "1024 MiB" in text
    assert runtime.tune_allocator() == text == runtime.allocator()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("not glibc", "the C library's malloc, unchanged (not glibc)"),
        ("preloaded", "tcmalloc (preloaded), left as it is"),
        ("opted out", "glibc malloc, defaults (LIT_CIFAR_MALLOC=default)"),
    ],
)
def test_tune_allocator_degrades_to_a_no_op(fresh_allocator_state, monkeypatch, case, expected):
    if case == "not glibc":
        monkeypatch.setattr(runtime, "_glibc", lambda: None)
    elif case == "preloaded":
        monkeypatch.setattr(runtime, "preloaded_allocator", lambda: "tcmalloc")
        monkeypatch.setattr(runtime, "_glibc", lambda: pytest.fail("mallopt must not be called under tcmalloc"))
    else:
        monkeypatch.setenv(runtime.ENV, "default")
    assert runtime.tune_allocator() == expected


TRAIN_AND_PRINT = """
import json, sys
from lit_cifar import tune_allocator
allocator = tune_allocator()
sys.path.insert(0, {repo!r})
from tests.test_regularizers import pinned_trial
metrics = pinned_trial(__import__("pathlib").Path({data!r}), "pixel+bn+l2=0.01+maxnorm=3+dropout=0.5")
print(json.dumps({{"allocator": allocator, **metrics}}))
"""


@pytest.mark.slow
def test_allocator_tuning_changes_no_number(cifar_dir: Path):
    """A trial's numbers with `tune_allocator` equal those with glibc's defaults, bit for bit, on any machine."""
    runs = {}
    for setting in ("tuned", "default"):
        code = TRAIN_AND_PRINT.format(repo=str(Path(__file__).parents[1]), data=str(cifar_dir))
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, runtime.ENV: setting},
        )
        runs[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    tuned_allocator, default_allocator = runs["tuned"].pop("allocator"), runs["default"].pop("allocator")
    assert "no mmap" in tuned_allocator and default_allocator.endswith("(LIT_CIFAR_MALLOC=default)")
    assert runs["tuned"] == runs["default"] and runs["tuned"]["train/penalty"] > 0
