"""Run one trial: train a spec with one seed, test it once, and leave ``result.json`` or ``error.json``.

A trial's directory ``<logdir>/<suite>/<spec>/seed=<s>/`` holds its TensorBoard events (scalars per epoch, the
regularized layers' weight histograms, one training image per class, and an HParams entry with the real final
metrics) and, written atomically at the end, either ``result.json`` or ``error.json``. A ``.lock`` file, held with
``flock`` while the trial runs, keeps two sweeps on one logdir from running the same trial at once; the kernel
releases it when its holder dies.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning
import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.fabric.utilities.logger import _flatten_dict, _sanitize_params
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams as hparams_summary

from ablations.suite import Trial
from lit_cifar import CIFAR10DataModule, RegularizedClassifier

try:
    LIBC: Optional[ctypes.CDLL] = ctypes.CDLL("libc.so.6")  # glibc, for malloc_trim
except OSError:  # not glibc (macOS, musl): nothing to trim
    LIBC = None
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
LOCK_FILE = ".lock"
HPARAM_METRICS = ("val/acc", "test/acc", "test/loss")  # the metrics TensorBoard's HParams tab lists per trial


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial stops, with the epoch in the message."""


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def read_result(run_dir: Path) -> Optional[dict[str, Any]]:
    """The trial's result.json, or None if it is absent. A truncated or unreadable one raises ValueError."""
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or "settings_hash" not in result or "metrics" not in result:
            raise ValueError("missing settings_hash or metrics")
        return result
    except (OSError, ValueError) as error:
        raise ValueError(f"unreadable {path}: {error}") from None


def is_finished(trial: Trial, logdir: Path) -> bool:
    """True if the trial has a readable result.json for exactly its settings. An unreadable (e.g. truncated)
    one is reported on stderr and counts as not finished, so the trial is rerun rather than silently counted."""
    try:
        result = read_result(trial.run_dir(logdir))
    except ValueError as error:
        print(f"warning: {error}; rerunning {trial.name}", file=sys.stderr)
        return False
    return result is not None and result["settings_hash"] == trial.settings_hash


@contextmanager
def folder_lock(folder: Path, wait: bool = False) -> Iterator[bool]:
    """Hold `folder`'s lock (a trial's, or a suite's while its report is written) while the block runs. If
    another process holds it, wait for it (``wait``) or yield False at once, holding nothing. The lock is an
    ``flock`` on ``folder/.lock``: the kernel releases it when its holder dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TrialLogger(TensorBoardLogger):
    """TensorBoard logger that writes the HParams entry once, at the end, with the trial's real final metrics.

    Lightning calls `log_hyperparams` when fitting starts, before any metric exists; the parameters are kept until
    `log_final_hparams`, so the HParams tab shows real ``val/acc``, ``test/acc`` and ``test/loss`` rather than
    Lightning's ``hp_metric`` placeholder. Their values are read from the scalars of the same names.
    """

    def __init__(self, save_dir: Path) -> None:
        super().__init__(save_dir=str(save_dir), name="", version="", default_hp_metric=False)
        self._pending: dict[str, Any] = {}

    def log_hyperparams(self, params: Any, metrics: Optional[dict[str, Any]] = None) -> None:
        self._pending.update(_flatten_dict(dict(params)))

    def log_final_hparams(self, params: dict[str, Any]) -> None:
        self._pending.update(_flatten_dict(params))
        values = _sanitize_params(dict(self._pending))
        values = {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}
        writer = self.experiment._get_file_writer()
        for summary in hparams_summary(values, {name: 0.0 for name in HPARAM_METRICS}):
            writer.add_summary(summary)
        self.hparams.update(values)
        self.finalize("success")  # flush and close the event file (the test pass had reopened it), hparams.yaml


@torch.no_grad()
def log_weight_histogram(writer: Any, tag: str, weight: torch.Tensor, step: int, bins: int = 64) -> None:
    """A TensorBoard histogram of `weight` computed with torch ops on its device.

    ``SummaryWriter.add_histogram`` converts a weight to float64 numpy first: for the 22M-entry hidden layer that
    alone is 177 MB, several times over; this keeps a trial's peak memory down.
    """
    values = weight.detach().float().flatten()
    low, high = float(values.min()), float(values.max())
    counts = torch.histc(values, bins=bins, min=low, max=high if high > low else low + 1e-12)
    limits = torch.linspace(low, high, bins + 1)[1:]
    writer.add_histogram_raw(tag, min=low, max=high, num=values.numel(), sum=float(values.sum()),
                             sum_squares=float(torch.dot(values, values)), bucket_limits=limits.tolist(),
                             bucket_counts=counts.tolist(), global_step=step)


class TrialMonitor(pl.Callback):
    """Per-epoch history, NaN/inf loss check, training throughput, and the TensorBoard extras of a trial."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_images = 0
        self._epoch_start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            from torchvision.utils import make_grid

            first_of_class = [int((dm.train_labels == c).nonzero()[0]) for c in range(len(dm.classes))
                              if (dm.train_labels == c).any()]
            grid = make_grid(dm.train_images[first_of_class], nrow=5, padding=2)
            trainer.logger.experiment.add_image("data/one_training_image_per_class", grid, 0)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.train_images += len(batch[1])

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.training:  # validation inside fit: the training part of the epoch ends here
            self.train_seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._epoch_start is not None:  # no validation ran this epoch
            self.train_seconds += time.perf_counter() - self._epoch_start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        loss = metrics.get("train/loss", 0.0)
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"train/loss became {loss} in epoch {trainer.current_epoch}: the trial "
                                     "diverged (too strong a penalty or learning rate?)")
        self.history.append({"epoch": trainer.current_epoch, **metrics})
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            regularized = {id(layer) for layer in getattr(module, "regularized", [])}
            for name, layer in module.named_modules():
                if id(layer) in regularized:
                    log_weight_histogram(trainer.logger.experiment, f"weights/{name}", layer.weight,
                                         trainer.current_epoch)


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
    logger = TrialLogger(run_dir)
    monitor = TrialMonitor()
    if options.compile:
        model.backbone = torch.compile(model.backbone)
    trainer = pl.Trainer(max_epochs=s.epochs, precision=s.precision, accelerator=options.accelerator,
                         devices=options.devices, strategy=options.strategy, num_nodes=options.num_nodes,
                         sync_batchnorm=options.strategy != "auto" and torch.cuda.is_available()
                         and options.accelerator in ("auto", "gpu", "cuda"),
                         logger=logger, callbacks=[monitor],
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         enable_progress_bar=options.progress_bar, use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    tested = trainer.test(model, datamodule=dm, verbose=False)[0]
    wall = time.perf_counter() - start
    metrics = {**monitor.history[-1], **{k: float(v) for k, v in tested.items()}}
    metrics.pop("epoch", None)
    if trainer.is_global_zero:
        settings = trial.hashed_settings()
        logger.log_final_hparams({"spec_name": settings.pop("spec"), **settings})
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
