"""What a suite trains besides its specs, torch-free: the model and the data (named by class path, as LightningCLI
does), and the training settings a suite varies as factors, with the short texts that name them in trial folders.

A suite file may say::

    model: {class_path: mypkg.nets.ResNet18, init_args: {width: 64}}   # default: the notebook's CNN
    data: cifar100                      # cifar10 (default), cifar100, or {class_path: ..., init_args: ...}
    factors:
      bn: [baseline, bn]                # a spec factor: levels are spec tokens
      lr: [0.001, 0.0001]               # a setting factor: levels are values of that training setting

Only what differs from the defaults enters a trial's settings hash, so the shipped suites keep their hashes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from lit_cifar.spec import number_text

DEFAULT_DATA = "cifar10"
BUILTIN_DATA = {"cifar10": "lit_cifar.data.CIFAR10DataModule", "cifar100": "lit_cifar.data.CIFAR100DataModule"}
DEFAULT_MODELS = ("lit_cifar.NotebookCNN", "lit_cifar.models.NotebookCNN")  # the notebook's CNN, however it is named
# Training settings a suite may vary as factors, in the order trial folders name them.
SETTING_FACTORS = ("lr", "lr_decay", "batch_size", "epochs", "precision", "limit_train", "optimizer")
DEFAULT_OPTIMIZER = "adam"  # the level text of the built-in Adam (the optimizer setting's None)
CELL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*")  # a trial folder's cell: one folder name, shell-friendly
CLASS_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
TREE_KEY = re.compile(r"(model|data)|(model|data|optimizer)\.init_args(\.[A-Za-z_]\w*)+|trainer\.[A-Za-z_]\w*")
# Trainer arguments a suite may not set: the setting (or flag) that owns each.
TRAINER_OWNERS = {
    "max_epochs": "the epochs setting",
    "min_epochs": "the epochs setting",
    "max_steps": "the epochs setting",
    "precision": "the precision setting",
    "limit_train_batches": "the limit_train setting",
    "accelerator": "--accelerator",
    "devices": "--devices",
    "strategy": "--strategy",
    "num_nodes": "--num-nodes",
    "logger": "--logger",
    "callbacks": "the harness (its callbacks record every trial)",
    "enable_checkpointing": "--save-model",
    "default_root_dir": "--logdir",
}


@dataclass(frozen=True)
class ClassRef:
    """A class named by its dotted path and the keyword arguments to build it with (kept as canonical JSON, so
    the reference is hashable and compares by value)."""

    class_path: str
    init_args_json: str = "{}"

    @classmethod
    def parse(cls, value: Any, what: str) -> ClassRef:
        """``"pkg.mod.Class"`` or ``{class_path: "pkg.mod.Class", init_args: {...}}``.

        Raises:
            ValueError: naming `what` and the malformed value.
        """
        if isinstance(value, str):
            value = {"class_path": value}
        if not isinstance(value, Mapping) or "class_path" not in value or set(value) - {"class_path", "init_args"}:
            raise ValueError(
                f"{what} {value!r} must be a class path or a mapping with 'class_path' and optionally 'init_args'"
            )
        path, args = value["class_path"], value.get("init_args") or {}
        if not isinstance(path, str) or not CLASS_PATH.fullmatch(path):
            raise ValueError(f"{what} class_path {path!r} must be a dotted path, e.g. mypkg.nets.ResNet18")
        if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
            raise ValueError(f"{what} {path}: init_args {args!r} must map argument names to values")
        try:
            text = json.dumps(dict(args), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{what} {path}: init_args {args!r} must be plain data (numbers, strings, lists, mappings): {error}"
            ) from None
        return cls(path, text)

    @property
    def init_args(self) -> dict[str, Any]:
        return json.loads(self.init_args_json)

    @property
    def name(self) -> str:
        return self.class_path.rpartition(".")[2]

    def to_dict(self) -> dict[str, Any]:
        return {"class_path": self.class_path, "init_args": self.init_args}

    def short(self) -> str:
        """The class name and its init args, e.g. ``SGD_lr=0.1_momentum=0.9`` (folder names)."""
        return "_".join([self.name, *(f"{k}={_text(v)}" for k, v in sorted(self.init_args.items()))])

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.init_args.items()))
        return f"{self.class_path}({args})"


DataRef = Union[str, ClassRef]  # a built-in dataset's name, or a LightningDataModule class


def parse_model(value: Any) -> Optional[ClassRef]:
    """The suite's or ``--model``'s model: None for the notebook's CNN (also when named by class path without
    init args), else its `ClassRef`."""
    if value is None or value == "":
        return None
    ref = ClassRef.parse(value, "model")
    return None if ref.class_path in DEFAULT_MODELS and ref.init_args_json == "{}" else ref


def parse_data(value: Any) -> DataRef:
    """``cifar10`` (default), ``cifar100``, or a data module's class path / ``{class_path, init_args}``."""
    if value is None or value == "":
        return DEFAULT_DATA
    if isinstance(value, str) and value.lower() in BUILTIN_DATA:
        return value.lower()
    if isinstance(value, str) and "." not in value:
        raise ValueError(
            f"data {value!r} is not one of {', '.join(BUILTIN_DATA)} nor a class path of a LightningDataModule"
        )
    ref = ClassRef.parse(value, "data")
    for name, path in BUILTIN_DATA.items():  # a built-in named by its class path is the built-in
        if ref.class_path == path and ref.init_args_json == "{}":
            return name
    return ref


def model_identity(model: Optional[ClassRef]) -> Optional[dict[str, Any]]:
    """What a trial's hash records of its model: None (nothing) for the default."""
    return None if model is None else model.to_dict()


def data_identity(data: DataRef) -> Any:
    """What a trial's hash records of its data: None (nothing) for CIFAR-10, the name of another built-in, or
    the data module's class path and init args."""
    if data == DEFAULT_DATA:
        return None
    return data if isinstance(data, str) else data.to_dict()


def data_label(data: DataRef) -> str:
    return data if isinstance(data, str) else data.short()


def _text(value: Any) -> str:
    """A value as a folder name writes it: numbers shortest-exact (``0.0001``, ``1e-05``), None as ``all``."""
    if value is None:
        return "all"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, (list, tuple)):
        return "-".join(_text(v) for v in value)
    return str(value)


def level_label(key: str, value: Any) -> str:
    """A factor level's one label, the same in folder names, result.json, DataFrames and reports: ``0.0001``,
    ``adam`` (the built-in Adam), ``SGD_momentum=0.9`` (a class), ``NotebookCNN`` (the default model)."""
    if value is None and key in ("optimizer", "model"):
        return DEFAULT_OPTIMIZER if key == "optimizer" else "NotebookCNN"
    return value.short() if isinstance(value, ClassRef) else _text(value)


def alias(key: str) -> str:
    """A factor's short name, its key's last part: ``model.init_args.depth`` is ``depth`` (folder names, columns)."""
    return key.rpartition(".")[2]


def level_text(key: str, value: Any) -> str:
    """A setting or tree factor's level as trial folders name it, e.g. ``lr=0.0001``, ``depth=2``."""
    return f"{alias(key)}={level_label(key, value)}"


def tree_key_problem(key: str) -> Optional[str]:
    """What is wrong with a factor key into the suite's config tree (``model.init_args.depth``,
    ``trainer.gradient_clip_val``, ``model``), or None."""
    if not TREE_KEY.fullmatch(key):
        return (
            "must be a spec factor, a setting, or a key into the config tree spelt as LightningCLI spells it: "
            "model, data, model.init_args.NAME, data.init_args.NAME, optimizer.init_args.NAME or trainer.NAME"
        )
    owner = TRAINER_OWNERS.get(key.partition(".")[2]) if key.startswith("trainer.") else None
    return f"is set by {owner}, not by a Trainer argument" if owner else None


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted `key` of a nested mapping to `value`, making the mappings on its way."""
    *path, last = key.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
    tree[last] = value


FLOAT_SETTINGS = ("lr", "lr_decay")


def coerce_setting(name: str, value: Any, strict: bool = False) -> Any:
    """A `TrainSettings` value as a flag or a suite file gives it, converted where the two differ: the text of a
    number for a float setting becomes that number (YAML reads ``1e-3`` as a string, the flag ``--lr 1e-3`` as
    text). Other values are returned as they are, for `setting_problem` to judge; with `strict`, text that is not
    a number raises ValueError instead."""
    if name in FLOAT_SETTINGS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            if strict:
                raise
    return value


def parse_level(name: str, value: Any) -> Any:
    """One level of the setting factor `name` as the `TrainSettings` field holds it. YAML reads ``1e-4`` as text,
    so numeric settings accept numbers written as text; ``optimizer`` takes a class path, ``{class_path,
    init_args}`` or ``adam`` (the built-in Adam); ``limit_train`` takes ``all`` for no limit."""
    if name in ("model", "data"):
        return parse_model(value) if name == "model" else parse_data(value)
    if "." in name:
        return value  # a key into the tree: the class's signature judges it when the plan is checked
    if name == "optimizer":
        return None if value in (None, DEFAULT_OPTIMIZER) else ClassRef.parse(value, "optimizer")
    if name == "limit_train" and value in (None, "all"):
        return None
    value = coerce_setting(name, value)
    if name in FLOAT_SETTINGS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def optimizer_problem(value: Any) -> Optional[str]:
    """The `TrainSettings.optimizer` rule: None (the built-in Adam) or a `ClassRef`."""
    return (
        None
        if value is None or isinstance(value, ClassRef)
        else "must be a class path, {class_path, init_args} or adam"
    )


def json_value(key: str, value: Any) -> Any:
    """A factor level's value as result.json and DataFrames hold it: a number as itself, a class (or the default
    model or optimizer) as its label."""
    if isinstance(value, ClassRef) or (value is None and key in ("optimizer", "model")):
        return level_label(key, value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def cell_view(result: dict[str, Any]) -> dict[str, Any]:
    """A result of a suite with setting factors as the report reads it: its cell (``pixel+bn,lr=0.0001``) as its
    ``spec`` row and its factor values among its ``spec_fields``, so tables, comparisons and the factorial model
    treat a setting factor as a spec field. Other results are returned as they are."""
    if "cell" not in result:
        return result
    return {
        **result,
        "spec": result["cell"],
        "spec_name": result["spec"],
        "spec_fields": {
            **(result.get("spec_fields") or {}),
            **{alias(k): v for k, v in (result.get("factors") or {}).items()},
        },
    }


# ------------------------------------------------------------------------------------------ fingerprints
LIBRARY_PACKAGES = ("lit_cifar", "torch", "lightning", "pytorch_lightning", "torchvision")  # provenance, not identity
FINGERPRINTS = ".data-fingerprints.json"  # the cache of data fingerprints, beside the data or in the logdir


def source_fingerprint(class_paths: list[str]) -> Optional[str]:
    """SHA-256 of every source file of the top-level packages the user's class paths name (lit_cifar, torch and
    Lightning left out: refactoring a library never invalidates results); None when they name none."""
    import importlib.util
    from pathlib import Path

    from ablations.store import source_hash

    packages = sorted({path.partition(".")[0] for path in class_paths} - set(LIBRARY_PACKAGES))
    folders = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            folders += [Path(p) for p in spec.submodule_search_locations]
        elif spec is not None and spec.origin:  # a single module: hash its folder's copy of it alone
            folders.append(Path(spec.origin))
    if not folders:
        return None
    import hashlib

    files = [f for f in folders if f.is_file()]
    digest = source_hash([f for f in folders if f.is_dir()]) + "".join(
        hashlib.sha256(f.read_bytes()).hexdigest() for f in files
    )
    return hashlib.sha256(digest.encode()).hexdigest()[:16]


def files_fingerprint(folders: list[Any], cache_dir: Any) -> str:
    """SHA-256 over the files under `folders` (their names and bytes), computed once: cached, under the files'
    paths, sizes and modification times, in ``.data-fingerprints.json`` in `cache_dir` (the logdir, once it exists;
    a cache beside the data is read too, never written: the data folder is not ours)."""
    import hashlib
    import os
    from pathlib import Path

    from ablations.store import write_text_atomic

    files = sorted(p for folder in map(Path, folders) for p in folder.rglob("*") if p.is_file())
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    beside = Path(folders[0]).parent if folders else Path(cache_dir)
    caches = [Path(cache_dir) / FINGERPRINTS, beside / FINGERPRINTS]
    for cache in caches:
        try:
            known = json.loads(cache.read_text())
            if key in known:
                return str(known[key])
        except (OSError, ValueError):
            continue
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    found = digest.hexdigest()[:16]
    cache = caches[0]
    if cache.parent.is_dir() and os.access(cache.parent, os.W_OK):
        try:
            known = json.loads(cache.read_text()) if cache.exists() else {}
            write_text_atomic(cache, json.dumps({**known, key: found}))
        except (OSError, ValueError):
            pass  # a cache only: the next run computes it again
    return found


def builtin_fingerprint(name: str, data_dir: Any, cache_dir: Any) -> Optional[str]:
    """The fingerprint of a built-in dataset's files in `data_dir` (the layout folder it is read from), None
    where it has none."""
    from pathlib import Path

    from lit_cifar.layouts import CIFAR10, CIFAR100, find_layout

    folder = find_layout(Path(data_dir), CIFAR100 if name == "cifar100" else CIFAR10)
    return files_fingerprint([folder], cache_dir) if folder is not None else None
