"""The tree's classes (docs/own-model.md): read by jsonargparse, built for a trial and checked before any trial trains;
and the fingerprints of the user's source and data that, beside the settings hash, say whether a result still holds.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import pydoc
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from ablations.store import TrialPaths, atomic_output, source_hash, write_text_atomic
from ablations.suite import BUILTIN_DATA, TRAINER_OWNERS, ClassRef, RunOptions, TrainSettings, Trial
from lit_cifar.layouts import CIFAR10, CIFAR100, default_data_dir, find_layout
from lit_cifar.spec import RegularizationSpec

SHOWN = 5  # failing cells named in one message; the rest are counted
FINGERPRINTS = ".data-fingerprints.json"  # the cache of data fingerprints, in the logdir (or beside the data)
BASES = {  # the class each value of the tree must be
    "model": "torch.nn.Module",
    "data": "lightning.pytorch.LightningDataModule",
    "optimizer": "torch.optim.Optimizer",
    "trainer": "lightning.pytorch.Trainer",
}

FORMATS = {"cifar10": CIFAR10, "cifar100": CIFAR100}  # the built-in datasets (`BUILTIN_DATA`) on disk


@functools.lru_cache(maxsize=None)
def read_class(ref: ClassRef, what: str, given: tuple[str, ...]) -> type:
    """The class of the tree's `what` (``model``, ``data``, ``optimizer``, ``trainer``) once jsonargparse read `ref`
    against it, `given` being the arguments the harness passes itself (ValueError in one line otherwise)."""
    from jsonargparse import ArgumentParser

    from lit_cifar.models import resolve_class

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pydoc.locate(BASES[what]), what, skip=set(given), required=True)  # type: ignore[arg-type]
    try:
        parser.parse_object({what: ref.to_dict()})
    except Exception as error:  # noqa: BLE001 - jsonargparse's ArgumentError: made one line
        text = " ".join(str(error).split())
        found = re.search(
            r"Errors: - (?:Problem with given class_path '[^']*': )?(.*?) - Expected a <class 'None", text
        )
        reason = found.group(1) if found else text
        if "is not accepted" in reason:
            takes = [n for n in inspect.signature(resolve_class(ref.class_path, what)).parameters if n not in given]
            reason += f"; it takes: {', '.join(takes)}"
        raise ValueError(f"{what} {ref.class_path} init_args {ref.init_args}: {reason}") from None
    return resolve_class(ref.class_path, what)


def make_datamodule(trial: Trial, data_dir: Optional[str], download: bool) -> Any:
    """The trial's data module: a built-in one from its spec, or the tree's class with its init args."""
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
        return pydoc.locate(BUILTIN_DATA[trial.data])(**standard)  # type: ignore[operator]
    args = trial.data.init_args
    given = tuple(n for n in standard if n not in args)
    cls = read_class(trial.data, "data", given)
    parameters = inspect.signature(cls).parameters
    try:
        return cls(**args, **{n: standard[n] for n in given if n in parameters})
    except (TypeError, ValueError) as error:
        raise ValueError(f"data {trial.data.class_path} init_args {args}: {_why(error)}") from None


def class_count(dm: Any) -> Optional[int]:
    """The data module's ``num_classes``, else ``len(classes)``, else None."""
    count = getattr(dm, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    classes = getattr(dm, "classes", None)
    return len(classes) if classes is not None else None


def make_model(trial: Trial, dm: Any, compile: bool) -> Any:
    """The trial's `RegularizedClassifier` for the set-up data module `dm`: its classes, and its ``mean``/``std`` for
    a spec that standardizes when it is a data module of one's own (built-in ones give them themselves)."""
    from lit_cifar import CIFAR10DataModule, RegularizedClassifier

    model, s = trial.model, trial.settings
    classifier = RegularizedClassifier(
        trial.spec,
        lr=s.lr,
        lr_decay=s.lr_decay,
        compile=compile,
        num_classes=class_count(dm) or 10,
        optimizer=optimizer(s),
        backbone_class_path=model.class_path if model else None,
        backbone_init_args=model.init_args if model else None,
    )
    if not isinstance(dm, CIFAR10DataModule) and trial.spec.normalize != "none":
        classifier.set_input_statistics(*data_statistics(dm, trial.spec))
    return classifier


def data_statistics(dm: Any, spec: Any) -> tuple[Any, Any]:
    """A data module's ``mean`` and ``std`` for a spec that standardizes (ValueError saying what it must have)."""
    mean, std = getattr(dm, "mean", None), getattr(dm, "std", None)
    if mean is None or std is None:
        raise ValueError(
            f"spec {spec.name!r} standardizes inputs (normalize={spec.normalize!r}) but data module "
            f"{type(dm).__name__} has no mean and std after setup('fit'): give it mean and std attributes fitted on "
            f"its training split in 0-255 units, shaped (C, H, W) for pixel or (C, 1, 1) for channel "
            "(lit_cifar.data.fit_normalization(train_images, normalize) computes them)"
        )
    return mean, std


def loggers(trial: Trial, options: RunOptions) -> list[Any]:
    """The Lightning loggers `options.loggers` asks for, each run named ``<suite>/<cell>/seed=<s>``."""
    from lightning.pytorch import loggers as pl_loggers

    folder = trial.paths(options.logdir).folder
    run = f"{trial.suite}/{trial.name}"
    made: list[Any] = []
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
    """The trained model's checkpoint without optimizer state, atomically."""
    if trainer.is_global_zero:
        with atomic_output(paths.checkpoint) as tmp:
            trainer.save_checkpoint(tmp, weights_only=True)
    else:
        trainer.save_checkpoint(paths.checkpoint, weights_only=True)  # rank 0 writes; the others take part


def optimizer(settings: TrainSettings) -> Optional[Callable[..., Any]]:
    """The settings' optimizer with its init args and ``lr`` unless they set it; None for the built-in Adam."""
    if settings.optimizer is None:
        return None
    cls = read_class(settings.optimizer, "optimizer", ("params",))
    lr = {"lr": settings.lr} if "lr" in inspect.signature(cls).parameters else {}
    return functools.partial(cls, **{**lr, **settings.optimizer.init_args})


def check_models(trials: list[Trial], num_classes: Optional[int], image_shape: tuple[int, ...]) -> None:
    """Build every distinct (model, spec) once on the meta device, check it honours the spec and returns
    `num_classes` logits (None: not checked) for `image_shape`, and build each optimizer; ValueError naming cells."""
    import torch

    from lit_cifar.models import build_backbone, check_backbone, default_regularized_layers

    def check(trial: Trial) -> None:
        model = trial.model or ClassRef("lit_cifar.models.NotebookCNN")
        if trial.model is not None:
            read_class(model, "model", tuple(n for n in ("spec", "num_classes") if n not in model.init_args))
        build = functools.partial(build_backbone, model.class_path, model.init_args, trial.spec, num_classes or 10)
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
        batch = torch.zeros((2, *image_shape), device=next((p.device for p in backbone.parameters()), None))
        try:
            with torch.no_grad():
                out = backbone.eval()(batch)
        except Exception as error:  # noqa: BLE001 - whatever the forward pass raises, it cannot train
            raise ValueError(f"its forward pass on a {tuple(batch.shape)} batch fails: {_why(error)}") from None
        if tuple(out.shape) != (2, num_classes):
            raise ValueError(f"num_classes mismatch: {tuple(out.shape)[1:]} logits per image, {num_classes} classes")

    distinct = {(t.model, str(t.spec)): t for t in reversed(trials)}  # each one's first trial
    failed: list[str] = []
    for trial in reversed(distinct.values()):
        try:
            check(trial)
        except (ValueError, TypeError) as error:
            text = str(error)
            model = "NotebookCNN (the notebook's CNN)" if trial.model is None else str(trial.model)
            prefix = "" if text.startswith("model ") else f"model {model} cannot train spec {trial.spec}: "
            failed.append(f"cell {trial.cell}: {prefix}{text}")
    if failed:
        more = f"; and {len(failed) - SHOWN} more cell(s)" if len(failed) > SHOWN else ""
        raise ValueError("; ".join(failed[:SHOWN]) + more)
    for settings in {t.settings for t in trials if t.settings.optimizer}:
        build = optimizer(settings)
        try:
            build([torch.nn.Parameter(torch.zeros(1))])  # type: ignore[misc]
        except (TypeError, ValueError) as error:
            raise ValueError(f"optimizer {settings.optimizer}: {_why(error)}") from None


def check_data(trial: Trial, data_dir: Optional[str], download: bool) -> tuple[int, tuple[int, ...]]:
    """A data module of one's own checked on its first training batch against the contract for the trial's spec:
    its number of classes and image shape (C, H, W), else ValueError naming what breaks the contract."""
    import torch

    from lit_cifar.module import InputNormalization, check_augment

    dm = make_datamodule(trial, data_dir, download)
    name = f"data module {trial.data}"
    check_augment(trial.spec, dm)  # before its data is read: the spec cannot be trained as labelled
    try:
        dm.prepare_data()
        dm.setup("fit")
        images, labels = batch = next(iter(dm.train_dataloader()))
    except Exception as error:  # noqa: BLE001 - it cannot serve (images, labels): say why, before anything trains
        raise ValueError(f"{name} cannot serve a training batch (images, labels): {_why(error)}") from None
    count = class_count(dm)
    contract = f"{name} breaks the batch contract:"
    if count is None or count < 2:
        raise ValueError(f"{contract} it needs num_classes (or classes) >= 2 after setup")
    if not (
        isinstance(images, torch.Tensor)
        and (images.dtype == torch.uint8 or images.is_floating_point())
        and images.dim() == 4
        and min(images.shape[1:]) >= 1
    ):
        raise ValueError(f"{contract} images must be uint8 or float (B, C, H, W) in 0-255, got {_described(images)}")
    if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and tuple(labels.shape) == (len(images),)):
        raise ValueError(f"{contract} labels must be int64 (B,), got {_described(labels)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= count):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"{contract} labels must lie in 0-{count - 1} (num_classes {count}), got {low}-{high}")
    if trial.spec.normalize != "none":
        try:
            normalization = InputNormalization(trial.spec.normalize)
            normalization.set_statistics(*data_statistics(dm, trial.spec))
            normalization(batch[0][:1].cpu())
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    return count, tuple(images.shape[1:])


def _why(error: Exception) -> str:
    """An exception as a message names it: its type and text."""
    return f"{type(error).__name__}: {error}"


def _described(value: Any) -> str:
    """A batch's images or labels as an error names them: their dtype (else type) and shape."""
    return f"{getattr(value, 'dtype', type(value).__name__)} {tuple(getattr(value, 'shape', ()))}"


def check_plan(trials: list[Trial], options: RunOptions, needs_data: bool) -> None:
    """Check the Trainer arguments, a data module of one's own (when `needs_data`) and every (model, spec)."""
    if not trials:
        return
    for text in {t.trainer_json for t in trials} - {"{}"}:
        read_class(ClassRef("lightning.pytorch.Trainer", text), "trainer", tuple(TRAINER_OWNERS))
    if all(t.data == "cifar10" and t.model is None and t.settings.optimizer is None for t in trials):
        return  # the notebook's model and data: the library checks them
    from lit_cifar.layouts import IMAGE_SHAPE

    for data in dict.fromkeys(t.data for t in trials):  # each data level with the models that train on it
        group = [t for t in trials if t.data == data]
        num_classes = FORMATS[data].num_classes if isinstance(data, str) else None
        image_shape: tuple[int, ...] = IMAGE_SHAPE
        if not isinstance(data, str) and needs_data:
            distinct = {(t.spec.normalize, t.spec.augment): t for t in reversed(group)}  # each one's first
            for trial in reversed(distinct.values()):
                num_classes, image_shape = check_data(trial, options.data_dir, options.download)
        check_models(group, num_classes, image_shape)


def source_fingerprint(class_paths: list[str]) -> Optional[str]:
    """SHA-256 of the source of the user's packages that `class_paths` name (libraries left out), else None."""
    import importlib.util

    folders, files = [], []
    libraries = {"lit_cifar", "torch", "lightning", "pytorch_lightning", "torchvision"}  # provenance, not identity
    for package in sorted({path.partition(".")[0] for path in class_paths} - libraries):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            folders += [Path(p) for p in spec.submodule_search_locations]
        elif spec is not None and spec.origin:  # a single module: its file alone
            files.append(Path(spec.origin))
    if not folders and not files:
        return None
    digest = source_hash(folders) + "".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    return hashlib.sha256(digest.encode()).hexdigest()[:16]


def files_fingerprint(folder: Any, cache_dir: Any) -> str:
    """SHA-256 over the files under `folder`, cached by their paths, sizes and times in `cache_dir` (a cache beside
    the data is read, never written)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    cache = Path(cache_dir) / FINGERPRINTS
    for known in (cache, Path(folder).parent / FINGERPRINTS):
        try:
            return str(json.loads(known.read_text())[key])
        except (OSError, ValueError, KeyError):
            continue
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    found = digest.hexdigest()[:16]
    if cache.parent.is_dir() and os.access(cache.parent, os.W_OK):
        try:
            known = json.loads(cache.read_text()) if cache.exists() else {}
            write_text_atomic(cache, json.dumps({**known, key: found}))
        except (OSError, ValueError):
            pass  # a cache only: the next run computes it again
    return found


def builtin_fingerprint(name: str, data_dir: Any, cache_dir: Any) -> Optional[str]:
    """The fingerprint of a built-in dataset's files in `data_dir`, None where it has none."""
    folder = find_layout(Path(data_dir), FORMATS[name])
    return files_fingerprint(folder, cache_dir) if folder is not None else None


def data_fingerprint(trial: Trial, options: RunOptions) -> Optional[str]:
    """The fingerprint of the trial's data files, else of the tensors and arrays its set-up data module holds; None
    when the default folder has no data (a finished sweep reports without it)."""
    if isinstance(trial.data, str):  # a --data-dir without the dataset (CIFAR-100's for CIFAR-10) is other data
        root = Path(options.data_dir) if options.data_dir is not None else default_data_dir()
        found = builtin_fingerprint(trial.data, root, options.logdir)
        return found or (f"no {trial.data} files" if options.data_dir is not None else None)
    dm = make_datamodule(replace(trial, spec=RegularizationSpec()), options.data_dir, download=False)
    folder = getattr(dm, "data_dir", None)
    if isinstance(folder, (str, Path)) and Path(folder).is_dir():
        return files_fingerprint(folder, options.logdir)
    import numpy as np
    import torch

    dm.setup("fit")
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


def with_fingerprints(trials: list[Trial], options: RunOptions) -> list[Trial]:
    """The trials with the fingerprints of their model source and data, each computed once."""
    found: dict[Any, Optional[str]] = {}
    marked = []
    for trial in trials:
        paths = tuple(sorted(ref.class_path for ref in trial.classes.values() if isinstance(ref, ClassRef)))
        data = trial.data if isinstance(trial.data, str) else (trial.data, trial.seed)  # a module's data may be seeded
        if paths not in found:
            found[paths] = source_fingerprint(list(paths))
        if data not in found:
            found[data] = data_fingerprint(trial, options)
        prints = {"model source": found[paths], "data": found[data]}
        marked.append(replace(trial, fingerprints=tuple((k, v) for k, v in prints.items() if v is not None)))
    return marked
