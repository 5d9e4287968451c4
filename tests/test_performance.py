"""The fast training path gives the plain path's results, and fp32 training the pinned reference numbers, with the
allocator tuned or not; fused Adam where supported, with a clean fallback; the allocator tuning degrades to a no-op
where it cannot apply. The benchmark's own tests: tests/test_bench.py."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

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


# Metrics of `reference_run` pinned with torch 2.14.1 on 2 threads of an AMD EPYC with AVX-512. fp32 training must
# stay bit-identical (committed results stay reproducible by later code), so these are compared with ==.
# What decides the numbers is which kernels run, and that is decided by the torch build, the thread count, the CPU
# vendor (oneDNN and MKL take vendor-specific paths) and its instruction sets (ATen's dispatch level and the ISA
# extensions oneDNN uses), not by the CPU's marketing name: two "AMD EPYC" (Zen 3, AVX2 only; Zen 4, AVX-512) round
# differently. The comparison runs only where all of those are the reference's (`kernel_environment`).
KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
REFERENCE_ENVIRONMENT = {
    "torch": "2.14.1",
    "threads": 2,
    "vendor": "AuthenticAMD",
    "capability": "AVX512",
    "isa": ["avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512dq", "avx512f", "avx512vl", "avx_vnni", "fma"],
}


def kernel_environment(cpuinfo: Optional[str] = None) -> dict[str, Any]:
    """What decides which CPU kernels train the network (see `REFERENCE_ENVIRONMENT`): torch's version, its
    threads, the CPU vendor, ATen's dispatch level and the CPU's `KERNEL_FLAGS`, from `cpuinfo` (the text of
    /proc/cpuinfo; read if None)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {
        "torch": torch.__version__.split("+")[0],
        "threads": torch.get_num_threads(),
        "vendor": fields.get("vendor_id", platform.machine()),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "isa": sorted(flags & set(KERNEL_FLAGS)),
    }


REFERENCE = {
    "pixel": {
        "val/loss": 0.4528583586215973,
        "val/acc": 0.9599999785423279,
        "train/loss": 1.6000640392303467,
        "train/acc": 0.67578125,
        "train/penalty": 0.0,
        "test/loss": 0.4163157343864441,
        "test/acc": 0.9750000238418579,
        "hidden_weight_sum": -15669.822175083478,
        "param_abs_sum": 188684.15111738027,
    },
    "pixel+bn+l2=0.01+maxnorm=3+dropout=0.5": {
        "val/loss": 31.38177490234375,
        "val/acc": 0.10999999940395355,
        "train/loss": 21.550643920898438,
        "train/acc": 0.9453125,
        "train/penalty": 20.18804931640625,
        "test/loss": 30.813241958618164,
        "test/acc": 0.14499999582767487,
        "hidden_weight_sum": 3450.653762595798,
        "param_abs_sum": 180913.287676787,
    },
    "augment": {
        "val/loss": 50.822418212890625,
        "val/acc": 0.07999999821186066,
        "train/loss": 435.1903076171875,
        "train/acc": 0.21484375,
        "train/penalty": 0.0,
        "test/loss": 49.83924865722656,
        "test/acc": 0.10000000149011612,
        "hidden_weight_sum": -15888.480259861335,
        "param_abs_sum": 187270.94244323653,
    },
}


def reference_run(data_dir: Path, spec: str, seed: int = 7) -> dict[str, float]:
    """Two epochs of 256 synthetic images in the order the sweep's trials run: seed, data, model, fit, test."""
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = CIFAR10DataModule.from_spec(
        spec,
        data_dir=str(data_dir),
        val_size=100,
        split_seed=0,
        batch_size=64,
        limit_train=256,
        download=False,
        seed=seed,
    )
    dm.prepare_data()
    dm.setup("fit")
    model = RegularizedClassifier(spec, lr=1e-3, lr_decay=1e-6)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(trainer.test(model, datamodule=dm, verbose=False)[0])
    metrics["hidden_weight_sum"] = float(model.backbone.hidden.weight.detach().double().sum())
    metrics["param_abs_sum"] = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(REFERENCE))
def test_fp32_training_is_bit_identical_to_the_reference(cifar_dir: Path, spec: str) -> None:
    environment = kernel_environment()
    if environment != REFERENCE_ENVIRONMENT:
        pytest.skip(f"reference numbers were taken on {REFERENCE_ENVIRONMENT}, this is {environment}")
    assert runtime.tune_allocator().startswith("glibc")  # the path every trial takes: it must not change a number
    metrics = reference_run(cifar_dir, spec)  # the data the reference was computed on
    assert {k: metrics[k] for k in REFERENCE[spec]} == REFERENCE[spec]


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
sys.path.insert(0, {tests!r})
from test_performance import reference_run
metrics = reference_run(__import__("pathlib").Path({data!r}), "pixel+bn+l2=0.01+maxnorm=3+dropout=0.5")
print(json.dumps({{"allocator": allocator, **metrics}}))
"""


@pytest.mark.slow
def test_allocator_tuning_changes_no_number(cifar_dir: Path):
    """A trial's numbers with `tune_allocator` equal those with glibc's defaults, bit for bit, on any machine."""
    runs = {}
    for setting in ("tuned", "default"):
        code = TRAIN_AND_PRINT.format(tests=str(Path(__file__).parent), data=str(cifar_dir))
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
