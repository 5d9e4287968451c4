"""benchmarks/bench.py (and measure.py, which it shares with gpucheck.py): every row runs, the FLOP count is
right, the Keras peer row runs the interpreter it is given, and the synthetic data is a readable layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bench
import measure
import pytest

from lit_cifar import CIFAR10DataModule, runtime
from tests.helpers import REPO

BENCHMARKS = REPO / "benchmarks"


def conv_flops(side_out: int, c_in: int, c_out: int) -> int:
    return 2 * side_out * side_out * c_out * c_in * 9


# The notebook's network per image, 2 FLOPs per multiply-add: forward = 3 convolutions + 2 dense layers; backward =
# weight gradients of all five and input gradients of all but the first convolution (its input needs none).
CONVS = [conv_flops(30, 3, 32), conv_flops(28, 32, 32), conv_flops(26, 32, 32)]
DENSE = [2 * 26 * 26 * 32 * 1024, 2 * 1024 * 10]
NOTEBOOK_TRAINING_FLOPS = sum(CONVS) + sum(DENSE) + (sum(CONVS) + sum(DENSE)) + (sum(CONVS[1:]) + sum(DENSE))


def test_flops_per_image_counts_the_notebook_network_forward_and_backward():
    assert measure.flops_per_image() == NOTEBOOK_TRAINING_FLOPS  # 216,811,008


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
    assert set(report["sweep_trials_per_hour"]) == {"parallel=1", "parallel=2"}
    assert "| 1. Trainer.fit vs hand-written loop |" in capsys.readouterr().out


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
    """gpucheck and measure import neither torch nor the bench; the bench uses the same helpers."""
    code = "import sys, gpucheck, measure; assert not {'torch', 'bench'} & set(sys.modules), sorted(sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=BENCHMARKS, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert bench.machine is measure.machine and bench.flops_per_image is measure.flops_per_image


def test_synthetic_data_is_a_readable_binary_layout(tmp_path: Path):
    dm = CIFAR10DataModule(str(measure.synthetic_data_dir(tmp_path / "data", 50, 20)), val_size=10, download=False)
    assert dm.verify() == {"train": 40, "val": 10, "test": 20}
