"""Run one trial: train a spec with one seed, test it once, and leave ``result.json`` or ``error.json`` in its folder.
Under DDP every rank runs `run_trial`; rank 0 decides (`ablations.status.claim`), holds the lock, writes the files and
broadcasts its decision, so all ranks train the same trial or none (`Ranks`).
"""

from __future__ import annotations

import gc
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning
import lightning.pytorch as pl
import torch
import torchmetrics

from ablations import custom
from ablations.monitor import TrialLogger, TrialMonitor
from ablations.signals import quiet_lightning, raise_if_interrupted
from ablations.status import OtherSettings, TrialState, TrialStatus, claim, quiet_full_disk_in_threads, record_failure
from ablations.store import TrialPaths, UnsafePath, code_provenance, write_result
from ablations.suite import RunOptions, TrainSettings, Trial
from lit_cifar import CIFAR10DataModule, tune_allocator
from lit_cifar.module import STAGES
from lit_cifar.runtime import cpu_model, trim_heap


@dataclass(frozen=True)
class Ranks:
    """This process's place among a trial's DDP processes; ``broadcast`` hands rank 0's decision to all."""

    rank: int = 0
    broadcast: Callable[[Any], Any] = lambda decision: decision


def stop_if_interrupted(trainer: pl.Trainer) -> None:
    """Raise if Lightning stopped the run early (it swallows a KeyboardInterrupt, e.g. Ray's cancellation)."""
    raise_if_interrupted()
    if trainer.interrupted:
        raise KeyboardInterrupt("the trial was interrupted")


def trainer_kwargs(options: RunOptions, settings: TrainSettings) -> dict[str, Any]:
    """The arguments of every sweep ``Trainer`` (no checkpoints, summary or sanity check) but logger and callbacks."""
    on_gpu = options.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return {
        "max_epochs": settings.epochs,
        "precision": settings.precision,
        "accelerator": options.accelerator,
        "devices": options.devices,
        "strategy": options.strategy,
        "num_nodes": options.num_nodes,
        "sync_batchnorm": options.strategy != "auto" and on_gpu,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 0,
        "enable_progress_bar": options.progress_bar,
        "use_distributed_sampler": False,
    }


def release_memory() -> None:
    """Collect finished work (Trainer and module reference each other) and trim the heap (docs/performance.md)."""
    gc.collect()
    trim_heap()


def environment() -> dict[str, Any]:
    """Where and with which code a result was made (device, threads, versions, `code_provenance`)."""
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "allocator": tune_allocator(),
        **code_provenance(),
    }


def _train_and_test(trial: Trial, options: RunOptions, paths: TrialPaths) -> dict[str, Any]:
    start = time.perf_counter()
    tune_allocator()  # before the data and model exist: their big blocks come from the heap as well
    pl.seed_everything(trial.seed, workers=True, verbose=False)
    dm = custom.make_datamodule(trial, options.data_dir, options.download)
    dm.prepare_data()
    sizes: dict[str, Optional[int]] = {**dm.verify()} if isinstance(dm, CIFAR10DataModule) else {}
    dm.setup("fit")  # load before the model exists, so the memory reading freed is handed back first
    release_memory()
    model = custom.make_model(trial, dm, compile=options.compile)
    logger = TrialLogger(paths.folder, trial)
    monitor = TrialMonitor(Path(options.logdir) / trial.suite)
    trainer = pl.Trainer(
        **trainer_kwargs(options, trial.settings),
        **trial.trainer,  # the suite's Trainer arguments (`ablations.custom.read_class` checked them)
        logger=[logger, *custom.loggers(trial, options)],
        callbacks=[monitor],
    )
    trainer.fit(model, datamodule=dm)
    stop_if_interrupted(trainer)
    model.zero_grad(set_to_none=True)  # testing needs no gradients: they go back before the test split loads
    release_memory()
    tested = trainer.test(model, datamodule=dm, verbose=False)[0]
    stop_if_interrupted(trainer)
    if options.save_model:
        custom.save_model(trainer, paths)
    wall = time.perf_counter() - start
    metrics = {**monitor.history[-1], **{k: float(v) for k, v in tested.items()}}
    metrics.pop("epoch", None)
    if trainer.is_global_zero:
        logger.log_trial(metrics, monitor.history)
    for split in STAGES:  # a data module of your own: its loaders' lengths, where they have one
        if split not in sizes:
            try:
                sizes[split] = len(getattr(dm, f"{split}_dataloader")().dataset)
            except Exception:  # noqa: BLE001 - a loader without a sized dataset: the count is unknown
                sizes[split] = None
    return {
        "metrics": metrics,
        "history": monitor.history,
        "wall_time_s": wall,
        "train_images_per_s": monitor.images * trainer.world_size / max(monitor.seconds, 1e-9),
        **{f"{split}_images": sizes[split] for split in ("train", "val", "test")},
        "world_size": trainer.world_size,
        "precision_ran": str(trainer.precision),
    }


def _train(trial: Trial, options: RunOptions, record: Optional[dict[str, Any]]) -> TrialStatus:
    """Train and test the trial; with its `record` (rank 0, holding the lock) write result.json, or error.json."""
    paths = trial.paths(options.logdir)
    try:
        trained = _train_and_test(trial, options, paths)
        if record is not None:
            write_result(paths.result, {**record, **trained})
        return TrialStatus(trial.name, TrialState.DONE)
    except Exception as error:  # isolate the failure: record it, let the sweep go on
        reason = f"{type(error).__name__}: {error}"
        if record is None:
            return TrialStatus(trial.name, TrialState.FAILED, reason)
        paths.clear(empty_only=True)
        return record_failure(trial, options.logdir, reason, traceback=traceback.format_exc(), record=record, held=True)
    finally:
        release_memory()


def run_trial(trial: Trial, options: RunOptions, wait: bool = False, ranks: Ranks = Ranks()) -> TrialStatus:
    """Train and test one trial unless it is finished (SKIPPED) or running elsewhere (BUSY unless `wait`): DONE, or
    FAILED with error.json (nothing written when `claim` refused it); never raises for a failing trial."""
    quiet_full_disk_in_threads()
    quiet_lightning()  # Lightning's import set its logger back to INFO: the sweep prints its own progress
    if ranks.rank != 0:  # train when rank 0 says so; rank 0 records the outcome
        state = TrialState(ranks.broadcast(None))
        return _train(trial, options, None) if state is TrialState.RUN else TrialStatus(trial.name, state)
    try:
        with claim(trial, options, wait) as state:
            ranks.broadcast(state.value)
            if state is not TrialState.RUN:
                return TrialStatus(trial.name, state)
            return _train(trial, options, {**trial.record(), "environment": environment()})
    except (OtherSettings, UnsafePath) as error:  # refused by `claim`: nothing trained, nothing written
        ranks.broadcast(TrialState.FAILED.value)
        return TrialStatus(trial.name, TrialState.FAILED, str(error))
