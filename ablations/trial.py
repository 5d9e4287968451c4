"""Run one trial: train a spec with one seed, test it once, and leave ``result.json`` or ``error.json``.

A trial's directory ``<logdir>/<suite>/<spec>/seed=<s>/`` holds its TensorBoard events (scalars per epoch, the
regularized layers' weight histograms, one training image per class, and an HParams entry with the real final
metrics) and, written atomically at the end, either ``result.json`` or ``error.json``. A ``.lock`` file, held with
``flock`` while the trial runs, keeps two sweeps on one logdir from running the same trial at once; the kernel
releases it when its holder dies.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning
import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_only

from ablations.monitor import TrialLogger, TrialMonitor
from ablations.store import ERROR_FILE, LOCK_FILE, RESULT_FILE, folder_lock, read_result, write_json_atomic
from ablations.suite import Trial
from lit_cifar import CIFAR10DataModule, RegularizedClassifier

try:
    LIBC: Optional[ctypes.CDLL] = ctypes.CDLL("libc.so.6")  # glibc, for malloc_trim
except OSError:  # not glibc (macOS, musl): nothing to trim
    LIBC = None


@dataclass(frozen=True)
class RunOptions:
    """How and where trials run; none of it changes a trial's numbers except through ``Trial.data_parallel``."""

    data_dir: Optional[str] = None
    logdir: str = "logs"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    progress_bar: bool = False
    force: bool = False
    download: bool = True
    compile: bool = False  # torch.compile the backbone (same math, different kernels)


def is_finished(trial: Trial, logdir: Path) -> bool:
    """True if the trial has a readable result.json for exactly its settings. An unreadable (e.g. truncated)
    one is reported on stderr and counts as not finished, so the trial is rerun rather than silently counted."""
    try:
        result = read_result(trial.run_dir(logdir))
    except ValueError as error:
        print(f"warning: {error}; rerunning {trial.name}", file=sys.stderr)
        return False
    return result is not None and result["settings_hash"] == trial.settings_hash


def release_memory() -> None:
    """Free what finished work left behind and hand it back to the OS.

    Trainer and module reference each other: without a collection, every finished trial's model, gradients and Adam
    state (~0.3 GB) would stay until Python's gc happened to run. And glibc keeps freed heap memory (here ~0.1 GB
    after reading the dataset file by file) unless asked to trim it.
    """
    gc.collect()
    if LIBC is not None:
        LIBC.malloc_trim(0)


def environment() -> dict[str, Any]:
    """Device and library versions, recorded in every result."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else (platform.processor() or "cpu")
    return {"device": device, "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__}


def _train_and_test(trial: Trial, options: RunOptions, run_dir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    s = trial.settings
    pl.seed_everything(trial.seed, workers=True, verbose=False)
    dm = CIFAR10DataModule.from_spec(trial.spec, data_dir=options.data_dir, val_size=s.val_size,
                                     split_seed=s.split_seed, batch_size=s.batch_size, limit_train=s.limit_train,
                                     download=options.download, seed=trial.seed)
    dm.prepare_data()
    dm.setup("fit")  # load before the model exists, so the memory reading freed is handed back first
    release_memory()
    model = RegularizedClassifier(trial.spec, lr=s.lr, lr_decay=s.lr_decay)
    logger = TrialLogger(run_dir, trial)
    monitor = TrialMonitor(Path(options.logdir) / trial.suite)
    if options.compile:
        model.backbone = torch.compile(model.backbone)
    trainer = pl.Trainer(max_epochs=s.epochs, precision=s.precision, accelerator=options.accelerator,
                         devices=options.devices, strategy=options.strategy, num_nodes=options.num_nodes,
                         sync_batchnorm=options.strategy != "auto" and torch.cuda.is_available()
                         and options.accelerator in ("auto", "gpu", "cuda"),
                         logger=logger, callbacks=monitor.callbacks,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         enable_progress_bar=options.progress_bar, use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    tested = trainer.test(model, datamodule=dm, verbose=False)[0]
    wall = time.perf_counter() - start
    metrics = {**monitor.history[-1], **{k: float(v) for k, v in tested.items()}}
    metrics.pop("epoch", None)
    if trainer.is_global_zero:
        logger.log_trial()
    return {"metrics": metrics, "history": monitor.history, "wall_time_s": wall,
            "train_images_per_s": monitor.train_images * trainer.world_size / max(monitor.train_seconds, 1e-9),
            "train_images": len(dm.train_labels), "val_images": len(dm.val_labels),
            "test_images": len(dm.test_labels), "world_size": trainer.world_size}


def _clear(run_dir: Path) -> None:
    """Remove what a previous, partial or outdated run of this trial left, except the lock."""
    for entry in run_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name != LOCK_FILE:
            entry.unlink()


def run_trial(trial: Trial, options: RunOptions, wait: bool = False) -> dict[str, Any]:
    """Train and test one trial unless it is finished or running elsewhere; never raises for a failing trial.

    Returns ``{"trial": name, "status": "done" | "skipped" | "busy" | "failed", "error": reason or None}``:
    ``busy`` when another process holds the trial's lock and not ``wait``; with ``wait`` it waits for that
    process, then skips the trial if it finished or runs it if its holder died.
    Under DDP, processes other than global rank 0 only train: rank 0 decides, locks and writes.
    """
    logdir = Path(options.logdir)
    run_dir = trial.run_dir(logdir)
    status = {"trial": trial.name, "status": "skipped", "error": None}
    if rank_zero_only.rank != 0:
        _train_and_test(trial, options, run_dir)
        release_memory()
        return {**status, "status": "done"}
    if not options.force and is_finished(trial, logdir):
        return status
    with folder_lock(run_dir, wait) as locked:
        if not locked:
            return {**status, "status": "busy"}
        if not options.force and is_finished(trial, logdir):  # finished by another sweep meanwhile
            return status
        _clear(run_dir)
        record = {"suite": trial.suite, "spec": str(trial.spec), "spec_fields": trial.spec.to_dict(),
                  "seed": trial.seed, "order": trial.order, "notebook": trial.notebook,
                  "settings": trial.hashed_settings(), "settings_hash": trial.settings_hash,
                  "environment": environment()}
        try:
            outcome = _train_and_test(trial, options, run_dir)
        except Exception as error:  # isolate the failure: record it, let the sweep go on
            reason = f"{type(error).__name__}: {error}"
            write_json_atomic(run_dir / ERROR_FILE, {**record, "error": reason,
                                                     "traceback": traceback.format_exc()})
            return {**status, "status": "failed", "error": reason}
        finally:
            release_memory()
        write_json_atomic(run_dir / RESULT_FILE, {**record, **outcome})
        return {**status, "status": "done"}
