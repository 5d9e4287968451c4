"""Building what a trial trains from its suite's model, data and optimizer, and checking them before any trial
trains: the run's ``--model``, ``--data``, ``--optimizer``, ``--save-model`` and ``--logger`` flags.

**The model** is ``class_path(**init_args)``, passed ``spec`` and ``num_classes`` when its constructor takes them
(as `lit_cifar.NotebookCNN` does), trained by `lit_cifar.RegularizedClassifier` under the library's backbone contract:
penalties and max-norm act on ``regularized_layers()``; ``bn`` needs a BatchNorm layer and ``dropout=P`` Dropout
layers of probability P. Each distinct (model, spec) is built once at planning time, on the meta device (no
memory, no weights), and run on a meta batch, so a spec it cannot honour, bad init args or an output that does not
have the data's number of classes stop the run (exit 2) before any trial folder exists.

**A custom data module** (``data: {class_path: ..., init_args: ...}``) is a ``LightningDataModule`` built with its
init args plus whichever of ``data_dir, normalize, augment, val_size, split_seed, batch_size, limit_train,
download, seed`` its constructor takes and the init args do not set. Its contract, checked before anything trains
on its first training batch, once per distinct (normalize, augment) of the suite's specs: batches are ``(images
(B, C, H, W), int64 labels (B,))``, images uint8 or float in 0-255 units, of any channel count and size; after
``setup("fit")`` it has ``num_classes`` (or ``classes``); for a spec that standardizes (``pixel``, ``channel``),
``mean`` and ``std`` fitted on its training split (shaped (C, H, W) or (C, 1, 1), 0-255 units:
`lit_cifar.data.fit_normalization` computes them); for a spec with ``augment``, an ``augment`` attribute that is
True (it augments its training batches), and for one without, none or False. Subclassing
`lit_cifar.CIFAR10DataModule` gives all of this; each test image is counted once under DDP when its evaluation
loaders use `lit_cifar.data.evaluation_sampler`.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ablations import identity
from ablations.identity import BUILTIN_DATA, DEFAULT_DATA, ClassRef
from ablations.store import TrialPaths, atomic_output
from ablations.suite import RunOptions, Suite, TrainSettings, Trial

if TYPE_CHECKING:
    from ablations.plan import Request

LOGGERS = ("csv", "mlflow", "wandb")
SHOWN = 5  # failing cells named in one message; the rest are counted
LOGGER_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}
DATA_KWARGS = (
    "data_dir",
    "normalize",
    "augment",
    "val_size",
    "split_seed",
    "batch_size",
    "limit_train",
    "download",
    "seed",
)
BUILTIN_CLASSES = {"cifar10": 10, "cifar100": 100}


# ------------------------------------------------------------------------------------------- the command line
def add_arguments(parser: Any) -> None:
    """The flags of this module, in one group of `ablations.run`'s parser."""
    group = parser.add_argument_group("model, data and outputs (override the suite's)")
    group.add_argument(
        "--model",
        metavar="CLASS_PATH|JSON",
        help='the network: a class path (mypkg.nets.ResNet18) or JSON {"class_path": ..., '
        "\"init_args\": {...}} (default: the suite's, else the notebook's CNN)",
    )
    group.add_argument(
        "--data",
        metavar="NAME|CLASS_PATH|JSON",
        help=f"{' or '.join(BUILTIN_DATA)} (official layouts, downloaded if absent), or a "
        "LightningDataModule's class path / JSON (default: the suite's, else cifar10)",
    )
    group.add_argument(
        "--optimizer",
        metavar="CLASS_PATH|JSON",
        help="optimizer instead of the built-in Adam, e.g. torch.optim.SGD or JSON with init_args "
        "(lr defaults to --lr)",
    )
    group.add_argument(
        "--save-model", action="store_true", help="keep each trial's final checkpoint as model.ckpt in its folder"
    )
    group.add_argument(
        "--logger",
        action="append",
        choices=LOGGERS,
        default=None,
        help="also log to this Lightning logger (repeatable); TensorBoard is always written",
    )


def _json_or_text(value: Any) -> Any:
    """A flag's value: JSON text read into a mapping, anything else (a class path, a mapping, None) as given."""
    import json

    if not isinstance(value, str) or not value.lstrip().startswith("{"):
        return value
    try:
        return json.loads(value)
    except ValueError as error:
        raise ValueError(f"{value!r} is not valid JSON: {error}") from None


def apply_arguments(suite: Suite, settings: TrainSettings, request: Request) -> tuple[Suite, TrainSettings, RunOptions]:
    """The suite and settings with the request's ``model``, ``data`` and ``optimizer`` applied, and the options of
    its outputs (``save_model``, ``logger``); ValueError for a value that overrides one of the suite's setting
    factors, or a malformed one."""
    from dataclasses import replace

    factors = {name for name, _ in suite.setting_factors}
    flagged = [name for name in factors if getattr(request, name, None) is not None]
    if flagged:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(flagged))
        raise ValueError(
            f"{flags}: a factor of suite {suite.name!r} (its levels come from the suite file); drop "
            "the flag or remove the factor"
        )
    if request.model is not None:
        suite = replace(suite, model=identity.parse_model(_json_or_text(request.model)))
    if request.data is not None:
        suite = replace(suite, data=identity.parse_data(_json_or_text(request.data)))
    if request.optimizer is not None:
        settings = replace(settings, optimizer=identity.parse_level("optimizer", _json_or_text(request.optimizer)))
    loggers = tuple(dict.fromkeys(request.logger or ()))
    for name in loggers:
        package = LOGGER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"--logger {name} needs the {package} package, which is not installed "
                f"(pip install {package}); csv needs nothing"
            )
    return suite, settings, RunOptions(save_model=bool(request.save_model), loggers=loggers)


# ------------------------------------------------------------------------------------------------ building
def _resolve(ref: ClassRef, what: str) -> type:
    from lit_cifar.models import resolve_class

    return resolve_class(ref.class_path, what)


def _accepted(cls: type, names: tuple[str, ...], given: dict[str, Any]) -> set[str]:
    parameters = inspect.signature(cls).parameters
    return {n for n in names if n not in given and n in parameters}


def make_datamodule(trial: Trial, data_dir: Optional[str], download: bool = True) -> Any:
    """The trial's data module: a built-in one from its spec, or the suite's class with its init args."""
    s = trial.settings
    standard = {
        "data_dir": data_dir,
        "normalize": trial.spec.normalize,
        "augment": trial.spec.augment,
        "val_size": s.val_size,
        "split_seed": s.split_seed,
        "batch_size": s.batch_size,
        "limit_train": s.limit_train,
        "download": download,
        "seed": trial.seed,
    }
    if isinstance(trial.data, str):
        import lit_cifar.data

        cls = getattr(lit_cifar.data, BUILTIN_DATA[trial.data].rpartition(".")[2])
        return cls(**standard)
    cls = _resolve(trial.data, "data")
    import lightning.pytorch as pl

    if not issubclass(cls, pl.LightningDataModule):
        raise ValueError(f"data class_path {trial.data.class_path!r} is not a LightningDataModule")
    args = trial.data.init_args
    kwargs = {**args, **{n: standard[n] for n in _accepted(cls, DATA_KWARGS, args)}}
    try:
        inspect.signature(cls).bind(**kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"data {trial.data.class_path} init_args {args}: {type(error).__name__}: {error}") from None


def class_count(dm: Any) -> Optional[int]:
    """The data module's number of classes (``num_classes``, else ``len(classes)``), None if it tells neither."""
    count = getattr(dm, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    classes = getattr(dm, "classes", None)
    return len(classes) if classes is not None else None


def make_optimizer(settings: TrainSettings) -> Optional[functools.partial]:
    """``params -> Optimizer`` for a suite's optimizer (``lr`` from the settings unless its init args set it);
    None for the built-in Adam."""
    ref = settings.optimizer
    if ref is None:
        return None
    cls = _resolve(ref, "optimizer")
    args = ref.init_args
    if "lr" in inspect.signature(cls).parameters and "lr" not in args:
        args["lr"] = settings.lr
    return functools.partial(cls, **args)


def make_model(trial: Trial, num_classes: int, compile: bool = False) -> Any:
    """The trial's `RegularizedClassifier`: the notebook's CNN or the suite's backbone (its class path saved in
    the hyperparameters, so a checkpoint loads on its own)."""
    from lit_cifar import RegularizedClassifier

    s = trial.settings
    backbone: dict[str, Any] = (
        {}
        if trial.model is None
        else {"backbone_class_path": trial.model.class_path, "backbone_init_args": trial.model.init_args}
    )
    return RegularizedClassifier(
        trial.spec,
        lr=s.lr,
        lr_decay=s.lr_decay,
        compile=compile,
        num_classes=num_classes,
        optimizer=make_optimizer(s),
        **backbone,
    )


def data_statistics(dm: Any, spec: Any) -> tuple[Any, Any]:
    """A custom data module's ``mean`` and ``std`` for a spec that standardizes inputs.

    Raises:
        ValueError: one line naming the data module, the spec and what a data module of one's own must have.
    """
    mean, std = getattr(dm, "mean", None), getattr(dm, "std", None)
    if mean is None or std is None:
        raise ValueError(
            f"spec {spec.name!r} standardizes inputs (normalize={spec.normalize!r}) but data module "
            f"{type(dm).__name__} has no mean and std after setup('fit'): give it mean and std attributes fitted on "
            f"its training split in 0-255 units, shaped (C, H, W) for pixel or (C, 1, 1) for channel "
            "(lit_cifar.data.fit_normalization(train_images, normalize) computes them)"
        )
    return mean, std


def give_statistics(model: Any, dm: Any) -> None:
    """A custom data module's ``mean``/``std`` to a model whose spec standardizes (built-in ones give their own
    when fitting starts)."""
    from lit_cifar import CIFAR10DataModule

    if isinstance(dm, CIFAR10DataModule) or model.spec.normalize == "none":
        return
    model.set_input_statistics(*data_statistics(dm, model.spec))


def loggers(trial: Trial, options: RunOptions) -> list[Any]:
    """The Lightning loggers `options.loggers` asks for, each run named as in TensorBoard
    (``<suite>/<cell>/seed=<s>``): CSV into the trial's ``csv/`` folder, MLflow into ``<logdir>/mlruns``."""
    from lightning.pytorch import loggers as pl_loggers

    folder = trial.paths(options.logdir).folder
    run = f"{trial.suite}/{trial.name}"
    made: list[pl_loggers.Logger] = []
    for name in options.loggers:
        if name == "csv":
            made.append(pl_loggers.CSVLogger(save_dir=str(folder), name="", version="csv"))
            made[-1].log_hyperparams(trial.levels())  # every factor's label in its hparams.yaml
        elif name == "mlflow":
            uri = (Path(options.logdir) / "mlruns").resolve().as_uri()
            made.append(pl_loggers.MLFlowLogger(experiment_name=trial.suite, run_name=run, tracking_uri=uri))
        elif name == "wandb":
            made.append(pl_loggers.WandbLogger(project=trial.suite, name=run, save_dir=str(folder)))
    return made


def save_model(trainer: Any, paths: TrialPaths) -> None:
    """The trained model's checkpoint (weights, hyperparameters, data state; no optimizer state), atomically."""
    if trainer.is_global_zero:
        with atomic_output(paths.checkpoint) as tmp:
            trainer.save_checkpoint(tmp, weights_only=True)
    else:
        trainer.save_checkpoint(paths.checkpoint, weights_only=True)  # rank 0 writes; the others take part


# ------------------------------------------------------------------------------------------------ checking
@functools.lru_cache(maxsize=None)
def init_args_problem(ref: ClassRef) -> Optional[str]:
    """What jsonargparse finds wrong with the types of a model's init args (``Expected a <class 'int'>. Got value:
    two``), or None. A key the constructor does not take is left to `lit_cifar.models.build_backbone`, whose message
    names the keys it takes."""
    from jsonargparse import ArgumentParser

    cls = _resolve(ref, "model")
    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(cls, "init", skip={"spec", "num_classes"})
        known = set(parser.get_defaults().init.keys())
    except Exception:  # noqa: BLE001 - a signature jsonargparse cannot read: building it will judge
        return None
    try:
        parser.parse_object({"init": {k: v for k, v in ref.init_args.items() if k in known}})
    except Exception as error:  # noqa: BLE001 - jsonargparse's ArgumentError, one line
        return f"model {ref.class_path} init_args {ref.init_args}: {' '.join(str(error).split())}"
    return None


def _check_one_model(trial: Trial, num_classes: Optional[int], image_shape: tuple[int, ...]) -> None:
    import torch

    from lit_cifar.models import NotebookCNN, build_backbone
    from lit_cifar.module import check_backbone, default_regularized_layers

    problem = init_args_problem(trial.model) if trial.model is not None else None
    if problem:
        raise ValueError(problem)

    def build() -> Any:
        if trial.model is None:
            return NotebookCNN(trial.spec, num_classes=num_classes or 10)
        return build_backbone(trial.model.class_path, trial.model.init_args, trial.spec, num_classes or 10)

    try:
        with torch.device("meta"):  # no memory and no initialization: only the layers are looked at
            backbone = build()
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - some constructors cannot run on the meta device: build it for real
        backbone = build()
    check_backbone(trial.spec, backbone, default_regularized_layers(backbone))
    if num_classes is None:
        return
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    batch = (2, *image_shape)
    try:
        with torch.no_grad():
            out = backbone.eval()(torch.zeros(batch, device=device))
    except Exception as error:  # noqa: BLE001 - whatever the forward pass raises, it cannot train
        raise ValueError(f"its forward pass on a {batch} batch fails: {type(error).__name__}: {error}") from None
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(
            f"it returns logits of shape {tuple(out.shape)[1:]} per image but the data has "
            f"{num_classes} classes (num_classes mismatch)"
        )


def check_models(
    trials: list[Trial], num_classes: Optional[int] = None, image_shape: Optional[tuple[int, ...]] = None
) -> None:
    """Build every distinct (model, spec) of `trials` once, cheaply, and check it honours the spec and returns
    the data's number of classes (`num_classes`: None to skip that check) for images of `image_shape` (None:
    CIFAR's, `lit_cifar.data.IMAGE_SHAPE`).

    Raises:
        ValueError: one line naming the model, the spec and the reason.
    """
    from lit_cifar.data import IMAGE_SHAPE

    if num_classes is None and trials and isinstance(trials[0].data, str):
        num_classes = BUILTIN_CLASSES[trials[0].data]
    image_shape = image_shape or IMAGE_SHAPE
    seen: set[tuple[Any, str]] = set()
    failed: list[str] = []
    for trial in trials:
        key = (trial.model, str(trial.spec))
        if key in seen:
            continue
        seen.add(key)
        model = "NotebookCNN (the notebook's CNN)" if trial.model is None else str(trial.model)
        try:
            _check_one_model(trial, num_classes, image_shape)
        except (ValueError, TypeError) as error:
            text = str(error)
            prefix = "" if text.startswith("model ") else f"model {model} cannot train spec {trial.spec}: "
            failed.append(f"cell {trial.cell}: {prefix}{text}")
    if failed:
        more = f"; and {len(failed) - SHOWN} more cell(s)" if len(failed) > SHOWN else ""
        raise ValueError("; ".join(failed[:SHOWN]) + more)
    optimizers = {t.settings.optimizer for t in trials if t.settings.optimizer is not None}
    for ref in optimizers:
        _check_optimizer(ref)


def _check_optimizer(ref: ClassRef) -> None:
    import torch

    cls = _resolve(ref, "optimizer")
    if not issubclass(cls, torch.optim.Optimizer):
        raise ValueError(f"optimizer class_path {ref.class_path!r} is not a torch.optim.Optimizer")
    try:
        cls([torch.nn.Parameter(torch.zeros(1))], **{"lr": 1e-3, **ref.init_args})
    except (TypeError, ValueError) as error:
        raise ValueError(f"optimizer {ref}: {type(error).__name__}: {error}") from None


def check_data(trial: Trial, data_dir: Optional[str], download: bool) -> tuple[int, tuple[int, ...]]:
    """Build the custom data module of `trial`, set it up and check its first training batch, its statistics and
    its augmentation against the contract (module docstring) for `trial`'s spec; returns its number of classes and
    its image shape (C, H, W).

    Raises:
        ValueError: one line naming the data module and what breaks the contract.
    """
    import torch

    from lit_cifar.module import InputNormalization, check_augment

    dm = make_datamodule(trial, data_dir, download)
    name = f"data module {trial.data}"
    check_augment(trial.spec, dm)  # before its data is read: the spec cannot be trained as labelled
    try:
        dm.prepare_data()
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
    except Exception as error:  # noqa: BLE001 - it cannot serve data: say why, before anything trains
        raise ValueError(f"{name} cannot serve a training batch: {type(error).__name__}: {error}") from None
    count = class_count(dm)
    if count is None or count < 2:
        raise ValueError(f"{name} breaks the batch contract: it needs num_classes (or classes) >= 2 after setup")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(
            f"{name} breaks the batch contract: a batch must be (images, labels), got {type(batch).__name__}"
        )
    images, labels = batch
    if not (
        isinstance(images, torch.Tensor)
        and (images.dtype == torch.uint8 or images.is_floating_point())
        and images.dim() == 4
        and min(images.shape[1:]) >= 1
    ):
        raise ValueError(
            f"{name} breaks the batch contract: images must be uint8 or float (B, C, H, W) in 0-255, got "
            f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
        )
    if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and tuple(labels.shape) == (len(images),)):
        raise ValueError(
            f"{name} breaks the batch contract: labels must be int64 (B,), got "
            f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= count):
        raise ValueError(
            f"{name} breaks the batch contract: labels must lie in 0-{count - 1} (num_classes "
            f"{count}), got {int(labels.min())}-{int(labels.max())}"
        )
    if trial.spec.normalize != "none":
        normalization = InputNormalization(trial.spec.normalize)
        try:
            normalization.set_statistics(*data_statistics(dm, trial.spec))
            normalization(images[:1].cpu())
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    return count, tuple(images.shape[1:])


def check_trainer(trials: list[Trial]) -> None:
    """Every Trainer argument of the trials is one `lightning.pytorch.Trainer` takes (ValueError naming the ones it
    does not, with those allowed)."""
    given = {key for trial in trials for key in trial.trainer}
    if not given:
        return
    import lightning.pytorch as pl

    allowed = set(inspect.signature(pl.Trainer).parameters) - set(identity.TRAINER_OWNERS)
    unknown = sorted(given - allowed)
    if unknown:
        raise ValueError(f"trainer {', '.join(unknown)}: not a Trainer argument; allowed: {', '.join(sorted(allowed))}")


def check_plan(trials: list[Trial], options: RunOptions, needs_data: bool) -> None:
    """Everything about the model, data and optimizer that can fail, checked before any trial trains: a custom data
    module once per distinct (normalize, augment) of the specs, every distinct (model, spec) on its images."""
    if not trials:
        return
    check_trainer(trials)
    custom_data = not isinstance(trials[0].data, str)
    if (
        trials[0].model is None
        and not custom_data
        and trials[0].data == DEFAULT_DATA
        and all(t.settings.optimizer is None for t in trials)
    ):
        return  # the notebook's model and data: checked by the library as before
    num_classes: Optional[int] = None
    image_shape: Optional[tuple[int, ...]] = None
    if custom_data and needs_data:
        distinct = {(t.spec.normalize, t.spec.augment): t for t in reversed(trials)}  # each one's first trial
        for trial in reversed(distinct.values()):
            num_classes, image_shape = check_data(trial, options.data_dir, options.download)
    check_models(trials, num_classes, image_shape)


# ------------------------------------------------------------------------------------------------ identity
def _arrays_fingerprint(dm: Any) -> str:
    """SHA-256 of the tensors and arrays a set-up data module holds (as attributes, or in tuples and lists of them)."""
    import hashlib

    import numpy as np
    import torch

    digest = hashlib.sha256()
    for name, value in sorted(vars(dm).items()):
        if name in ("mean", "std"):  # fitted to a spec's normalization: not the data
            continue
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, torch.Tensor):
                item = item.detach().cpu().numpy()
            if isinstance(item, np.ndarray):
                digest.update(name.encode() + str(item.dtype).encode() + str(item.shape).encode())
                digest.update(np.ascontiguousarray(item).tobytes())
    return digest.hexdigest()[:16]


def data_fingerprint(trial: Trial, options: RunOptions) -> Optional[str]:
    """The fingerprint of the trial's data: of its files (a built-in dataset's layout folder, or a data module's
    ``data_dir``), else of the arrays the set-up data module holds; None when no --data-dir was given and the
    default folder has no data (a finished sweep reports without it)."""
    from lit_cifar.layouts import default_data_dir

    if isinstance(trial.data, str):  # a --data-dir without the dataset (CIFAR-100's for CIFAR-10) is other data
        root = Path(options.data_dir) if options.data_dir is not None else default_data_dir()
        found = identity.builtin_fingerprint(trial.data, root, options.logdir)
        return found or (f"no {trial.data} files" if options.data_dir is not None else None)
    from dataclasses import replace

    from lit_cifar.spec import RegularizationSpec

    dm = make_datamodule(replace(trial, spec=RegularizationSpec()), options.data_dir, download=False)
    folder = getattr(dm, "data_dir", None)
    if isinstance(folder, (str, Path)) and Path(folder).is_dir():
        return identity.files_fingerprint([folder], options.logdir)
    dm.setup("fit")
    return _arrays_fingerprint(dm)


def with_fingerprints(trials: list[Trial], options: RunOptions) -> list[Trial]:
    """The trials with the fingerprints of their model source and data (`Trial.changes` compares them with a
    finished result's), each distinct one computed once."""
    from dataclasses import replace

    data: dict[Any, Optional[str]] = {}
    source: dict[tuple[str, ...], Optional[str]] = {}
    marked = []
    for trial in trials:
        refs = (trial.model, trial.data, trial.settings.optimizer)
        paths = tuple(sorted(ref.class_path for ref in refs if isinstance(ref, ClassRef)))
        if paths not in source:
            source[paths] = identity.source_fingerprint(list(paths))
        key = trial.data if isinstance(trial.data, str) else (trial.data, trial.seed)  # a module's data may be seeded
        if key not in data:
            data[key] = data_fingerprint(trial, options)
        found = {"model source": source[paths], "data": data[key]}
        marked.append(replace(trial, fingerprints=tuple((k, v) for k, v in found.items() if v is not None)))
    return marked
