"""The plan of a sweep: a `Request` (one field per flag of ``python -m ablations.run``) becomes a `Plan`, and
`prepare` refuses, before any trial folder exists, what the paths, the tree's classes, the data or this machine cannot
honour (ValueError naming the flag or cell; exit status 2). torch is imported only once the suite is valid.

    plan = make_plan(Request(suite="notebook", only=["pixel"], seeds=[0, 1], epochs=1, accelerator="cpu"))
    [t.name for t in plan.trials]  # ['pixel/seed=0', 'pixel/seed=1']
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from ablations import custom
from ablations.engines import ENGINES
from ablations.rules import Rule, check, integer, margin_arg
from ablations.suite import SETTING_RULES, ClassRef, RunOptions, Suite, TrainSettings, Trial, expand_trials
from ablations.suite import load_suite, tree_value
from ablations.signals import quiet_lightning
from ablations.status import check_precision, is_finished, refuse_other_settings
from lit_cifar.layouts import DATA_ENV, default_data_dir
from lit_cifar.spec import RegularizationSpec

__all__ = ["Plan", "Request", "check_inputs", "check_paths", "count_trials", "make_plan", "prepare"]

ClassValue = Union[str, Mapping[str, Any], None]  # a class path, JSON text or {"class_path": ..., "init_args": ...}
WHAT, SETTINGS, WHERE = "what to run", "training settings (override the suite's)", "data and output"
HARDWARE, TREE = "devices and scheduling", "model, data and outputs (override the suite's)"


def _typed(convert: Callable[[str], Any], rule: Rule, what: str = "an integer") -> Callable[[str], Any]:
    """An argparse type: `convert` reads the text (else it is not `what`) and `rule` judges the value."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        problem = rule(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{text} {problem}")
        return value

    return parse


def _setting(name: str, convert: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """A setting's flag type: the suite file's rule (`SETTING_RULES`), so both accept the same values."""
    return _typed(convert, SETTING_RULES[name], "an integer" if convert is int else "a number")


def _pair(text: str) -> tuple[int, int]:
    k, n = map(int, text.split("/"))
    return k, n


def _shard_range(kn: tuple[int, int]) -> Optional[str]:
    return None if 1 <= kn[0] <= kn[1] else "is out of range: K must be between 1 and N"


SHARD = _typed(_pair, _shard_range, "of the form K/N, e.g. 1/4")
SEEDS = _typed(
    lambda t: [int(s) for s in t.split(",") if s.strip()], SETTING_RULES["seeds"], "a comma-separated list, e.g. 0,1,2"
)
DEVICES = _typed(lambda t: t if t == "auto" else int(t), lambda v: None if v == "auto" else integer(1)(v))
CLASS = "CLASS_PATH|JSON"


def _flag(group: str, help: Optional[str] = None, default: Any = None, **argparse: Any) -> Any:
    """A `Request` field with its command-line flag: its help group, help and other `add_argument` arguments."""
    return field(default=default, metadata={"group": group, "help": help, **argparse})


def _switch(group: str, help: str) -> Any:
    """A `Request` field that a flag without a value sets to True."""
    return _flag(group, help, False, action="store_true")


@dataclass(frozen=True)
class Request:
    """What a sweep asks for: the flags of ``python -m ablations.run`` by name (``--batch-size`` is `batch_size`);
    None leaves the suite's value or the flag's default. `suite` may also be a suite file's content; `model`,
    `data` and `optimizer` a mapping; `shard` is ``(k, n)``."""

    suite: Union[str, Mapping[str, Any]] = _flag(WHAT, "shipped suite name or suite .yaml path", "notebook")
    only: Optional[Sequence[str]] = _flag(WHAT, "run just these specs or cells", nargs="+", metavar="NAME")
    shard: Optional[tuple[int, int]] = _flag(WHAT, "run the K-th of N disjoint parts", type=SHARD, metavar="K/N")
    dry_run: bool = _switch(WHAT, "check as a run does, then print each trial's state; train nothing")
    force: bool = _switch(WHAT, "rerun trials that already have a matching result")
    reference: Optional[str] = _flag(WHAT, "report's reference spec (default: pixel, else the first)", metavar="SPEC")
    margin: Optional[float] = _flag(WHAT, "equivalence margin in test accuracy (default 0.01)", type=margin_arg)
    epochs: Optional[int] = _flag(SETTINGS, type=_setting("epochs"))
    batch_size: Optional[int] = _flag(SETTINGS, "images per step (per device under DDP)", type=_setting("batch_size"))
    seeds: Optional[Sequence[int]] = _flag(SETTINGS, "comma-separated seeds", type=SEEDS, metavar="0,1,2")
    val_size: Optional[int] = _flag(SETTINGS, "training images held out for validation", type=_setting("val_size"))
    split_seed: Optional[int] = _flag(SETTINGS, "seed of the train/validation split", type=_setting("split_seed"))
    limit_train: Optional[int] = _flag(
        SETTINGS, "train on the first N images", type=_setting("limit_train"), metavar="N"
    )
    lr: Optional[float] = _flag(SETTINGS, "learning rate", type=_setting("lr", float))
    lr_decay: Optional[float] = _flag(SETTINGS, "Keras decay: lr / (1 + decay*step)", type=_setting("lr_decay", float))
    precision: Optional[str] = _flag(SETTINGS, "Lightning precision: 32-true (default), bf16-mixed, 16-mixed")
    data_dir: Optional[str] = _flag(
        WHERE,
        "folder with the dataset's official layout (default: $LIT_CIFAR_DATA or ./data); CIFAR is downloaded into it",
    )
    logdir: str = _flag(WHERE, "trials go to LOGDIR/SUITE/CELL/seed=S/", "logs")
    accelerator: str = _flag(HARDWARE, "cpu, gpu, ... (default: auto)", "auto")
    devices: Union[int, str, None] = _flag(
        HARDWARE, "GPUs the trials are spread over (default: all); with --strategy: devices per trial", type=DEVICES
    )
    parallel: Optional[int] = _flag(HARDWARE, "trials at once (default: one per GPU)", type=_typed(int, integer(1)))
    strategy: Optional[str] = _flag(HARDWARE, "data-parallel training of each trial", choices=("ddp",))
    compile: bool = _switch(HARDWARE, "torch.compile each trial's network")
    num_nodes: int = _flag(HARDWARE, "nodes per trial (Lightning DDP)", 1, type=_typed(int, integer(1)))
    engine: str = _flag(HARDWARE, "local processes, or Ray tasks (.[ray] extra)", "local", choices=ENGINES)
    ray_address: Optional[str] = _flag(HARDWARE, "Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    max_retries: int = _flag(HARDWARE, "Ray: reruns of a trial whose worker died", 2, type=_typed(int, integer(0)))
    model: ClassValue = _flag(
        TREE, 'the network: mypkg.nets.ResNet18 or {"class_path": ..., "init_args": {...}}', metavar=CLASS
    )
    data: ClassValue = _flag(TREE, "cifar10, cifar100 or a LightningDataModule", metavar="NAME|" + CLASS)
    optimizer: ClassValue = _flag(TREE, "optimizer instead of the built-in Adam (lr: --lr)", metavar=CLASS)
    save_model: bool = _switch(TREE, "keep each trial's final checkpoint as model.ckpt")
    logger: Optional[Sequence[str]] = _flag(TREE, "also log here", action="append", choices=("csv", "mlflow", "wandb"))


@dataclass(frozen=True)
class Plan:
    """What a request comes to: the suite, the trials (after ``only``/``shard``), how and where they run."""

    suite: Suite
    trials: list[Trial]
    options: RunOptions
    parallel: int  # trials at once on this machine (1 under DDP: a trial uses every device)
    gpus: int  # GPUs the trials are spread over (0 on CPU)
    unsharded: int  # trials before --shard
    reference: Optional[str]  # the report's reference cell, None for its default
    request: Request

    @property
    def ray_address(self) -> Optional[str]:
        return self.request.ray_address or os.environ.get("RAY_ADDRESS")


def _tree(request: Request) -> tuple[Suite, TrainSettings, list[Trial]]:
    """The suite with the request's settings, model, data and optimizer applied, and its trials (before ``shard``),
    without torch; ValueError for a flag that overrides a factor, a malformed value or an --only of no cell."""
    suite = load_suite(request.suite)
    flagged = sorted(n for n, _ in suite.setting_factors if getattr(request, n, None) is not None)
    if flagged:
        flags = ", ".join("--" + n.replace("_", "-") for n in flagged)
        raise ValueError(f"{flags}: a factor of suite {suite.name!r}; drop the flag or remove the factor")
    given = {f.name: getattr(request, f.name) for f in fields(TrainSettings) if f.name != "optimizer"}
    settings = replace(suite.settings, **{k: v for k, v in given.items() if v is not None})
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
    return suite, settings, expand_trials(suite, settings, only=request.only)


def _shard(trials: list[Trial], request: Request) -> list[Trial]:
    """The ``--shard K/N`` of `trials`: the K-th of N disjoint parts (all of them without one)."""
    if request.shard is None:
        return trials
    k, n = check("shard", request.shard, _shard_range)
    return trials[k - 1 :: n]


def count_trials(request: Request) -> int:
    """How many trials the request runs (after ``only`` and ``shard``), without importing torch."""
    return len(_shard(_tree(request)[2], request))


def make_plan(request: Request) -> Plan:
    """The plan of `request` (ValueError, SuiteError, on a bad suite, spec, setting or device combination)."""
    suite, settings, _ = _tree(request)
    reference = expand_trials(suite, settings, only=[request.reference])[0].cell if request.reference else None
    devices, gpus, parallel = _placement(request)  # the first step that imports torch
    trials = expand_trials(suite, settings, only=request.only, data_parallel=devices * request.num_nodes)
    loggers = tuple(dict.fromkeys(request.logger or ()))
    for name in loggers:
        if name != "csv" and importlib.util.find_spec(name) is None:
            raise ValueError(f"--logger {name} needs the {name} package (pip install {name}); csv needs nothing")
    same = {f.name: getattr(request, f.name) for f in fields(RunOptions) if hasattr(request, f.name)}
    options = RunOptions(**{**same, "devices": devices, "strategy": request.strategy or "auto", "loggers": loggers})
    return Plan(suite, _shard(trials, request), options, parallel, gpus, len(trials), reference, request)


def _placement(request: Request) -> tuple[int, int, int]:
    """(devices per trial, GPUs the trials are spread over, trials at once); ValueError for what cannot work."""
    devices, parallel, strategy = request.devices, request.parallel, request.strategy
    if strategy and parallel not in (None, 1):
        raise ValueError(f"--parallel {parallel} with --strategy {strategy}: trials run one at a time; drop one")
    if not strategy and request.num_nodes > 1:
        raise ValueError(f"--num-nodes {request.num_nodes} needs --strategy ddp: it spreads one trial over nodes")
    if request.dry_run and (not strategy or isinstance(devices, int)):
        return (devices if strategy and isinstance(devices, int) else 1), 0, 1  # a dry run counts no GPUs
    import torch

    gpus = torch.cuda.device_count() if request.accelerator in ("auto", "gpu", "cuda") else 0
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
    """The checked plan: `check_paths` (before torch), `make_plan`, the engine, the hardware (not in a dry run) and
    `check_inputs`. Raises ValueError (or a data module's error); nothing is created on disk before all pass."""
    check_paths(request)
    plan = make_plan(request)
    if not plan.trials:
        return plan
    if request.engine == "ray":  # an engine this machine cannot run fails in a dry run too
        from ablations.engines.ray import check_address, check_supported, import_ray

        import_ray()
        check_supported(plan.trials, plan.options)
        check_address(plan.ray_address)
    if not request.dry_run:  # one sweep Trainer: Lightning's own checks of the devices, then the precision's
        import lightning.pytorch as pl

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
    return check_inputs(plan, request.dry_run)


def check_paths(request: Request) -> None:
    """The checks that need no torch, so a mistyped path fails fast: the suite and settings, the tree's packages
    (found, not imported), no symlinked trial folder, a ``--logdir`` that takes a real write of 1 MiB (or the nearest
    folder above it) and a readable ``--data-dir``."""
    trials = _tree(request)[2]
    tree = {(what, ref) for t in trials for what, ref in t.classes.items() if isinstance(ref, ClassRef)}
    for what, ref in sorted(tree, key=str):
        package = ref.class_path.split(".")[0]
        if importlib.util.find_spec(package) is None:  # found without importing it
            raise ValueError(f"{what} class_path {ref.class_path!r}: cannot import {package!r} (it is not installed)")
    for trial in trials:
        trial.paths(request.logdir).refuse_symlinks()
    folder = Path(request.logdir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder) as f:  # a full disk refuses a real write (an empty file it accepts)
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        why = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or str(error))
        raise ValueError(f"--logdir {request.logdir} is not writable: {why} ({folder})") from None
    data = Path(request.data_dir) if request.data_dir is not None else default_data_dir()
    if request.data_dir is not None and not data.is_dir():
        raise ValueError(f"--data-dir {data} is not an existing folder: give the dataset's folder (or set {DATA_ENV})")
    if data.exists() and not os.access(data, os.R_OK | os.X_OK):
        raise ValueError(f"--data-dir {data} is not readable")


def check_inputs(plan: Plan, dry_run: bool = False) -> Plan:
    """The plan with its trials' fingerprints, after the tree's classes and the data were checked; a finished result
    of other settings, model source or data stops the run unless --force. The data is checked only when some trial
    needs training; a `dry_run` downloads nothing and refuses no clash (it lists them)."""
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
    folder = Path(options.data_dir) if options.data_dir is not None else default_data_dir()
    dm = custom.make_datamodule(replace(plan.trials[0], spec=RegularizationSpec()), str(folder), options.download)
    try:
        dm.prepare_data()  # downloads once here, not in every worker
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"{error}. Give --data-dir FOLDER (or set {DATA_ENV}) with cifar-10-batches-py/ or cifar-10-batches-bin/"
        ) from None
    dm.verify()  # a missing or truncated file, or a too-large --val-size / --limit-train, stops us now
    return replace(plan, trials=custom.with_fingerprints(plan.trials, options))  # what it downloaded: cached
