"""Run one trial: train a spec with one seed, test it once, and leave ``result.json`` or ``error.json``.

A trial's folder ``<logdir>/<suite>/<cell>/seed=<s>/`` (`ablations.store.TrialPaths` names its files) holds its
TensorBoard events (scalars per epoch, the regularized layers' weight histograms and an HParams entry with the real
final metrics; the suite's sample images are logged once, under ``<suite>/_samples``) and, written atomically at the
end, either ``result.json`` or ``error.json``. A ``.lock`` file, held with ``flock`` while the trial runs, keeps two
sweeps on one logdir from running the same trial at once; the kernel releases it when its holder dies.

Under DDP every process of a trial runs this module: global rank 0 decides (finished? locked elsewhere?), takes the
lock and writes the files, and broadcasts its decision, so all ranks train the same trial or none (`Ranks`).
"""

from __future__ import annotations

import gc
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import torchmetrics

from ablations import custom
from ablations.monitor import TrialLogger, TrialMonitor
from ablations.quiet import quiet_lightning
from ablations.signals import raise_if_interrupted
from ablations.status import TrialState, TrialStatus, OtherSettings, claim, record_failure, refusal
from ablations.store import UnsafePath
from ablations.trust import quiet_full_disk_in_threads
from ablations.store import TrialPaths, code_provenance, write_result
from ablations.suite import RunOptions, TrainSettings, Trial
from lit_cifar import CIFAR10DataModule, tune_allocator
from lit_cifar.module import STAGES
from lit_cifar.runtime import cpu_model, trim_heap

__all__ = ["Ranks", "environment", "run_trial", "trainer_kwargs"]


def _unchanged(decision: Any) -> Any:
    return decision


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes that train each trial together (DDP), as `run_trial` needs it.

    ``broadcast(decision)`` returns global rank 0's `decision` on every rank (other ranks pass None). One process,
    the default, is rank 0 and broadcasts to nobody.
    """

    rank: int = 0
    broadcast: Callable[[Any], Any] = _unchanged


class StopWhenInterrupted(pl.Callback):
    """Stops a trial at its next batch once SIGTERM or SIGINT arrived (`ablations.signals.interrupts`), in case the
    signal handler's own exception was swallowed."""

    def on_train_batch_start(self, *args: Any) -> None:
        raise_if_interrupted()

    def on_validation_batch_start(self, *args: Any) -> None:
        raise_if_interrupted()

    def on_test_batch_start(self, *args: Any) -> None:
        raise_if_interrupted()


def stop_if_interrupted(trainer: pl.Trainer) -> None:
    """Raise KeyboardInterrupt if Lightning stopped the run early (it turns a KeyboardInterrupt, e.g. a Ray task's
    cancellation, into a graceful return): a stopped trial must not go on to test and write a result."""
    raise_if_interrupted()
    if trainer.interrupted:
        raise KeyboardInterrupt("the trial was interrupted")


def trainer_kwargs(options: RunOptions, settings: TrainSettings) -> dict[str, Any]:
    """The keyword arguments of a sweep's ``Trainer`` for these options and settings; add ``logger`` and
    ``callbacks`` (one of each per trial).

    No checkpoints, model summary or sanity validation; metrics are logged once per epoch (``log_every_n_steps=0``:
    the module logs nothing per step); the data module shards batches itself (``use_distributed_sampler=False``);
    SyncBatchNorm under GPU DDP.
    """
    on_gpu = options.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    gpu_ddp = options.strategy != "auto" and on_gpu
    return {
        "max_epochs": settings.epochs,
        "precision": settings.precision,
        "accelerator": options.accelerator,
        "devices": options.devices,
        "strategy": options.strategy,
        "num_nodes": options.num_nodes,
        "sync_batchnorm": gpu_ddp,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 0,
        "enable_progress_bar": options.progress_bar,
        "use_distributed_sampler": False,
    }


def release_memory() -> None:
    """Free what finished work left behind and hand it back to the OS.

    Trainer and module reference each other: without a collection, every finished trial's model, gradients and Adam
    state would stay until Python's gc happened to run. And glibc keeps freed heap memory (e.g. after reading the
    dataset file by file) unless asked to trim it (docs/performance.md, Memory).
    """
    gc.collect()
    trim_heap()


def environment() -> dict[str, Any]:
    """Where and with which code a result was made: device, torch threads, library versions, lit-cifar's version
    and git commit (`ablations.store.code_provenance`)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model()
    return {
        "device": device,
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
    s = trial.settings
    pl.seed_everything(trial.seed, workers=True, verbose=False)
    dm = custom.make_datamodule(trial, options.data_dir, options.download)
    dm.prepare_data()
    sizes = dm.verify() if isinstance(dm, CIFAR10DataModule) else None
    dm.setup("fit")  # load before the model exists, so the memory reading freed is handed back first
    release_memory()
    model = custom.make_model(trial, custom.class_count(dm) or 10, compile=options.compile)
    custom.give_statistics(model, dm)
    logger = TrialLogger(paths.folder, trial)
    monitor = TrialMonitor(Path(options.logdir) / trial.suite)
    trainer = pl.Trainer(
        **trainer_kwargs(options, s),
        **trial.trainer,  # the suite's Trainer arguments (`ablations.custom.read_class` checked them)
        logger=[logger, *custom.loggers(trial, options)],
        callbacks=[*monitor.callbacks, StopWhenInterrupted()],
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
    return {
        "metrics": metrics,
        "history": monitor.history,
        "wall_time_s": wall,
        "train_images_per_s": monitor.train_images * trainer.world_size / max(monitor.train_seconds, 1e-9),
        **_sizes(sizes, dm),
        "world_size": trainer.world_size,
        "precision_ran": str(trainer.precision),
    }


def _sizes(sizes: Any, dm: Any) -> dict[str, Any]:
    """Images per split, from `CIFAR10DataModule.verify` or, for another data module, its dataloaders' lengths
    where they have one."""
    if sizes is None:
        sizes = {}
        for split in STAGES:
            try:
                sizes[split] = len(getattr(dm, f"{split}_dataloader")().dataset)
            except Exception:  # noqa: BLE001 - a loader without a sized dataset: the count is unknown
                sizes[split] = None
    return {"train_images": sizes["train"], "val_images": sizes["val"], "test_images": sizes["test"]}


def _train_and_record(trial: Trial, options: RunOptions, paths: TrialPaths) -> TrialStatus:
    """Train the trial (its lock held, its folder made ready by `claim`) and write result.json, or error.json if
    it raised."""
    record = {**trial.record(), "environment": environment()}
    try:
        write_result(paths.result, {**record, **_train_and_test(trial, options, paths)})
        return TrialStatus(trial.name, TrialState.DONE)
    except Exception as error:  # isolate the failure: record it, let the sweep go on
        paths.drop_empty_outputs()
        return record_failure(
            trial,
            options.logdir,
            f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(),
            record=record,
            held=True,
        )
    finally:
        release_memory()


def _follow(trial: Trial, options: RunOptions, ranks: Ranks) -> TrialStatus:
    """A rank other than 0: train when rank 0 says so; rank 0 records the outcome."""
    state = TrialState(ranks.broadcast(None))
    if state is not TrialState.RUN:
        return TrialStatus(trial.name, state)
    try:
        _train_and_test(trial, options, trial.paths(options.logdir))
        return TrialStatus(trial.name, TrialState.DONE)
    except Exception as error:
        return TrialStatus(trial.name, TrialState.FAILED, f"{type(error).__name__}: {error}")
    finally:
        release_memory()


def run_trial(trial: Trial, options: RunOptions, wait: bool = False, ranks: Ranks = Ranks()) -> TrialStatus:
    """Train and test one trial unless it is finished or running elsewhere; never raises for a failing trial.

    Returns its `TrialStatus` (DONE, SKIPPED, BUSY or FAILED with the reason): BUSY when another process holds
    the trial's lock and not ``wait``; with ``wait`` it waits for that process, then skips the trial if it finished
    or runs it if its holder died (`ablations.status.claim` decides); FAILED, with nothing written, when `claim`
    refuses it (a result of other settings without ``--force``, a symlinked folder). Under DDP (`ranks`), rank 0
    decides, locks and writes, and every rank follows its decision.
    """
    quiet_full_disk_in_threads()
    quiet_lightning()  # Lightning's import set its logger back to INFO: the sweep prints its own progress
    if ranks.rank != 0:
        return _follow(trial, options, ranks)
    try:
        with claim(trial, options, wait) as state:
            ranks.broadcast(state.value)
            if state is not TrialState.RUN:
                return TrialStatus(trial.name, state)
            return _train_and_record(trial, options, trial.paths(options.logdir))
    except (OtherSettings, UnsafePath) as error:  # refused by `claim`: nothing trained, nothing written
        ranks.broadcast(TrialState.FAILED.value)
        return refusal(trial, error)
