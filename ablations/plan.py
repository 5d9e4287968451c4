"""The plan of a sweep: which trials of a suite run, with which settings, where and how; made from plain values.

A `Request` holds what a sweep asks for, one field per flag of ``python -m ablations.run`` (same names, None for a
flag not given); `make_plan` turns it into a `Plan` (the trials after ``only`` and ``shard``, the run options, the
device placement), and `check_hardware` and `check_inputs` refuse, before any trial folder exists,
what this machine or the data cannot honour. Every problem is a ValueError naming the flag; the command line turns
it into exit status 2.

torch is imported only once the suite, the specs and the settings are known to be valid (by the device placement),
so a mistyped flag fails in a fraction of a second.

    from ablations.plan import Request, make_plan
    plan = make_plan(Request(suite="notebook", only=["pixel"], seeds=[0, 1], epochs=1, accelerator="cpu"))
    [t.name for t in plan.trials]  # ['pixel/seed=0', 'pixel/seed=1']
"""

from __future__ import annotations

import errno
import importlib.util
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

from ablations import custom
from ablations.identity import ClassRef
from ablations.suite import RunOptions, Suite, TrainSettings, Trial, expand_trials, load_suite, shard
from ablations.status import check_precision, refuse_other_settings
from lit_cifar.layouts import DATA_ENV
from lit_cifar.spec import RegularizationSpec

__all__ = [
    "Plan",
    "Request",
    "check_hardware",
    "check_inputs",
    "check_paths",
    "count_trials",
    "make_plan",
    "prepare",
    "probe_writable",
]


SETTING_FLAGS = (
    "epochs",
    "batch_size",
    "seeds",
    "val_size",
    "split_seed",
    "limit_train",
    "lr",
    "lr_decay",
    "precision",
)  # the Request fields that override the suite's `TrainSettings`

ClassValue = Union[str, Mapping[str, Any], None]  # a class path, JSON text or {"class_path": ..., "init_args": ...}


@dataclass(frozen=True)
class Request:
    """What a sweep asks for, as values: the fields of ``python -m ablations.run``'s flags, under the same names
    (``--batch-size`` is `batch_size`). None leaves the suite's value, or the default the flag's help names.

    Attributes:
        suite: a shipped suite's name or a suite file's path.
        only: run just these specs or cells of the suite.
        shard: ``(k, n)``: the k-th (1-based) of n disjoint parts of the trials.
        reference: the spec the report compares every other with (None: pixel, else the first).
        force: rerun trials that already have a matching result.
        epochs, batch_size, seeds, val_size, split_seed, limit_train, lr, lr_decay, precision: the training
            settings that override the suite's (`ablations.suite.TrainSettings`).
        model, data, optimizer: override the suite's (`ablations.custom`): a class path, JSON text or a mapping.
        save_model: keep each trial's final checkpoint.
        logger: extra Lightning loggers (``csv``, ``mlflow``, ``wandb``).
        data_dir, logdir: where the data is and where the trials' folders go.
        accelerator, devices, parallel, strategy, compile, num_nodes: the device flags (``devices`` is an int or
            ``"auto"``; ``parallel`` None for one trial per GPU, 1 on CPU).
        engine, ray_address, max_retries: ``local`` or ``ray``, its cluster and its reruns of a lost trial.
        dry_run: check everything a run checks before training, without Lightning, a download or a GPU count.
    """

    suite: str = "notebook"
    only: Optional[Sequence[str]] = None
    shard: Optional[tuple[int, int]] = None
    reference: Optional[str] = None
    margin: Optional[float] = None  # the report's equivalence margin (None: its default)
    force: bool = False
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    seeds: Optional[Sequence[int]] = None
    val_size: Optional[int] = None
    split_seed: Optional[int] = None
    limit_train: Optional[int] = None
    lr: Optional[float] = None
    lr_decay: Optional[float] = None
    precision: Optional[str] = None
    model: ClassValue = None
    data: ClassValue = None
    optimizer: ClassValue = None
    save_model: bool = False
    logger: Optional[Sequence[str]] = None
    data_dir: Optional[str] = None
    logdir: str = "logs"
    accelerator: str = "auto"
    devices: Union[int, str, None] = None
    parallel: Optional[int] = None
    strategy: Optional[str] = None
    compile: bool = False
    num_nodes: int = 1
    engine: str = "local"
    ray_address: Optional[str] = None
    max_retries: int = 2
    dry_run: bool = False


@dataclass(frozen=True)
class Plan:
    """What a request comes to: the suite, the trials (after ``only``/``shard``), how and where they run."""

    suite: Suite
    trials: list[Trial]
    options: RunOptions
    parallel: int  # trials at once on this machine (1 under DDP: a trial uses every device)
    gpus: int  # GPUs the trials are spread over (0 on CPU)
    unsharded: int  # trials before --shard
    reference: Optional[str] = None  # the report's reference spec (canonical name), None for its default
    engine: str = "local"  # local or ray
    ray_address: Optional[str] = None  # the Ray cluster (None: a local Ray)
    max_retries: int = 2  # Ray's reruns of a trial whose worker or node died
    margin: Optional[float] = None  # the report's equivalence margin (None: its default, `rules.MARGIN`)


# ------------------------------------------------------------------------------------------------ trials
def _suite_trials(request: Request) -> tuple[Suite, TrainSettings, RunOptions]:
    """The suite and its settings with the request's overrides, and the output options; checks ``only`` and
    ``reference`` (ValueError), all without torch."""
    suite = load_suite(request.suite)
    settings = suite.settings.override(**{name: getattr(request, name) for name in SETTING_FLAGS})
    suite, settings, outputs = custom.apply_arguments(suite, settings, request)  # model, data, optimizer, outputs
    expand_trials(suite, settings, only=_only(request))
    return suite, settings, outputs


def _only(request: Request) -> Optional[list[str]]:
    return list(request.only) if request.only else None


def count_trials(request: Request) -> int:
    """How many trials the request runs (after ``only`` and ``shard``), without importing torch; ValueError as
    `make_plan` for a bad suite, spec or setting."""
    suite, settings, _ = _suite_trials(request)
    trials = expand_trials(suite, settings, only=_only(request))
    return len(shard(trials, *request.shard) if request.shard else trials)


def make_plan(request: Request) -> Plan:
    """The plan of `request`; raises ValueError (SuiteError) on a bad suite, spec, setting or device
    combination. torch is imported only after the suite and its specs are checked."""
    suite, settings, outputs = _suite_trials(request)  # a bad --only fails before torch is imported
    reference = expand_trials(suite, settings, only=[request.reference])[0].cell if request.reference else None
    devices, gpus, parallel = _placement(request)  # the first step that imports torch
    trials = expand_trials(suite, settings, only=_only(request), data_parallel=devices * request.num_nodes)
    unsharded = len(trials)
    trials = shard(trials, *request.shard) if request.shard else trials
    options = RunOptions(
        data_dir=request.data_dir,
        logdir=request.logdir,
        accelerator=request.accelerator,
        devices=devices,
        strategy=request.strategy or "auto",
        num_nodes=request.num_nodes,
        force=request.force,
        compile=request.compile,
        save_model=outputs.save_model,
        loggers=outputs.loggers,
    )
    return Plan(
        suite,
        trials,
        options,
        parallel,
        gpus,
        unsharded,
        reference,
        request.engine,
        request.ray_address,
        request.max_retries,
        request.margin,
    )


def _gpu_count(accelerator: str) -> int:
    import torch

    return torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0


def _placement(request: Request) -> tuple[int, int, int]:
    """(devices per trial, GPUs the trials are spread over, trials at once) for the device values; ValueError for
    combinations that cannot work."""
    devices, parallel, strategy = request.devices, request.parallel, request.strategy
    if strategy and parallel not in (None, 1):
        raise ValueError(
            f"--parallel {parallel} with --strategy {strategy}: a data-parallel trial uses "
            "all --devices, so trials run one at a time; drop --parallel or --strategy"
        )
    if not strategy and request.num_nodes > 1:
        raise ValueError(f"--num-nodes {request.num_nodes} needs --strategy ddp: it spreads one trial over nodes")
    if request.dry_run and (not strategy or isinstance(devices, int)):
        return (devices if strategy and isinstance(devices, int) else 1), 0, 1  # a dry run counts no GPUs
    gpus = _gpu_count(request.accelerator)  # the first step that imports torch
    if strategy:
        return (devices if isinstance(devices, int) else max(1, gpus)), gpus, 1
    if isinstance(devices, int):
        if devices > max(gpus, 1):
            raise ValueError(
                f"--devices {devices}: without --strategy it is how many GPUs the trials are "
                f"spread over, and {gpus} GPU(s) are available; for {devices} processes per trial "
                "add --strategy ddp"
            )
        gpus = min(gpus, devices)
    return 1, gpus, parallel or max(1, gpus)


# ------------------------------------------------------------------------------------------------ checks
def prepare(request: Request) -> Plan:
    """`check_paths` (before torch is imported), `make_plan`, and (when it has trials) `check_hardware` (not for a
    dry run: it imports Lightning to build a Trainer) and `check_inputs`: everything that can be checked before
    training. Raises ValueError (or a data module's error); nothing is created on disk before all pass."""
    check_paths(request)
    plan = make_plan(request)
    if plan.trials:
        check_engine(plan)
        if not request.dry_run:
            check_hardware(plan)
        plan = check_inputs(plan, request.dry_run)
    return plan


def check_engine(plan: Plan) -> None:
    """Fail before any trial folder exists, in a dry run too, on an engine this machine cannot run: the Ray engine
    is imported and its options checked."""
    if plan.engine == "ray":
        from ablations.engines.ray import check_address, check_supported, import_ray

        import_ray()
        check_supported(plan.trials, plan.options)
        check_address(plan.ray_address)


def check_hardware(plan: Plan) -> None:
    """Fail before any trial folder exists on devices or accelerator values this machine cannot honour: a sweep
    Trainer is built once (Lightning's own checks)."""
    import lightning.pytorch as pl

    from ablations.signals import quiet_lightning
    from ablations.trial import trainer_kwargs

    quiet_lightning()  # importing Lightning set its logger back to INFO: no banners before a refusal
    try:
        with warnings.catch_warnings():  # e.g. "16-mixed on a CPU: using bf16-mixed": check_precision says it
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(**trainer_kwargs(plan.options, plan.trials[0].settings), logger=False)
    except Exception as error:  # noqa: BLE001 - Lightning raises ValueError or MisconfigurationException
        o = plan.options
        raise ValueError(
            f"--accelerator {o.accelerator} --devices {o.devices} --strategy {o.strategy}: {error}"
        ) from None
    check_precision(plan.trials[0].settings.precision, trainer)


PROBE_BYTES = 1 << 20  # what the write probe writes: a full disk refuses it (an empty file it would accept)


def check_paths(request: Request) -> None:
    """The checks of the request's paths that need no torch, so a mistyped path fails in a fraction of a second
    and nothing is created on disk: the suite and settings (as `make_plan`), the packages of the model, data and
    optimizer class paths (without importing them), no symlinked suite or trial folder
    (`ablations.store.TrialPaths.refuse_symlinks`), a ``--logdir`` that takes a real write (`probe_writable`), and
    a ``--data-dir`` that is an existing, readable folder. Raises ValueError."""
    suite, settings, _ = _suite_trials(request)
    for what, ref in (("model", suite.model), ("data", suite.data), ("optimizer", settings.optimizer)):
        if not isinstance(ref, ClassRef):
            continue
        package = ref.class_path.split(".")[0]
        if importlib.util.find_spec(package) is None:  # finds it without importing it
            raise ValueError(f"{what} class_path {ref.class_path!r}: cannot import {package!r} (it is not installed)")
    logdir = Path(request.logdir)
    for trial in expand_trials(suite, settings, only=_only(request)):
        trial.paths(logdir).refuse_symlinks()
    probe_writable(logdir)
    data_dir = request.data_dir
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(
            f"--data-dir {data_dir} is not an existing folder: give the folder that holds cifar-10-batches-py/ or "
            f"cifar-10-batches-bin/ (or set {DATA_ENV})"
        )
    if data_dir is not None and not os.access(data_dir, os.R_OK | os.X_OK):
        raise ValueError(f"--data-dir {data_dir} is not readable")


def probe_writable(logdir: Path) -> None:
    """Raise ValueError unless `PROBE_BYTES` can be written and synced in `logdir` (or, when it does not exist yet,
    in the nearest folder above it, so a refused run creates nothing); the probe file is removed."""
    folder = logdir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe = folder / f".write-test-{os.getpid()}"
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(folder))
        try:
            with open(probe, "xb") as f:
                f.write(bytes(PROBE_BYTES))
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "the disk is full" if full else (error.strerror or str(error))
        raise ValueError(f"--logdir {logdir} is not writable: {why} ({folder})") from None


def check_inputs(plan: Plan, dry_run: bool = False) -> Plan:
    """Fail fast, before any training, on output or data problems (raises ValueError / DatasetError); the plan
    with its trials' fingerprints of model source and data. The data is checked only when some trial needs
    training: a finished sweep reruns (and reports) without it. A trial whose folder holds a finished result of
    other settings, model source or data stops the run here unless --force (`refuse_other_settings`). Expects
    `check_paths` to have passed. A `dry_run` downloads nothing, refuses no clash (it lists them) and checks a
    custom data module whether or not a trial needs it."""
    from ablations.status import is_finished

    logdir = Path(plan.options.logdir)
    plan = replace(plan, trials=custom.with_fingerprints(plan.trials, plan.options))
    if not dry_run:
        refuse_other_settings(plan.trials, logdir, plan.options.force)
    finished = [is_finished(t, logdir) for t in plan.trials]  # the one read before training; warns of damage
    needs_data = dry_run or plan.options.force or not all(finished)
    options = replace(plan.options, download=False) if dry_run else plan.options
    custom.check_plan(plan.trials, options, needs_data)  # the model, a custom data module, the optimizer
    if needs_data and not dry_run and isinstance(plan.trials[0].data, str):
        _check_data(plan)  # may download it: its fingerprint is taken again (cached: cheap)
        plan = replace(plan, trials=custom.with_fingerprints(plan.trials, plan.options))
    return plan


def _check_data(plan: Plan) -> None:
    from lit_cifar.layouts import default_data_dir

    data_dir = plan.options.data_dir
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    if folder.exists() and not os.access(folder, os.R_OK | os.X_OK):
        raise ValueError(f"--data-dir {folder} is not readable")
    dm = custom.make_datamodule(replace(plan.trials[0], spec=RegularizationSpec()), str(folder), plan.options.download)
    try:
        dm.prepare_data()  # downloads once here, not in every worker
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"{error}. Give --data-dir FOLDER (or set {DATA_ENV}) with cifar-10-batches-py/ or cifar-10-batches-bin/"
        ) from None
    dm.verify()  # a missing or truncated file, or a too-large --val-size / --limit-train, stops us now
