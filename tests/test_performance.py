"""The fast training path gives the plain path's results, and fp32 training the pinned reference numbers, with the
allocator tuned or not; fused Adam where supported, with a clean fallback; the allocator tuning degrades to a no-op
where it cannot apply; the benchmark runs every row, its FLOP count is right, and its Keras peer row runs the
interpreter it is given; the measuring helpers import neither torch nor the bench."""

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

from ablations import bench
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
def test_bench_quick_runs_every_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--data-dir", str(tmp_path / "no-data"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["data"] == "synthetic"
    assert set(report["images_per_s"]) == {
        "lightning",
        "lightning_bf16",
        "pytorch_loop",
        "pytorch_loop_channels_last",
        "textbook_pipeline",
        "loop_allocator_tuned",
        "loop_glibc_defaults",
    } | ({"keras"} if report["keras_python"] else set())
    assert all(v > 0 for v in report["images_per_s"].values())
    assert report["compute"]["gflop_per_image"] == pytest.approx(NOTEBOOK_TRAINING_FLOPS / 1e9)
    assert all(v > 0 for v in report["compute"]["gemm_gflops_fp32"].values())
    assert report["machine"]["allocator"] == runtime.tune_allocator() and report["machine"]["cpu"]
    assert report["fixed_cost"]["to_first_step_s"] > 0
    assert report["peak_rss_gb"] > report["imports_rss_gb"] > 0.1  # training adds to what the imports hold
    assert set(report["pack_trials_per_hour"]) == {"pack=4", "in turn"}
    assert all(v > 0 for v in report["pack_trials_per_hour"].values())
    assert set(report["sweep_trials_per_hour"]) == {"parallel=1", "parallel=2"}
    assert "| 1. Trainer.fit vs hand-written loop |" in capsys.readouterr().out


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


def conv_flops(side_out: int, c_in: int, c_out: int) -> int:
    return 2 * side_out * side_out * c_out * c_in * 9


# The notebook's network per image, 2 FLOPs per multiply-add: forward = 3 convolutions + 2 dense layers; backward =
# weight gradients of all five and input gradients of all but the first convolution (its input needs none).
CONVS = [conv_flops(30, 3, 32), conv_flops(28, 32, 32), conv_flops(26, 32, 32)]
DENSE = [2 * 26 * 26 * 32 * 1024, 2 * 1024 * 10]
NOTEBOOK_TRAINING_FLOPS = sum(CONVS) + sum(DENSE) + (sum(CONVS) + sum(DENSE)) + (sum(CONVS[1:]) + sum(DENSE))


def test_flops_per_image_counts_the_notebook_network_forward_and_backward():
    assert bench.flops_per_image() == NOTEBOOK_TRAINING_FLOPS  # 216,811,008


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


FAKE_PYTHON = """#!{python}
import json, sys
from pathlib import Path
peer, images, labels, *flags = sys.argv[1:]
assert Path(peer).name == "keras_peer.py" and Path(images).exists() and Path(labels).exists(), sys.argv
Path({log!r}).write_text(json.dumps(sys.argv[1:]))
print("TensorFlow's start-up chatter")
print(json.dumps({{"images_per_s": 123.0, "tensorflow": "fake"}}))
"""


def test_keras_peer_row_runs_the_given_interpreter_on_our_images(cifar_dir: Path, tmp_path: Path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable, log=str(tmp_path / "argv.json")))
    fake.chmod(0o755)
    dm = CIFAR10DataModule(str(cifar_dir), normalize="pixel", val_size=100, download=False)
    dm.setup()
    arrays = bench.keras_arrays(dm, tmp_path / "arrays", 2 * 128)
    assert bench.keras_rate(str(fake), arrays, warmup=1, steps=1) == 123.0
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[3:] == ["--batch-size", "128", "--warmup", "1", "--steps", "1"]
    import numpy as np

    images = np.load(arrays[0])
    assert images.dtype == np.uint8 and images.shape == (256, 3, 32, 32)
    assert (images == dm.train_images[:256].numpy()).all()
    assert bench.keras_python(None) in (None, sys.executable) and bench.keras_python("/x/python") == "/x/python"


def test_the_measuring_helpers_are_shared_without_torch_or_the_bench():
    """`ablations.gpucheck` and `ablations.measure` import neither torch nor `ablations.bench`; the bench uses the
    same helpers."""
    from ablations import measure

    code = (
        "import sys, ablations.gpucheck, ablations.measure; "
        "assert not {'torch', 'ablations.bench'} & set(sys.modules), sorted(sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert bench.machine is measure.machine and bench.flops_per_image is measure.flops_per_image


def test_synthetic_data_is_a_readable_binary_layout(tmp_path: Path):
    from ablations.measure import synthetic_data_dir

    dm = CIFAR10DataModule(str(synthetic_data_dir(tmp_path / "data", 50, 20)), val_size=10, download=False)
    assert dm.verify() == {"train": 40, "val": 10, "test": 20}
