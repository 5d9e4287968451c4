"""The plan of a sweep, made from plain values: a `Request` (one field per flag of ``python -m ablations.run``, None
for a flag not given) becomes a `Plan` (the trials after ``only`` and ``shard``, the run options, the device
placement), and `prepare` refuses, before any trial folder exists, what the paths, the tree's classes, the data or
this machine cannot honour: a ValueError naming the flag or cell, which the command line makes exit status 2.
torch is imported only once the suite and its settings are valid, so a mistyped flag fails in a fraction of a second.

    plan = make_plan(Request(suite="notebook", only=["pixel"], seeds=[0, 1], epochs=1, accelerator="cpu"))
    [t.name for t in plan.trials]  # ['pixel/seed=0', 'pixel/seed=1']
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

from ablations import custom
from ablations.suite import ClassRef, RunOptions, Suite, TrainSettings, Trial, expand_trials, load_suite, shard
from ablations.suite import tree_value
from ablations.trust import check_precision, refuse_other_settings
from lit_cifar.layouts import DATA_ENV
from lit_cifar.spec import RegularizationSpec

__all__ = ["Plan", "Request", "check_inputs", "check_paths", "count_trials", "make_plan", "prepare"]

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
)
LOGGER_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # what a --logger needs installed
ClassValue = Union[str, Mapping[str, Any], None]  # a class path, JSON text or {"class_path": ..., "init_args": ...}


@dataclass(frozen=True)
class Request:
    """What a sweep asks for: the flags of ``python -m ablations.run`` by name (``--batch-size`` is `batch_size`);
    None leaves the suite's value or the flag's default. `suite` is a shipped name, a file or a file's content;
    `model`, `data`, `optimizer` a class path, JSON text or a mapping; `shard` is ``(k, n)``; `dry_run` checks
    everything a run checks without training, a download or a GPU count."""

    suite: Union[str, Mapping[str, Any]] = "notebook"
    only: Optional[Sequence[str]] = None
    shard: Optional[tuple[int, int]] = None
    reference: Optional[str] = None
    margin: Optional[float] = None
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
    reference: Optional[str] = None  # the report's reference cell, None for its default
    engine: str = "local"  # local or ray
    ray_address: Optional[str] = None  # the Ray cluster (None: a local Ray)
    max_retries: int = 2  # Ray's reruns of a trial whose worker or node died
    margin: Optional[float] = None  # the report's equivalence margin (None: its default, `rules.MARGIN`)


def _tree(request: Request) -> tuple[Suite, TrainSettings]:
    """The suite with the request's settings, model, data and optimizer applied, without torch (ValueError for a
    flag that overrides one of the suite's factors, or a malformed value)."""
    suite = load_suite(request.suite)
    flagged = sorted(n for n, _ in suite.setting_factors if getattr(request, n, None) is not None)
    if flagged:
        raise ValueError(
            f"{', '.join('--' + n.replace('_', '-') for n in flagged)}: a factor of suite {suite.name!r} (its "
            "levels come from the suite file); drop the flag or remove the factor"
        )
    settings = suite.settings.override(**{name: getattr(request, name) for name in SETTING_FLAGS})
    for root in ("model", "data", "optimizer"):
        value = getattr(request, root)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError as error:
                raise ValueError(f"--{root} {value!r} is not valid JSON: {error}") from None
        if value is not None and root == "optimizer":
            settings = replace(settings, optimizer=tree_value(root, value))
        elif value is not None:
            suite = replace(suite, **{root: tree_value(root, value)})
    expand_trials(suite, settings, only=_only(request))  # an --only that names no cell fails here
    return suite, settings


def _only(request: Request) -> Optional[list[str]]:
    return list(request.only) if request.only else None


def count_trials(request: Request) -> int:
    """How many trials the request runs (after ``only`` and ``shard``), without importing torch."""
    trials = expand_trials(*_tree(request), only=_only(request))
    return len(shard(trials, *request.shard) if request.shard else trials)


def make_plan(request: Request) -> Plan:
    """The plan of `request` (ValueError, SuiteError, on a bad suite, spec, setting or device combination)."""
    suite, settings = _tree(request)
    reference = expand_trials(suite, settings, only=[request.reference])[0].cell if request.reference else None
    devices, gpus, parallel = _placement(request)  # the first step that imports torch
    trials = expand_trials(suite, settings, only=_only(request), data_parallel=devices * request.num_nodes)
    loggers = tuple(dict.fromkeys(request.logger or ()))
    for name in loggers:
        package = LOGGER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(f"--logger {name} needs the {package} package (pip install {package}); csv needs nothing")
    options = RunOptions(
        data_dir=request.data_dir,
        logdir=request.logdir,
        accelerator=request.accelerator,
        devices=devices,
        strategy=request.strategy or "auto",
        num_nodes=request.num_nodes,
        force=request.force,
        compile=request.compile,
        save_model=request.save_model,
        loggers=loggers,
    )
    shown = shard(trials, *request.shard) if request.shard else trials
    return Plan(
        suite,
        shown,
        options,
        parallel,
        gpus,
        len(trials),
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
    """(devices per trial, GPUs the trials are spread over, trials at once); ValueError for what cannot work."""
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
    gpus = _gpu_count(request.accelerator)
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


def prepare(request: Request) -> Plan:
    """The checked plan: `check_paths` (before torch), `make_plan`, then, when it has trials, the engine, the
    hardware (not in a dry run: it builds a Trainer) and `check_inputs`. Raises ValueError (or a data module's
    error); nothing is created on disk before all pass."""
    check_paths(request)
    plan = make_plan(request)
    if not plan.trials:
        return plan
    if plan.engine == "ray":  # an engine this machine cannot run fails in a dry run too
        from ablations.engines.ray import check_address, check_supported, import_ray

        import_ray()
        check_supported(plan.trials, plan.options)
        check_address(plan.ray_address)
    if not request.dry_run:
        _check_hardware(plan)
    return check_inputs(plan, request.dry_run)


def _check_hardware(plan: Plan) -> None:
    """Build one sweep Trainer (Lightning's own checks of the devices and accelerator) and check the precision."""
    import lightning.pytorch as pl

    from ablations.quiet import quiet_lightning
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


def check_paths(request: Request) -> None:
    """The checks that need no torch, so a mistyped path fails fast and nothing is created on disk: the suite and
    settings, the packages of the tree's class paths (found, not imported), no symlinked suite or trial folder, a
    ``--logdir`` that takes a real write of 1 MiB (or the nearest folder above it), and a readable ``--data-dir``."""
    suite, settings = _tree(request)
    trials = expand_trials(suite, settings, only=_only(request))
    tree = {("model", t.model) for t in trials} | {("data", t.data) for t in trials}
    tree |= {("optimizer", t.settings.optimizer) for t in trials}
    for what, ref in sorted(((w, r) for w, r in tree if isinstance(r, ClassRef)), key=str):
        package = ref.class_path.split(".")[0]
        if importlib.util.find_spec(package) is None:  # found without importing it
            raise ValueError(f"{what} class_path {ref.class_path!r}: cannot import {package!r} (it is not installed)")
    for trial in trials:
        trial.paths(request.logdir).refuse_symlinks()
    folder = Path(request.logdir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe = folder / f".write-test-{os.getpid()}"
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(folder))
        try:
            with open(probe, "xb") as f:  # a full disk refuses a real write (an empty file it would accept)
                f.write(bytes(1 << 20))
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        why = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or str(error))
        raise ValueError(f"--logdir {request.logdir} is not writable: {why} ({folder})") from None
    data_dir = request.data_dir
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(
            f"--data-dir {data_dir} is not an existing folder: give the folder that holds cifar-10-batches-py/ or "
            f"cifar-10-batches-bin/ (or set {DATA_ENV})"
        )
    if data_dir is not None and not os.access(data_dir, os.R_OK | os.X_OK):
        raise ValueError(f"--data-dir {data_dir} is not readable")


def check_inputs(plan: Plan, dry_run: bool = False) -> Plan:
    """The plan with its trials' fingerprints, after the tree's classes and the data were checked. A finished
    result of other settings, model source or data stops the run unless --force (`refuse_other_settings`). The
    data is checked only when some trial needs training (a finished sweep reports without it); a `dry_run`
    downloads nothing, refuses no clash (it lists them) and checks a data module of one's own regardless."""
    from ablations.status import is_finished

    logdir = Path(plan.options.logdir)
    plan = replace(plan, trials=custom.with_fingerprints(plan.trials, plan.options))
    if not dry_run:
        refuse_other_settings(plan.trials, logdir, plan.options.force)
    finished = [is_finished(t, logdir) for t in plan.trials]  # the one read before training; warns of damage
    needs_data = dry_run or plan.options.force or not all(finished)
    options = replace(plan.options, download=False) if dry_run else plan.options
    custom.check_plan(plan.trials, options, needs_data)
    if not needs_data or dry_run or not isinstance(plan.trials[0].data, str):
        return plan
    from lit_cifar.layouts import default_data_dir

    folder = Path(options.data_dir) if options.data_dir is not None else default_data_dir()
    if folder.exists() and not os.access(folder, os.R_OK | os.X_OK):
        raise ValueError(f"--data-dir {folder} is not readable")
    dm = custom.make_datamodule(replace(plan.trials[0], spec=RegularizationSpec()), str(folder), options.download)
    try:
        dm.prepare_data()  # downloads once here, not in every worker
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"{error}. Give --data-dir FOLDER (or set {DATA_ENV}) with cifar-10-batches-py/ or cifar-10-batches-bin/"
        ) from None
    dm.verify()  # a missing or truncated file, or a too-large --val-size / --limit-train, stops us now
    return replace(plan, trials=custom.with_fingerprints(plan.trials, options))  # what it downloaded: cached
