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


def level_text(name: str, value: Any) -> str:
    """A setting factor's level as trial folders and reports name it, e.g. ``lr=0.0001``, ``optimizer=adam``."""
    if name == "optimizer":
        return f"optimizer={DEFAULT_OPTIMIZER if value is None else value.short()}"
    return f"{name}={_text(value)}"


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


def json_value(value: Any) -> Any:
    """A setting's value as result.json and DataFrames hold it (an optimizer as its short text)."""
    if isinstance(value, ClassRef):
        return value.short()
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
        "spec_fields": {**(result.get("spec_fields") or {}), **(result.get("factors") or {})},
    }
