"""The fast training path gives the plain path's results, with the allocator tuned or not; fused Adam where supported,
with a clean fallback; the allocator tuning degrades to a no-op where it cannot apply. The regularizers' pinned numbers:
tests/test_regularizers.py; the benchmark's own tests: tests/test_bench.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_cifar import CIFAR10DataModule, RegularizedClassifier
from lit_cifar import runtime
from lit_cifar.module import make_adam

SPEC = "pixel+bn+dropout=0.25+maxnorm=3+augment"  # every source of randomness and every hook


def fit_metrics(data_dir: Path, num_workers: int) -> dict[str, float]:
    pl.seed_everything(3, verbose=False)
    dm = CIFAR10DataModule.from_spec(
        SPEC, data_dir=str(data_dir), val_size=100, batch_size=64, limit_train=256, num_workers=num_workers, seed=3
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    model = RegularizedClassifier(SPEC)
    trainer.fit(model, dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    tested = trainer.test(model, dm, verbose=False)[0]
    return {**metrics, **tested, "weight_sum": float(model.backbone.hidden.weight.detach().sum())}


@pytest.mark.slow
def test_fast_path_trains_exactly_like_the_plain_dataloader_path(cifar_dir):
    fast, plain = fit_metrics(cifar_dir, num_workers=0), fit_metrics(cifar_dir, num_workers=1)
    assert set(fast) >= {"train/loss", "val/acc", "test/acc", "weight_sum"}
    assert fast == plain


def test_adam_is_fused_where_supported_and_falls_back_cleanly(monkeypatch):
    params = [torch.nn.Parameter(torch.zeros(3))]
    cpu_has_fused_adam = torch.__version__ >= (2, 4)  # pyproject allows torch >= 2.3, whose CPU Adam is not fused
    assert bool(make_adam(params, lr=1e-3, eps=1e-7).defaults.get("fused")) is cpu_has_fused_adam
    assert not make_adam(params, lr=1e-3, eps=1e-7, fused=False).defaults.get("fused")
    original = torch.optim.Adam

    def no_fused(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    optimizer = make_adam(params, lr=1e-3, eps=1e-7)
    assert not optimizer.defaults.get("fused") and optimizer.defaults["eps"] == 1e-7


@pytest.mark.slow
def test_compiled_trial_runs_and_is_recorded(cifar_dir, tmp_path):
    """`--compile` (torch.compile of the network) trains and tests like any trial."""
    from ablations.run import main

    args = [
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(tmp_path),
        "--only",
        "pixel",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--val-size",
        "100",
        "--batch-size",
        "64",
        "--compile",
    ]
    assert main(args) == 0
    result = json.loads((tmp_path / "notebook/pixel/seed=0/result.json").read_text())
    assert result["metrics"]["test/acc"] > 0.1 and result["test_images"] == 200


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
