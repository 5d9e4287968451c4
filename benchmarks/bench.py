"""``python benchmarks/bench.py``: how fast our training path is, measured side by side in one run (from a checkout).

    python benchmarks/bench.py --data-dir ../shared/data --json bench.json
    python benchmarks/bench.py --data-dir ../shared/data --keras-python /path/to/venv-with-tensorflow/bin/python

Rows (the targets in brackets):
1. steady-state training images/s of `RegularizedClassifier` under ``Trainer.fit`` vs a hand-written PyTorch loop
   over the same model, data tensors, optimizer and batch size [ratio >= 0.97];
2. the same module fed by the textbook pipeline (``torchvision.datasets.CIFAR10`` + ``ToTensor`` + ``Normalize``,
   ``DataLoader(num_workers=2)``) vs our device-resident batches;
3. a trial's fixed cost: ``Trainer`` creation (data loading included) to the first training step [<= 3 s on CPU],
   and the final test pass;
4. peak resident memory of one full-data trial [<= 1.5 GB on CPU];
5. sweep throughput in trials/hour with ``--parallel 1`` vs ``--parallel 2`` on a short suite;
6. with a GPU, the ``notebook`` suite (9 specs, 5 epochs, full data, one seed) wall time [<= 60 s on one H100];
7. the notebook's own Keras model (``model.fit``, same images, batch and step count), when an interpreter with
   TensorFlow is given (``--keras-python``) or this one has it [``Trainer.fit`` >= 1.0x Keras in fp32, 1.2x aim];
8. ``Trainer.fit`` with ``precision="bf16-mixed"`` vs fp32 [>= 2x Keras's fp32 on a CPU with bf16 units];
9. the training step's achieved GFLOP/s (FLOPs per image counted by torch's ``FlopCounterMode``) against this
   machine's own matrix-multiply throughput on the hidden layer's three GEMMs, measured in the same run;
10. the hand-written loop in fresh processes with `lit_cifar.tune_allocator` vs glibc's default malloc settings.

The header names the CPU, its bf16 support, the threads and the allocator in use. Throughput rows alternate the
variants over ``--reps`` repetitions and report the median. Real CIFAR-10 is used when ``--data-dir`` has it, a
synthetic set of the same size otherwise. The benchmark is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from measure import BATCH_SIZE, SPEC, flops_per_image, machine, synthetic_data_dir
from ablations.plan import Request, count_trials
from ablations.signals import quiet_lightning
from lit_cifar import CIFAR10DataModule, RegularizedClassifier
from lit_cifar.layouts import CLASSES, PY_LAYOUT, TRAIN_FILES, find_layout
from lit_cifar.models import NotebookCNN
from lit_cifar.runtime import ENV as MALLOC_ENV
from lit_cifar.runtime import tune_allocator


def loaded(tensor: Optional[Tensor]) -> Tensor:
    """One of a set-up data module's tensors (its split or statistics; `datamodule` sets them up)."""
    if tensor is None:
        raise RuntimeError("the data module is not set up: call setup() first")
    return tensor


def datamodule(data_dir: Path, limit_train: Optional[int] = None) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(
        str(data_dir), normalize="pixel", batch_size=BATCH_SIZE, limit_train=limit_train, download=False, seed=0
    )
    dm.setup()
    return dm


def trainer(**kwargs: Any) -> pl.Trainer:
    """A Trainer configured as the sweeps configure it."""
    return pl.Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        **kwargs,
    )


class StepClock(pl.Callback):
    """Times training steps ``warmup`` .. last: from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()
        self.steps = trainer.global_step - self.warmup


def lightning_rate(dm: CIFAR10DataModule, warmup: int, steps: int, precision: str = "32-true") -> float:
    """Images/s of ``Trainer.fit`` on our data module, at Lightning `precision`."""
    torch.manual_seed(0)
    clock = StepClock(warmup)
    trainer(max_steps=warmup + steps, limit_val_batches=0, callbacks=[clock], precision=precision).fit(
        RegularizedClassifier(SPEC), dm
    )
    return clock.steps * BATCH_SIZE / (clock.end - clock.start)


def pytorch_rate(dm: CIFAR10DataModule, warmup: int, steps: int, channels_last: bool = False) -> float:
    """Images/s of a hand-written loop: same module, data tensors, optimizer, schedule and batch size
    (optionally with the model and its inputs in ``channels_last`` memory format)."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = RegularizedClassifier(SPEC).to(loaded(dm.train_images).device, memory_format=layout)
    model.set_input_statistics(loaded(dm.mean), loaded(dm.std))  # the model standardizes uint8 inputs, as under fit
    config = model.configure_optimizers()
    scheduler = cast("dict[str, Any]", config["lr_scheduler"])  # RegularizedClassifier's: a dict, the LambdaLR in it
    optimizer, schedule = config["optimizer"], scheduler["scheduler"]
    model.train()
    step, start = 0, 0.0
    while step < warmup + steps:
        for images, labels in dm.train_dataloader():
            if step == warmup:
                start = time.perf_counter()
            inputs = dm.preprocess(images, train=True).contiguous(memory_format=layout)
            loss = F.cross_entropy(model(inputs), labels) + model.penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step == warmup + steps:
                break
    return steps * BATCH_SIZE / (time.perf_counter() - start)


def textbook_rate(dm: CIFAR10DataModule, root: Path, warmup: int, steps: int) -> float:
    """Images/s of ``Trainer.fit`` fed by torchvision's CIFAR10 + ToTensor + Normalize, 2 loader workers."""
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's dataset over our pickles (the local copy does not match the official checksums)."""

        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = list(CLASSES)
            self.class_to_idx = {c: i for i, c in enumerate(CLASSES)}

    mean = (loaded(dm.mean).mean((1, 2)) / 255).tolist()
    std = (loaded(dm.std).mean((1, 2)) / 255).tolist()
    dataset = LocalCIFAR10(
        str(root), train=True, transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    )
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=2, persistent_workers=True, drop_last=True
    )
    torch.manual_seed(0)
    clock = StepClock(warmup)
    # The loader already standardizes (Normalize): the same network with an identity input layer ("baseline").
    trainer(max_steps=warmup + steps, limit_val_batches=0, callbacks=[clock]).fit(
        RegularizedClassifier("baseline"), loader
    )
    return clock.steps * BATCH_SIZE / (clock.end - clock.start)


def write_python_layout(dm: CIFAR10DataModule, root: Path) -> Path:
    """The data module's training split as torchvision's pickles, so torchvision reads the same images."""
    folder = root / PY_LAYOUT
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = loaded(dm.train_images), loaded(dm.train_labels)
    parts = torch.chunk(torch.arange(len(labels)), len(TRAIN_FILES))
    for name, index in zip(TRAIN_FILES, parts):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images[index].reshape(len(index), -1).numpy(), "labels": labels[index].tolist()}, f)
    return root


def fixed_cost(data_dir: Path) -> dict[str, float]:
    """Seconds from Trainer creation to the first training step (data loading included), and of the test pass."""
    first_step: dict[str, float] = {}

    class FirstStep(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            first_step.setdefault("t", time.perf_counter())

    dm = CIFAR10DataModule(str(data_dir), normalize="pixel", batch_size=BATCH_SIZE, download=False, seed=0)
    model = RegularizedClassifier(SPEC)
    start = time.perf_counter()
    fit_trainer = trainer(max_steps=1, limit_val_batches=0, callbacks=[FirstStep()])
    fit_trainer.fit(model, dm)
    test_start = time.perf_counter()
    fit_trainer.test(model, dm, verbose=False)
    return {"to_first_step_s": first_step["t"] - start, "test_pass_s": time.perf_counter() - test_start}


def run_child(code: str, timeout: float, env: Optional[dict[str, str]] = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if done.returncode:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def peak_memory_gb(data_dir: Path, epochs: int, limit_train: Optional[int]) -> dict[str, float]:
    """Peak RSS (GB) of a process that runs one trial exactly as a sweep does, and its RSS once imports are done.

    Read from the process's own ``/proc/self/status`` (``VmHWM``, ``VmRSS``): ``getrusage``'s ``ru_maxrss`` would
    also count this (large) benchmark process, whose pages the child shared between fork and exec. The imports
    (torch's CUDA build alone is ~0.5 GB on a CPU) are the floor no trial setting can lower.
    """
    code = f"""
import tempfile
from ablations.signals import quiet_lightning
from ablations.suite import TrainSettings, Trial
from ablations.suite import RunOptions
from ablations.trial import run_trial
from lit_cifar import RegularizationSpec
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1e6
imports = status("VmRSS")
quiet_lightning()
trial = Trial("bench", RegularizationSpec.parse({SPEC!r}), 0, TrainSettings(epochs={epochs}, seeds=(0,),
              limit_train={limit_train!r}), 0)
result = run_trial(trial, RunOptions(data_dir={str(data_dir)!r}, logdir=tempfile.mkdtemp(), download=False))
assert result.state == "done", result
print(status("VmHWM"), imports)
"""
    peak, imports = map(float, run_child(code, timeout=3600).split())
    return {"peak": peak, "imports": imports}


def argv_of(values: dict[str, Any]) -> list[str]:
    """The flags that ask for `values` (flag names with ``_`` for ``-``, as `Request`'s fields): True for a switch,
    None and False for a flag left out, a list as comma-separated text (space-separated for ``only``, repeated for
    ``logger``), a mapping as JSON."""
    argv: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif name == "logger":
            for logger in [value] if isinstance(value, str) else value:
                argv += [flag, logger]
        elif name == "only":
            argv += [flag, *([value] if isinstance(value, str) else value)]
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(map(str, value))]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def sweep_rate(data_dir: Path, parallel: int, sweep: dict[str, Any]) -> float:
    """Trials/hour of ``python -m ablations.run`` over a short suite with ``--parallel``; `sweep` holds the other
    flags as values (`ablations.plan.Request`'s fields)."""
    args = argv_of(sweep)
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ablations.run",
                "--data-dir",
                str(data_dir),
                "--logdir",
                logdir,
                "--parallel",
                str(parallel),
                *args,
            ],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"sweep failed:\n{done.stderr[-2000:]}")
    trials = count_trials(Request(**sweep))
    return trials * 3600 / seconds


def gpu_notebook_suite_seconds(data_dir: Path) -> Optional[float]:
    """Wall time of the whole ``notebook`` suite, one seed, on the GPU (None without one)."""
    if not torch.cuda.is_available():
        return None
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ablations.run",
                "--suite",
                "notebook",
                "--seeds",
                "0",
                "--data-dir",
                str(data_dir),
                "--logdir",
                logdir,
            ],
            check=True,
        )
        return time.perf_counter() - start


def gemm_gflops(dtype: torch.dtype, reps: int = 10) -> dict[str, float]:
    """This machine's GFLOP/s on the hidden layer's three matrix multiplies at batch 128 (forward, input gradient,
    weight gradient: 128 x 21,632 x 1,024 each), the best of `reps` after 3 warm-ups."""
    hidden = NotebookCNN(SPEC).hidden  # the network RegularizedClassifier(SPEC) trains
    x = torch.randn(BATCH_SIZE, hidden.in_features, dtype=dtype)
    w = torch.randn(hidden.out_features, hidden.in_features, dtype=dtype)
    g = torch.randn(BATCH_SIZE, hidden.out_features, dtype=dtype)
    products = {"forward": lambda: x @ w.t(), "input_grad": lambda: g @ w, "weight_grad": lambda: g.t() @ x}
    flops = 2 * BATCH_SIZE * hidden.in_features * hidden.out_features
    best: dict[str, float] = {}
    for name, product in products.items():
        times = []
        for _rep in range(3 + reps):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
        best[name] = flops / min(times[3:]) / 1e9
    return best


def loop_rate_in_child(data_dir: Path, limit: Optional[int], warmup: int, steps: int, tuned: bool) -> float:
    """`pytorch_rate` in a fresh process, with `tune_allocator` (`tuned`) or with glibc's default settings."""
    code = f"""
from pathlib import Path
from lit_cifar import tune_allocator
tune_allocator()
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench import datamodule, pytorch_rate
print(pytorch_rate(datamodule(Path({str(data_dir)!r}), {limit!r}), {warmup}, {steps}))
"""
    return float(run_child(code, timeout=900, env={MALLOC_ENV: "tuned" if tuned else "default"}))


def keras_python(given: Optional[str]) -> Optional[str]:
    """The interpreter that runs the Keras peer: `given`, else this one if it can import TensorFlow, else None."""
    if given:
        return given
    import importlib.util

    return sys.executable if importlib.util.find_spec("tensorflow") else None


def keras_rate(python: str, arrays: tuple[Path, Path], warmup: int, steps: int) -> float:
    """Images/s of the notebook's Keras model under ``model.fit`` (``benchmarks/keras_peer.py``) on the same
    images."""
    peer = Path(__file__).with_name("keras_peer.py")
    done = subprocess.run(
        [
            python,
            str(peer),
            *map(str, arrays),
            "--batch-size",
            str(BATCH_SIZE),
            "--warmup",
            str(warmup),
            "--steps",
            str(steps),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode:
        raise RuntimeError(f"Keras peer failed ({python}):\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"])


def keras_arrays(dm: CIFAR10DataModule, folder: Path, count: int) -> tuple[Path, Path]:
    """The first `count` training images (uint8, N x 3 x 32 x 32) and labels as .npy files for the Keras peer."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    images, labels = folder / "images.npy", folder / "labels.npy"
    np.save(images, loaded(dm.train_images)[:count].numpy())
    np.save(labels, loaded(dm.train_labels)[:count].numpy())
    return images, labels


def alternate(variants: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """Median of each variant over `reps` rounds, the order of variants alternating between rounds."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            samples[name].append(variants[name]())
            print(f"  {name}: {samples[name][-1]:.1f}", file=sys.stderr)
    return {name: statistics.median(values) for name, values in samples.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LIT_CIFAR_DATA", "data")),
        help="real CIFAR-10 (either layout); synthetic data of the same size if absent",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions of the throughput rows")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per throughput measurement")
    parser.add_argument(
        "--keras-python",
        help="a Python interpreter with TensorFlow, for the Keras peer row "
        "(default: this one, if it has TensorFlow; else the row is skipped)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every row runs, in seconds")
    return parser


def throughput_variants(
    dm: CIFAR10DataModule,
    data_dir: Path,
    scratch: Path,
    limit: Optional[int],
    warmup: int,
    steps: int,
    keras: Optional[str],
) -> dict[str, Callable[[], float]]:
    """Every training-throughput variant of rows 1, 2, 7, 8 and 10, by name."""
    textbook_root = write_python_layout(dm, scratch / "textbook")
    variants = {
        "lightning": lambda: lightning_rate(dm, warmup, steps),
        "lightning_bf16": lambda: lightning_rate(dm, warmup, steps, precision="bf16-mixed"),
        "pytorch_loop": lambda: pytorch_rate(dm, warmup, steps),
        "pytorch_loop_channels_last": lambda: pytorch_rate(dm, warmup, steps, channels_last=True),
        "textbook_pipeline": lambda: textbook_rate(dm, textbook_root, warmup, steps),
        "loop_allocator_tuned": lambda: loop_rate_in_child(data_dir, limit, warmup, steps, tuned=True),
        "loop_glibc_defaults": lambda: loop_rate_in_child(data_dir, limit, warmup, steps, tuned=False),
    }
    if keras:
        arrays = keras_arrays(dm, scratch / "keras", (warmup + steps) * BATCH_SIZE)
        variants["keras"] = lambda: keras_rate(keras, arrays, warmup, steps)
    return variants


def throughput_rows(variants: dict[str, Callable[[], float]], reps: int) -> dict[str, Any]:
    """Training images/s of every variant, alternated over `reps` repetitions, their ratios, and row 9's GFLOP/s."""
    rates = alternate(variants, reps)
    ratios = {
        "lightning_vs_pytorch": rates["lightning"] / rates["pytorch_loop"],
        "ours_vs_textbook": rates["lightning"] / rates["textbook_pipeline"],
        "channels_last_vs_contiguous": rates["pytorch_loop_channels_last"] / rates["pytorch_loop"],
        "bf16_vs_fp32": rates["lightning_bf16"] / rates["lightning"],
        "allocator_tuned_vs_defaults": rates["loop_allocator_tuned"] / rates["loop_glibc_defaults"],
    }
    if "keras" in rates:
        ratios.update(
            lightning_vs_keras=rates["lightning"] / rates["keras"],
            bf16_vs_keras=rates["lightning_bf16"] / rates["keras"],
        )
    print("9. FLOPs and GEMM throughput", file=sys.stderr)
    flops = flops_per_image()
    compute = {
        "gflop_per_image": flops / 1e9,
        "gemm_gflops_fp32": gemm_gflops(torch.float32),
        "gemm_gflops_bf16": gemm_gflops(torch.bfloat16),
        "achieved_gflops": {"fp32": rates["lightning"] * flops / 1e9, "bf16": rates["lightning_bf16"] * flops / 1e9},
    }
    return {"images_per_s": rates, **ratios, "compute": compute}


def trial_rows(data_dir: Path, quick: bool, limit: Optional[int]) -> dict[str, Any]:
    """Rows 3-6: a trial's fixed cost and peak memory, sweep throughput, and the GPU suite time."""
    print("3. fixed cost", file=sys.stderr)
    report: dict[str, Any] = {"fixed_cost": fixed_cost(data_dir)}
    print("4. peak memory of one trial", file=sys.stderr)
    memory = peak_memory_gb(data_dir, epochs=1, limit_train=limit)
    report["peak_rss_gb"], report["imports_rss_gb"] = memory["peak"], memory["imports"]
    report["peak_rss_trial"] = f"{SPEC}, 1 epoch, {limit or 'all'} training images"
    print("5. sweep throughput", file=sys.stderr)
    sweep = {
        "only": ["baseline"] if quick else ["baseline", "pixel"],
        "seeds": [0, 1],
        "epochs": 1,
        "limit_train": 200 if quick else 2000,
        "val_size": 100 if quick else 1000,
    }
    report["sweep_trials_per_hour"] = {f"parallel={p}": sweep_rate(data_dir, p, sweep) for p in (1, 2)}
    report["sweep"] = " ".join(argv_of(sweep))
    print("6. GPU notebook suite", file=sys.stderr)
    report["gpu_notebook_suite_s"] = None if quick else gpu_notebook_suite_seconds(data_dir)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # as every trial process does
    quiet_lightning()
    warnings.filterwarnings("ignore")
    scratch = Path(tempfile.mkdtemp(prefix="lit-cifar-bench-"))
    real = find_layout(args.data_dir) is not None
    data_dir = (
        args.data_dir
        if real
        else synthetic_data_dir(scratch / "synthetic", *((6000, 200) if args.quick else (50000, 10000)))
    )
    reps, steps, warmup = (1, 2, 1) if args.quick else (args.reps, args.steps, 5)
    limit = 700 if args.quick else None
    dm = datamodule(data_dir, limit_train=limit)
    keras = keras_python(args.keras_python)
    report: dict[str, Any] = {
        "machine": machine(),
        "data": "real CIFAR-10" if real else "synthetic",
        "data_dir": str(data_dir),
        "train_images": len(loaded(dm.train_labels)),
        "spec": SPEC,
        "batch_size": BATCH_SIZE,
        "reps": reps,
        "timed_steps": steps,
        "keras_python": keras,
    }
    print("1, 2, 7, 8, 10. training throughput (images/s)", file=sys.stderr)
    report.update(throughput_rows(throughput_variants(dm, data_dir, scratch, limit, warmup, steps, keras), reps))
    report.update(trial_rows(data_dir, args.quick, limit))
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _versus(a: float, b: float, ratio: float, digits: int = 2) -> str:
    return f"{a:.0f} vs {b:.0f} img/s = {ratio:.{digits}f}x"


def speed_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows 7-10: the Keras peer, bf16, achieved vs available GFLOP/s, the allocator."""
    rates, compute = r["images_per_s"], r["compute"]
    keras = (
        "7. Trainer.fit vs the notebook's Keras model.fit (fp32)",
        _versus(rates["lightning"], rates["keras"], r["lightning_vs_keras"])
        if "keras" in rates
        else "TensorFlow not found: not measured (--keras-python)",
        ">= 1.0x (1.2x aim)",
    )
    bf16_vs_keras = f"; {r['bf16_vs_keras']:.2f}x Keras fp32" if "keras" in rates else ""
    gemm = compute["gemm_gflops_fp32"]
    return [
        keras,
        (
            "8. bf16-mixed vs fp32 (Trainer.fit)",
            _versus(rates["lightning_bf16"], rates["lightning"], r["bf16_vs_fp32"]) + bf16_vs_keras,
            ">= 2x Keras fp32 (bf16 CPU)",
        ),
        (
            "9. achieved vs GEMM GFLOP/s",
            f"{compute['gflop_per_image']:.3f} GFLOP/image: fp32 step "
            f"{compute['achieved_gflops']['fp32']:.0f} GFLOP/s vs GEMMs {gemm['forward']:.0f}/"
            f"{gemm['input_grad']:.0f}/{gemm['weight_grad']:.0f} (fwd/dX/dW); bf16 step "
            f"{compute['achieved_gflops']['bf16']:.0f} vs {max(compute['gemm_gflops_bf16'].values()):.0f}",
            "near the GEMMs'",
        ),
        (
            "10. allocator tuned vs glibc defaults (hand loop)",
            _versus(rates["loop_allocator_tuned"], rates["loop_glibc_defaults"], r["allocator_tuned_vs_defaults"]),
            "faster",
        ),
    ]


def format_table(r: dict[str, Any]) -> str:
    rates, fixed, sweep = r["images_per_s"], r["fixed_cost"], r["sweep_trials_per_hour"]
    gpu = r["gpu_notebook_suite_s"]
    rows = [
        (
            "1. Trainer.fit vs hand-written loop",
            _versus(rates["lightning"], rates["pytorch_loop"], r["lightning_vs_pytorch"], 3),
            ">= 0.97",
        ),
        (
            "2. ours vs textbook pipeline",
            _versus(rates["lightning"], rates["textbook_pipeline"], r["ours_vs_textbook"]),
            "faster",
        ),
        (
            "1b. channels_last vs contiguous (hand loop)",
            _versus(rates["pytorch_loop_channels_last"], rates["pytorch_loop"], r["channels_last_vs_contiguous"]),
            "use only if > 1",
        ),
        (
            "3. Trainer() to first step",
            f"{fixed['to_first_step_s']:.2f} s (test pass {fixed['test_pass_s']:.2f} s)",
            "<= 3 s",
        ),
        (
            "4. peak RSS of one trial",
            f"{r['peak_rss_gb']:.2f} GB ({r['peak_rss_trial']}; {r['imports_rss_gb']:.2f} GB of it the imports)",
            "<= 1.5 GB",
        ),
        ("5. sweep, parallel 1 vs 2", f"{sweep['parallel=1']:.0f} vs {sweep['parallel=2']:.0f} trials/h", "faster"),
        ("6. GPU notebook suite", "no GPU here: not measured" if gpu is None else f"{gpu:.0f} s", "<= 60 s (H100)"),
        *speed_rows(r),
    ]
    m = r["machine"]
    lines = [
        f"{r['data']} ({r['train_images']} training images), spec {r['spec']}, batch {r['batch_size']}, "
        f"median of {r['reps']}; {m['cpu']} ({m['cores']} cores, bf16 units: {'yes' if m['bf16_units'] else 'no'}"
        f"), {m['torch_threads']} torch threads, allocator: {m['allocator']}; GPU {m['gpu']}, torch {m['torch']}, "
        f"lightning {m['lightning']}",
        "",
        "| measure | result | target |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
