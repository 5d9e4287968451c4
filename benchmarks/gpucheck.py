"""``python benchmarks/gpucheck.py``: on a GPU machine, time the notebook suite and check trial-parallel and DDP.

    python benchmarks/gpucheck.py                          # synthetic data of CIFAR-10's size, all GPUs
    python benchmarks/gpucheck.py --data-dir /data/cifar10  # the real data instead
    python benchmarks/gpucheck.py --tiny --accelerator cpu  # a few small trials on CPU: checks the script runs

Without a GPU (and without ``--tiny``) it measures nothing: exit 2 with one line.

Each row is one ``python -m ablations.run`` into a fresh logdir, timed from start to exit:

- ``one at a time``: the notebook suite (9 specs, one seed, its 5 epochs), ``--parallel 1``;
- ``one per GPU`` (with several GPUs) and ``two per GPU``: the same suite with ``--parallel`` GPUs and 2 x GPUs;
- ``DDP``: one spec, ``--strategy ddp --devices min(2, GPUs)`` (on CPU: two gloo processes).

Every row also reports the sweep's aggregate training TFLOP/s (trials x training images x epochs x GFLOP per
training image, as ``measure.flops_per_image`` counts it, over the wall time) beside the GPU's fp32 and
bf16 peaks.

A row passes when the sweep exits 0 and every trial left a result.json with the expected data-parallel width.
Exit status 0 when every row passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from measure import flops_per_image, machine, synthetic_data_dir

from ablations.store import RESULT_FILE, read_result

NOTEBOOK_SPECS = 9
TINY_SPECS = ("baseline", "pixel")
CIFAR_SIZES = (50_000, 10_000)  # training and test images of CIFAR-10
TINY_SIZES = (700, 200)
# Dense peak TFLOP/s (fp32 without tensor cores, bf16 tensor cores) of the GPUs the targets are set for, the
# figures those targets were set against; other devices show none.
PEAK_TFLOPS = {"H200": (67.0, 790.0), "H100": (67.0, 790.0)}


@dataclass(frozen=True)
class Row:
    """One sweep to time: its name, its extra flags, how many trials it runs, and their data-parallel width."""

    name: str
    flags: tuple[str, ...]
    trials: int
    world_size: int = 1


def rows(gpus: int, tiny: bool) -> list[Row]:
    """The sweeps to time on a machine with `gpus` GPUs (0: CPU)."""
    suite = ("--only", *TINY_SPECS) if tiny else ()
    trials = len(TINY_SPECS) if tiny else NOTEBOOK_SPECS
    ddp = min(2, gpus) if gpus else 2
    table = [Row("one at a time", (*suite, "--parallel", "1"), trials)]
    if gpus > 1:
        table.append(Row("one per GPU", (*suite, "--parallel", str(gpus)), trials))
    table.append(Row("two per GPU" if gpus else "two at a time", (*suite, "--parallel", str(2 * max(gpus, 1))), trials))
    table.append(
        Row(
            f"DDP, {ddp} {'GPUs' if gpus else 'processes'}",
            ("--only", "pixel", "--strategy", "ddp", "--devices", str(ddp)),
            1,
            ddp,
        )
    )
    return table


def run_row(row: Row, common: list[str], logdir: Path) -> dict[str, Any]:
    """Run one row's sweep; its wall time, throughput and whether it passed."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ablations.run", *common, "--logdir", str(logdir), *row.flags],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    found = (read_result(path.parent) for path in logdir.glob(f"*/*/*/{RESULT_FILE}"))
    results = [result for result in found if result is not None]
    problems = [] if done.returncode == 0 else [f"exit status {done.returncode}: {done.stderr[-1500:]}"]
    if len(results) != row.trials:
        problems.append(f"{len(results)} results, expected {row.trials}")
    if any(r["world_size"] != row.world_size for r in results):
        problems.append(f"world sizes {sorted({r['world_size'] for r in results})}, expected {row.world_size}")
    rates = [r["train_images_per_s"] for r in results]
    images = sum(r["train_images"] * r["settings"]["epochs"] for r in results)
    return {
        "row": row.name,
        "flags": " ".join(row.flags),
        "trials": row.trials,
        "wall_s": seconds,
        "trials_per_h": row.trials * 3600 / seconds,
        "images_per_s": statistics.fmean(rates) if rates else None,
        "train_images": images,
        "ok": not problems,
        "problems": problems,
    }


def peak_tflops(device: str) -> Optional[tuple[float, float]]:
    """The (fp32, bf16) dense peaks of `device` if it is one of `PEAK_TFLOPS`'s GPUs."""
    return next((peak for name, peak in PEAK_TFLOPS.items() if name in device), None)


def format_table(measured: list[dict[str, Any]], device: str, gflop_per_image: float) -> str:
    peak = peak_tflops(device)
    peaks = (
        f"peak {peak[0]:.0f} TFLOP/s fp32, {peak[1]:.0f} bf16 (dense)"
        if peak
        else "no peak figures known for this device"
    )
    lines = [
        f"device: {device}; {gflop_per_image:.3f} GFLOP per training image; {peaks}",
        "",
        "| run | flags | trials | wall s | trials/h | train images/s per trial | training TFLOP/s | "
        "of fp32 / bf16 peak | ok |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for m in measured:
        rate = "—" if m["images_per_s"] is None else f"{m['images_per_s']:.0f}"
        tflops = m["train_images"] * gflop_per_image / max(m["wall_s"], 1e-9) / 1e3
        share = f"{tflops / peak[0]:.1%} / {tflops / peak[1]:.1%}" if peak else "—"
        lines.append(
            f"| {m['row']} | `{m['flags']}` | {m['trials']} | {m['wall_s']:.1f} | {m['trials_per_h']:.0f} | "
            f"{rate} | {tflops:.3f} | {share} | "
            f"{'yes' if m['ok'] else 'NO: ' + '; '.join(m['problems'])} |"
        )
    return "\n".join(lines)


def device_name(accelerator: str) -> tuple[int, str]:
    """How many GPUs the sweeps will use, and what they are (or the CPU)."""
    import torch

    gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
    if gpus:
        return gpus, f"{gpus} x {torch.cuda.get_device_name(0)}"
    return 0, f"{machine()['cpu']} ({machine()['cores']} cores), no GPU used"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpucheck.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="real CIFAR-10; default: synthetic data of its size")
    parser.add_argument("--accelerator", default="auto", help="passed to every sweep (default: auto)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help=f"{len(TINY_SPECS)} specs, 1 epoch, {TINY_SIZES[0]} synthetic training images: checks the command runs",
    )
    args = parser.parse_args(argv)
    gpus, device = device_name(args.accelerator)
    if not gpus and not args.tiny:
        parser.exit(2, f"{parser.prog}: error: no GPU here ({device}): nothing to measure; --tiny checks the script\n")
    with tempfile.TemporaryDirectory(prefix="lit-cifar-gpucheck-") as scratch:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = synthetic_data_dir(Path(scratch) / "data", *(TINY_SIZES if args.tiny else CIFAR_SIZES))
        common = ["--data-dir", str(data_dir), "--seeds", "0", "--accelerator", args.accelerator]
        common += ["--epochs", "1", "--val-size", "100", "--batch-size", "64"] if args.tiny else []
        measured = []
        for index, row in enumerate(rows(gpus, args.tiny)):
            print(f"{row.name}: python -m ablations.run {' '.join(row.flags)}", file=sys.stderr)
            measured.append(run_row(row, common, Path(scratch) / f"logs{index}"))
    print(format_table(measured, device, flops_per_image() / 1e9))
    return 0 if all(m["ok"] for m in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
