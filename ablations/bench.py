"""``python -m ablations.bench``: how fast our training path is, measured side by side in one run.

    python -m ablations.bench --data-dir ../shared/data --json bench.json

Rows (the issue's targets in brackets):
1. steady-state training images/s of `RegularizedClassifier` under ``Trainer.fit`` vs a hand-written PyTorch loop
   over the same model, data tensors, optimizer and batch size [ratio >= 0.97];
2. the same module fed by the textbook pipeline (``torchvision.datasets.CIFAR10`` + ``ToTensor`` + ``Normalize``,
   ``DataLoader(num_workers=2)``) vs our device-resident batches;
3. a trial's fixed cost: ``Trainer`` creation (data loading included) to the first training step [<= 3 s on CPU],
   and the final test pass;
4. peak resident memory of one full-data trial [<= 1.5 GB on CPU];
5. sweep throughput in trials/hour with ``--parallel 1`` vs ``--parallel 2`` on a short suite;
6. with a GPU, the ``seed`` suite (9 specs, 5 epochs, full data, one seed) wall time [<= 60 s on one H100].

Throughput rows alternate the variants over ``--reps`` repetitions and report the median. Real CIFAR-10 is used
when ``--data-dir`` has it, a synthetic set of the same size otherwise. The benchmark is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from ablations.run import quiet_lightning
from lit_cifar import CIFAR10DataModule, RegularizedClassifier
from lit_cifar.data import CLASSES, PY_LAYOUT, TEST_FILE, TRAIN_FILES, find_layout

SPEC = "pixel"  # the notebook's standard input pipeline, no extra regularizer
BATCH_SIZE = 128


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__}


def synthetic_data_dir(root: Path, n_train: int, n_test: int) -> Path:
    """Random images in the binary layout, `n_train` split over the five training files."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for name, n in [*((f, n_train // 5) for f in TRAIN_FILES), (TEST_FILE, n_test)]:
        records = torch.randint(0, 256, (n, 3073), dtype=torch.uint8, generator=generator)
        records[:, 0] %= 10
        (folder / f"{name}.bin").write_bytes(records.numpy().tobytes())
    return root


def datamodule(data_dir: Path, limit_train: Optional[int] = None) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(str(data_dir), normalize="pixel", batch_size=BATCH_SIZE, limit_train=limit_train,
                           download=False, seed=0)
    dm.setup()
    return dm


def trainer(**kwargs: Any) -> pl.Trainer:
    """A Trainer configured as the sweeps configure it."""
    return pl.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
                      use_distributed_sampler=False, **kwargs)


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


def lightning_rate(dm: CIFAR10DataModule, warmup: int, steps: int) -> float:
    """Images/s of ``Trainer.fit`` on our data module."""
    torch.manual_seed(0)
    clock = StepClock(warmup)
    trainer(max_steps=warmup + steps, limit_val_batches=0, callbacks=[clock]).fit(RegularizedClassifier(SPEC), dm)
    return clock.steps * BATCH_SIZE / (clock.end - clock.start)


def pytorch_rate(dm: CIFAR10DataModule, warmup: int, steps: int, channels_last: bool = False) -> float:
    """Images/s of a hand-written loop: same module, data tensors, optimizer, schedule and batch size
    (optionally with the model and its inputs in ``channels_last`` memory format)."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = RegularizedClassifier(SPEC).to(dm.train_images.device, memory_format=layout)
    model.set_input_statistics(dm.mean, dm.std)  # the model standardizes its uint8 inputs, as under Trainer.fit
    config = model.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
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

    mean = (dm.mean.mean((1, 2)) / 255).tolist()
    std = (dm.std.mean((1, 2)) / 255).tolist()
    dataset = LocalCIFAR10(str(root), train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean, std)]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=2,
                                         persistent_workers=True, drop_last=True)
    torch.manual_seed(0)
    clock = StepClock(warmup)
    # The loader already standardizes (Normalize): the same network with an identity input layer ("baseline").
    trainer(max_steps=warmup + steps, limit_val_batches=0, callbacks=[clock]).fit(RegularizedClassifier("baseline"),
                                                                                  loader)
    return clock.steps * BATCH_SIZE / (clock.end - clock.start)


def write_python_layout(dm: CIFAR10DataModule, root: Path) -> Path:
    """The data module's training split as torchvision's pickles, so torchvision reads the same images."""
    folder = root / PY_LAYOUT
    folder.mkdir(parents=True, exist_ok=True)
    parts = torch.chunk(torch.arange(len(dm.train_labels)), len(TRAIN_FILES))
    for name, index in zip(TRAIN_FILES, parts):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": dm.train_images[index].reshape(len(index), -1).numpy(),
                         "labels": dm.train_labels[index].tolist()}, f)
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


def run_child(code: str, timeout: float) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def peak_memory_gb(data_dir: Path, epochs: int, limit_train: Optional[int]) -> float:
    """Peak RSS (GB) of a process that runs one trial exactly as a sweep does.

    Read from the process's own ``VmHWM``: ``getrusage``'s ``ru_maxrss`` would also count this (large) benchmark
    process, whose pages the child shared between fork and exec.
    """
    code = f"""
import tempfile
from ablations.run import quiet_lightning
from ablations.suite import TrainSettings, Trial
from ablations.trial import RunOptions, run_trial
from lit_cifar import RegularizationSpec
quiet_lightning()
trial = Trial("bench", RegularizationSpec.parse({SPEC!r}), 0, TrainSettings(epochs={epochs}, seeds=(0,),
              limit_train={limit_train!r}), 0)
status = run_trial(trial, RunOptions(data_dir={str(data_dir)!r}, logdir=tempfile.mkdtemp(), download=False))
assert status["status"] == "done", status
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1e6)
"""
    return float(run_child(code, timeout=3600))


def sweep_rate(data_dir: Path, parallel: int, args: list[str]) -> float:
    """Trials/hour of ``python -m ablations.run`` over a short suite with ``--parallel``."""
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ablations.run", "--data-dir", str(data_dir), "--logdir",
                               logdir, "--parallel", str(parallel), *args], capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"sweep failed:\n{done.stderr[-2000:]}")
    trials = len(subprocess.run([sys.executable, "-m", "ablations.run", "--dry-run", *args], capture_output=True,
                                text=True).stdout.splitlines())
    return trials * 3600 / seconds


def gpu_seed_suite_seconds(data_dir: Path) -> Optional[float]:
    """Wall time of the whole ``seed`` suite, one seed, on the GPU (None without one)."""
    if not torch.cuda.is_available():
        return None
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ablations.run", "--suite", "notebook", "--seeds", "0", "--data-dir",
                        str(data_dir), "--logdir", logdir], check=True)
        return time.perf_counter() - start


def alternate(variants: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """Median of each variant over `reps` rounds, the order of variants alternating between rounds."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            samples[name].append(variants[name]())
            print(f"  {name}: {samples[name][-1]:.1f}", file=sys.stderr)
    return {name: statistics.median(values) for name, values in samples.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ablations.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LIT_CIFAR_DATA", "data")),
                        help="real CIFAR-10 (either layout); synthetic data of the same size if absent")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions of the throughput rows")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per throughput measurement")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every row runs, in seconds")
    return parser


def throughput_rows(dm: CIFAR10DataModule, textbook_root: Path, warmup: int, steps: int,
                    reps: int) -> dict[str, Any]:
    """Rows 1-2: training images/s of every variant, alternated over `reps` repetitions, and their ratios."""
    rates = alternate({"lightning": lambda: lightning_rate(dm, warmup, steps),
                       "pytorch_loop": lambda: pytorch_rate(dm, warmup, steps),
                       "pytorch_loop_channels_last": lambda: pytorch_rate(dm, warmup, steps, channels_last=True),
                       "textbook_pipeline": lambda: textbook_rate(dm, textbook_root, warmup, steps)}, reps)
    return {"images_per_s": rates, "lightning_vs_pytorch": rates["lightning"] / rates["pytorch_loop"],
            "ours_vs_textbook": rates["lightning"] / rates["textbook_pipeline"],
            "channels_last_vs_contiguous": rates["pytorch_loop_channels_last"] / rates["pytorch_loop"]}


def trial_rows(data_dir: Path, quick: bool, limit: Optional[int]) -> dict[str, Any]:
    """Rows 3-6: a trial's fixed cost and peak memory, sweep throughput, and the GPU suite time."""
    print("3. fixed cost", file=sys.stderr)
    report: dict[str, Any] = {"fixed_cost": fixed_cost(data_dir)}
    print("4. peak memory of one trial", file=sys.stderr)
    report["peak_rss_gb"] = peak_memory_gb(data_dir, epochs=1, limit_train=limit)
    report["peak_rss_trial"] = f"{SPEC}, 1 epoch, {limit or 'all'} training images"
    print("5. sweep throughput", file=sys.stderr)
    sweep_args = (["--only", "baseline", "--seeds", "0,1", "--epochs", "1", "--limit-train", "200", "--val-size",
                   "100"] if quick else ["--only", "baseline", "pixel", "--seeds", "0,1", "--epochs", "1",
                                         "--limit-train", "2000", "--val-size", "1000"])
    report["sweep_trials_per_hour"] = {f"parallel={p}": sweep_rate(data_dir, p, sweep_args) for p in (1, 2)}
    report["sweep"] = " ".join(sweep_args)
    print("6. GPU seed suite", file=sys.stderr)
    report["gpu_seed_suite_s"] = None if quick else gpu_seed_suite_seconds(data_dir)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_lightning()
    warnings.filterwarnings("ignore")
    scratch = Path(tempfile.mkdtemp(prefix="lit-cifar-bench-"))
    real = find_layout(args.data_dir) is not None
    data_dir = args.data_dir if real else synthetic_data_dir(scratch / "synthetic",
                                                             *((6000, 200) if args.quick else (50000, 10000)))
    reps, steps, warmup = (1, 2, 1) if args.quick else (args.reps, args.steps, 5)
    limit = 700 if args.quick else None
    dm = datamodule(data_dir, limit_train=limit)
    report: dict[str, Any] = {"machine": machine(), "data": "real CIFAR-10" if real else "synthetic",
                              "data_dir": str(data_dir), "train_images": len(dm.train_labels), "spec": SPEC,
                              "batch_size": BATCH_SIZE, "reps": reps, "timed_steps": steps}
    print("1-2. training throughput (images/s)", file=sys.stderr)
    report.update(throughput_rows(dm, write_python_layout(dm, scratch / "textbook"), warmup, steps, reps))
    report.update(trial_rows(data_dir, args.quick, limit))
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def format_table(r: dict[str, Any]) -> str:
    rates, fixed, sweep = r["images_per_s"], r["fixed_cost"], r["sweep_trials_per_hour"]
    gpu = r["gpu_seed_suite_s"]
    rows = [
        ("1. Trainer.fit vs hand-written loop", f"{rates['lightning']:.0f} vs {rates['pytorch_loop']:.0f} img/s "
         f"= {r['lightning_vs_pytorch']:.3f}", ">= 0.97"),
        ("2. ours vs textbook pipeline", f"{rates['lightning']:.0f} vs {rates['textbook_pipeline']:.0f} img/s = "
         f"{r['ours_vs_textbook']:.2f}x", "faster"),
        ("1b. channels_last vs contiguous (hand loop)", f"{rates['pytorch_loop_channels_last']:.0f} vs "
         f"{rates['pytorch_loop']:.0f} img/s = {r['channels_last_vs_contiguous']:.2f}x", "use only if > 1"),
        ("3. Trainer() to first step", f"{fixed['to_first_step_s']:.2f} s (test pass {fixed['test_pass_s']:.2f} s)",
         "<= 3 s"),
        ("4. peak RSS of one trial", f"{r['peak_rss_gb']:.2f} GB ({r['peak_rss_trial']})", "<= 1.5 GB"),
        ("5. sweep, parallel 1 vs 2", f"{sweep['parallel=1']:.0f} vs {sweep['parallel=2']:.0f} trials/h", "faster"),
        ("6. GPU seed suite", "no GPU here: not measured" if gpu is None else f"{gpu:.0f} s", "<= 60 s (H100)"),
    ]
    m = r["machine"]
    lines = [f"{r['data']} ({r['train_images']} training images), spec {r['spec']}, batch {r['batch_size']}, "
             f"median of {r['reps']}; {m['cpu']}, {m['cores']} cores, GPU {m['gpu']}, torch {m['torch']}, "
             f"lightning {m['lightning']}", "", "| measure | result | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
