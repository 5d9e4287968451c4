"""A suite's config tree, read from YAML (or a mapping) and expanded into cells and trials, without torch.

A factor is a spec factor, a setting (`SETTING_FACTORS`) or a key into the tree (``model.init_args.depth``); a cell
is a spec with a level of each other factor, a trial a cell and a seed. Defaults are left out of a trial's hash.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from ablations.rules import Rule, check, finite, integer, one_of, optional
from ablations.store import TrialPaths
from lit_cifar.spec import RegularizationSpec, number_text

SUITES_DIR = Path(__file__).parent / "suites"
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
SEED_MAX = 2**32 - 1  # the largest seed numpy and Lightning's seed_everything accept
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")  # one folder under --logdir, never a path out of it
CELL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*")  # a trial folder's cell: one folder name, shell-friendly
TREE_KEY = re.compile(r"(model|data)|(model|data|optimizer)\.init_args(\.[A-Za-z_]\w*)+|trainer\.[A-Za-z_]\w*")
DEFAULT_DATA = "cifar10"
BUILTIN_DATA = {"cifar10": "lit_cifar.data.CIFAR10DataModule", "cifar100": "lit_cifar.data.CIFAR100DataModule"}
DEFAULT_MODELS = ("lit_cifar.NotebookCNN", "lit_cifar.models.NotebookCNN")  # the notebook's CNN, however named
DEFAULT_OPTIMIZER = "adam"  # the label of the built-in Adam (the optimizer setting's None)
SETTING_FACTORS = ("lr", "lr_decay", "batch_size", "epochs", "precision", "limit_train", "optimizer")
TRAINER_OWNERS = {  # Trainer arguments a suite may not set: the setting (or flag) that owns each
    **dict.fromkeys(("max_epochs", "min_epochs", "max_steps"), "the epochs setting"),
    "precision": "the precision setting",
    "limit_train_batches": "the limit_train setting",
    **{k: "--" + k.replace("_", "-") for k in ("accelerator", "devices", "strategy", "num_nodes", "logger")},
    "callbacks": "the harness (its callbacks record every trial)",
    "enable_checkpointing": "--save-model",
    "default_root_dir": "--logdir",
}
TOP_KEYS = ("name", "description", "model", "data", "optimizer", "trainer", "settings", "specs", "factors", "design")


class SuiteError(ValueError):
    """A suite that cannot be read: unknown name, unreadable or malformed YAML, bad spec, factor or setting."""


@dataclass(frozen=True)
class ClassRef:
    """A class of the tree: its dotted path and init args (canonical JSON, so it is hashable)."""

    class_path: str
    init_args_json: str = "{}"

    @property
    def init_args(self) -> dict[str, Any]:
        return json.loads(self.init_args_json)

    def to_dict(self) -> dict[str, Any]:
        return {"class_path": self.class_path, "init_args": self.init_args}

    def short(self) -> str:
        """The class name and its init args, e.g. ``SGD_lr=0.1_momentum=0.9`` (its level's label)."""
        name = self.class_path.rpartition(".")[2]
        return "_".join([name, *(f"{k}={_text(v)}" for k, v in sorted(self.init_args.items()))])

    def __str__(self) -> str:
        return f"{self.class_path}({', '.join(f'{k}={v!r}' for k, v in sorted(self.init_args.items()))})"


DataRef = Union[str, ClassRef]  # a built-in dataset's name, or a LightningDataModule class


def tree_value(root: str, value: Any) -> Any:
    """A ``model``, ``data`` or ``optimizer`` value as trials hold it: None for the notebook's CNN and the built-in
    Adam, a built-in dataset's name (``cifar10``, ``cifar100``), else a `ClassRef` (a default's path is the default)."""
    if root == "data":
        if value in (None, ""):
            return DEFAULT_DATA
        if isinstance(value, str) and value.lower() in BUILTIN_DATA:
            return value.lower()
        if isinstance(value, str) and "." not in value:
            raise ValueError(f"data {value!r} is not one of {', '.join(BUILTIN_DATA)} nor a LightningDataModule's path")
    elif value in (None, "") or (root == "optimizer" and value == DEFAULT_OPTIMIZER):
        return None
    if isinstance(value, str):
        value = {"class_path": value}
    if not isinstance(value, Mapping) or "class_path" not in value or set(value) - {"class_path", "init_args"}:
        raise ValueError(f"{root} {value!r} must be a class path or a mapping with 'class_path' and 'init_args'")
    path, args = value["class_path"], value.get("init_args") or {}
    if not isinstance(path, str) or "." not in path.strip("."):
        raise ValueError(f"{root} class_path {path!r} must be a dotted path, e.g. mypkg.nets.ResNet18")
    if not isinstance(args, Mapping):
        raise ValueError(f"{root} {path}: init_args {args!r} must map argument names to values")
    try:
        ref = ClassRef(path, json.dumps(dict(args), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{root} {path}: init_args {args!r} must be plain data: {error}") from None
    defaults: dict[str, Any] = {path: name for name, path in BUILTIN_DATA.items()} if root == "data" else {}
    defaults.update(dict.fromkeys(DEFAULT_MODELS if root == "model" else (), None))
    return defaults[ref.class_path] if ref.class_path in defaults and ref.init_args_json == "{}" else ref


def _text(value: Any) -> str:
    """A value as a label writes it: numbers shortest-exact (``0.0001``, ``1e-05``), None as ``all``."""
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
    """A level's one label in folders, results and reports: ``0.0001``, ``adam``, ``SGD_momentum=0.9``."""
    if value is None and key in ("optimizer", "model"):
        return DEFAULT_OPTIMIZER if key == "optimizer" else "NotebookCNN"
    return value.short() if isinstance(value, ClassRef) else _text(value)


def alias(key: str) -> str:
    """A factor's short name: ``model.init_args.depth`` is ``depth``."""
    return key.rpartition(".")[2]


def _json_value(key: str, value: Any) -> Any:
    """A level as result.json and DataFrames hold it: a number as itself, a class or a default as its label."""
    if isinstance(value, ClassRef) or (value is None and key in ("optimizer", "model")):
        return level_label(key, value)
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def cell_view(result: dict[str, Any]) -> dict[str, Any]:
    """A result as the report reads it: its cell as its ``spec`` and its factor values among its ``spec_fields``."""
    if "cell" not in result:
        return result
    factors = {alias(k): v for k, v in (result.get("factors") or {}).items()}
    fields_ = {**(result.get("spec_fields") or {}), **factors}
    return {**result, "spec": result["cell"], "spec_name": result["spec"], "spec_fields": fields_}


def coerce_setting(name: str, value: Any) -> Any:
    """``lr`` or ``lr_decay`` written as text (YAML reads ``1e-3`` so) as its number; other values as given."""
    if name in ("lr", "lr_decay") and isinstance(value, str):
        with suppress(ValueError):
            return float(value)
    return value


def _seed_list(value: Any) -> Optional[str]:
    seeds = list(value) if isinstance(value, (list, tuple)) else None
    if seeds and all(integer(0, high=SEED_MAX)(s) is None for s in seeds) and len(set(seeds)) == len(seeds):
        return None
    return f"must be a non-empty list of distinct integers from 0 to {SEED_MAX}"


def _checked(default: Any, rule: Rule) -> Any:
    """A `TrainSettings` field that `rule` checks (in the suite file, the flag of its name and a factor's levels)."""
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class TrainSettings:
    """What besides the spec, seed and tree determines a trial's numbers (all of it hashed): the flags of its names."""

    epochs: int = _checked(5, integer(1))
    batch_size: int = _checked(128, integer(1))
    seeds: tuple[int, ...] = _checked((0, 1, 2), _seed_list)
    val_size: int = _checked(5000, integer(1, ": every trial reports its accuracy on held-out training images"))
    split_seed: int = _checked(0, integer(0, ": numpy and Lightning seed with 32 bits", high=SEED_MAX))
    limit_train: Optional[int] = _checked(None, optional(integer(1)))
    lr: float = _checked(1e-3, finite(0))
    lr_decay: float = _checked(1e-6, finite(0, inclusive=True))
    precision: str = _checked("32-true", one_of(PRECISIONS))
    optimizer: Optional[ClassRef] = _checked(
        None, lambda v: None if v is None or isinstance(v, ClassRef) else "must be a class path or adam"
    )

    def __post_init__(self) -> None:
        for name, rule in SETTING_RULES.items():
            value = getattr(self, name)
            check(name, list(value) if isinstance(value, tuple) else value, rule)
        object.__setattr__(self, "seeds", tuple(self.seeds))


SETTING_RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(TrainSettings)}


@dataclass(frozen=True)
class SuiteEntry:
    spec: RegularizationSpec
    notebook: Optional[float] = None  # the notebook's reported test accuracy for this spec, if it ran it


@dataclass(frozen=True)
class Suite:
    name: str
    entries: tuple[SuiteEntry, ...]
    settings: TrainSettings = field(default_factory=TrainSettings)
    model: Optional[ClassRef] = None  # None: the notebook's CNN
    data: DataRef = DEFAULT_DATA
    setting_factors: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (setting or tree key, its levels), in order
    spec_factors: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (spec factor, its levels as written)
    trainer_json: str = "{}"  # Trainer arguments, canonical JSON

    @property
    def spec_names(self) -> list[str]:
        return [str(e.spec) for e in self.entries]


@dataclass(frozen=True)
class Trial:
    """One training run: a cell of a suite (a spec and a level of each other factor), a seed, and the settings."""

    suite: str
    spec: RegularizationSpec
    seed: int
    settings: TrainSettings
    order: int  # the cell's position in its suite, so reports list cells in suite order
    notebook: Optional[float] = None
    data_parallel: int = 1  # devices x nodes one trial trains on (changes the global batch, so it is hashed)
    model: Optional[ClassRef] = None  # None: the notebook's CNN
    data: DataRef = DEFAULT_DATA
    factor_levels: tuple[tuple[str, Any], ...] = ()  # (key, level) of each factor that is not a spec factor
    spec_levels: tuple[tuple[str, str], ...] = ()  # (spec factor, its level's label)
    trainer_json: str = "{}"  # the cell's Trainer arguments, canonical JSON
    fingerprints: tuple[tuple[str, str], ...] = ()  # ("model source" / "data", hash): identity beside the hash

    @property
    def cell(self) -> str:
        """The spec and the other factors' levels (``pixel+bn,lr=0.0001,depth=2``): the trial's folder."""
        return ",".join([str(self.spec), *(f"{alias(k)}={level_label(k, v)}" for k, v in self.factor_levels)])

    def levels(self) -> dict[str, str]:
        """{factor: its level's label} for every factor of the suite."""
        return {**dict(self.spec_levels), **{alias(k): level_label(k, v) for k, v in self.factor_levels}}

    @property
    def trainer(self) -> dict[str, Any]:
        return dict(json.loads(self.trainer_json))

    @property
    def classes(self) -> dict[str, Any]:
        """The tree's ``model``, ``data`` and ``optimizer``: None (a default), a built-in dataset or a `ClassRef`."""
        return {"model": self.model, "data": self.data, "optimizer": self.settings.optimizer}

    @property
    def name(self) -> str:
        return f"{self.cell}/seed={self.seed}"

    def paths(self, logdir: Path | str) -> TrialPaths:
        """Every file of this trial under `logdir` (in ``<logdir>/<suite>/<cell>/seed=<s>``)."""
        return TrialPaths.of(logdir, self.suite, self.cell, self.seed)

    def hashed_settings(self) -> dict[str, Any]:
        """What determines this trial's result; the tree's defaults are left out, so older hashes hold."""
        settings = {k: v for k, v in asdict(self.settings).items() if k not in ("seeds", "optimizer")}
        tree = {k: v.to_dict() if isinstance(v, ClassRef) else v for k, v in self.classes.items()}
        tree["trainer"] = self.trainer or None
        hashed = {"spec": str(self.spec), "seed": self.seed, "data_parallel": self.data_parallel, **settings}
        return {**hashed, **{k: v for k, v in tree.items() if v not in (None, DEFAULT_DATA)}}

    @property
    def settings_hash(self) -> str:
        text = json.dumps(self.hashed_settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def changes(self, result: dict[str, Any]) -> list[str]:
        """What differs from the finished `result`: ``settings`` (by hash), and the fingerprints both recorded."""
        changed = [] if result.get("settings_hash") == self.settings_hash else ["settings"]
        old = result.get("fingerprints") or {}
        return changed + [k for k, v in self.fingerprints if k in old and old[k] != v]

    def record(self) -> dict[str, Any]:
        """What every result.json and error.json of this trial starts with: which trial, its settings and levels."""
        record = {
            "suite": self.suite,
            "spec": str(self.spec),
            "spec_fields": self.spec.to_dict(),
            "seed": self.seed,
            "order": self.order,
            "notebook": self.notebook,
            "settings": self.hashed_settings(),
            "settings_hash": self.settings_hash,
            "levels": self.levels(),
        }
        if self.fingerprints:
            record["fingerprints"] = dict(self.fingerprints)
        if self.factor_levels:
            record["cell"] = self.cell
            record["factors"] = {k: _json_value(k, v) for k, v in self.factor_levels}
        return record


@dataclass(frozen=True)
class RunOptions:
    """How and where trials run (the flags of the same names); none of it changes a trial's numbers."""

    data_dir: Optional[str] = None
    logdir: str = "logs"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    progress_bar: bool = False  # Lightning's per-epoch bar (only when a single trial runs)
    force: bool = False
    download: bool = True  # let the data module download CIFAR-10 when data_dir lacks it
    compile: bool = False
    save_model: bool = False
    loggers: tuple[str, ...] = ()


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def _read(source: Union[str, Path, Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(how messages name the suite, its content)."""
    if isinstance(source, Mapping):
        return f"suite {source.get('name', '')!r}", {**source, "name": source.get("name") or "suite"}
    import yaml  # here, so that a command can say which extra is missing before anything fails

    path = Path(source)
    if not (str(source).endswith((".yaml", ".yml")) or path.exists()):
        path = SUITES_DIR / f"{source}.yaml"
        if not path.exists():
            raise SuiteError(f"unknown suite {str(source)!r}: choose one of {', '.join(available_suites())} or a .yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SuiteError(f"cannot read suite file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        byte = f"byte {error.object[error.start]:#04x} at offset {error.start} is not UTF-8 text"
        raise SuiteError(f"suite file {path} is not a YAML text file ({byte}): give a suite's name or .yaml") from None
    except yaml.YAMLError as error:
        raise SuiteError(f"malformed YAML in suite file {path}: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"suite file {path} must hold a mapping with 'name' and 'specs' or 'factors'")
    return f"suite file {path}", {**data, "name": data.get("name") or path.stem}


def load_suite(source: Union[str, Path, Mapping[str, Any]]) -> Suite:
    """A shipped suite by name, a suite YAML file by path, or a file's content (SuiteError saying what is wrong)."""
    where, data = _read(source)
    try:
        return _suite(data)
    except (ValueError, TypeError, AttributeError, ImportError) as error:
        raise SuiteError(f"{where}: {error}") from None


def _suite(data: dict[str, Any]) -> Suite:
    unknown = set(data) - set(TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {', '.join(TOP_KEYS)}")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict) or set(settings) - set(SETTING_RULES):
        raise ValueError(f"bad settings {settings!r}; allowed keys: {', '.join(sorted(SETTING_RULES))}")
    if "optimizer" in data and "optimizer" in settings:
        raise ValueError("optimizer is given twice: keep the top-level one")
    name = str(data.get("name"))
    if not SUITE_NAME.fullmatch(name):
        raise ValueError(f"name {name!r} must be one folder name (letters, digits, . _ + = -): LOGDIR/NAME/")
    factors = data.get("factors") or {}
    if not isinstance(factors, dict) or not all(isinstance(v, list) and v for v in factors.values()):
        raise ValueError("'factors' must map each factor name to a non-empty list of levels")
    spec_factors = {k: v for k, v in factors.items() if _is_spec_factor(k)}
    optimizer = data.get("optimizer", settings.get("optimizer"))
    trainer = data.get("trainer") or {}
    if not isinstance(trainer, dict):
        raise ValueError(f"trainer {trainer!r} must map Trainer arguments to values")
    for key in trainer:
        _check_key(f"trainer.{key}")
    suite = Suite(
        name=name,
        entries=tuple(_entries(data, spec_factors)),
        settings=TrainSettings(
            **{k: coerce_setting(k, v) for k, v in settings.items() if k != "optimizer"},
            optimizer=tree_value("optimizer", optimizer),
        ),
        model=tree_value("model", data.get("model")),
        data=tree_value("data", data.get("data")),
        setting_factors=_tree_factors(factors),
        spec_factors=tuple((k, tuple(map(str, v))) for k, v in spec_factors.items()),
        trainer_json=json.dumps(trainer, sort_keys=True),
    )
    for trial in expand_trials(suite, replace(suite.settings, seeds=(0,))):
        if not CELL.fullmatch(trial.cell):
            raise ValueError(f"trial folder {trial.cell!r} must be one folder name (letters, digits, . _ + = , -)")
    return suite


def _is_spec_factor(key: str) -> bool:
    return key not in SETTING_FACTORS and key not in ("model", "data") and "." not in key


def _check_key(key: str) -> None:
    """Refuse a key LightningCLI would not spell so, or a Trainer argument a setting or flag owns."""
    if not TREE_KEY.fullmatch(key):
        keys = "model, data, model.init_args.NAME, data.init_args.NAME, optimizer.init_args.NAME or trainer.NAME"
        raise ValueError(f"factor {key!r} must be a spec factor, a setting or a key into the config tree: {keys}")
    owner = TRAINER_OWNERS.get(key.partition(".")[2]) if key.startswith("trainer.") else None
    if owner:
        raise ValueError(f"{key} is set by {owner}, not by a Trainer argument")


def _level(key: str, value: Any) -> Any:
    """One level of a setting or tree factor as trials hold it (``limit_train: all`` is no limit)."""
    if key in ("model", "data", "optimizer"):
        return tree_value(key, value)
    if "." in key:
        return value  # a key into a class's init args or the Trainer's: jsonargparse judges it (ablations.custom)
    if key == "limit_train" and value in (None, "all"):
        return None
    value = coerce_setting(key, value)
    return float(value) if key in ("lr", "lr_decay") and type(value) is int else value


def _tree_factors(factors: dict[str, list[Any]]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """The setting and tree factors, with their levels read and checked."""
    found = []
    for key, levels in factors.items():
        if _is_spec_factor(key):
            continue
        if key not in SETTING_FACTORS:
            _check_key(key)
        values = tuple(_level(key, level) for level in levels)
        for level, value in zip(levels, values):
            problem = SETTING_RULES[key](value) if key in SETTING_RULES else None
            if problem:
                raise ValueError(f"factor {key} level {level!r} {problem}")
        if len({level_label(key, v) for v in values}) < len(values):
            raise ValueError(f"factor {key} lists a level more than once: {levels}")
        found.append((key, values))
    names = [alias(k) for k in factors]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"two factors share the short name {', '.join(clash)}: rename one")
    return tuple(found)


def _entries(data: dict[str, Any], spec_factors: dict[str, list[Any]]) -> list[SuiteEntry]:
    """The listed specs, then the spec factors' grid (or the design's rows)."""
    entries = []
    for item in data.get("specs") or []:
        item = {"spec": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "spec" not in item or set(item) - {"spec", "notebook"}:
            raise ValueError(f"spec entry {item!r} must be a spec string or a mapping with 'spec' and 'notebook'")
        notebook = item.get("notebook")
        if notebook is not None and finite(0, inclusive=True, high=1)(notebook) is not None:
            raise ValueError(f"notebook={notebook!r} for spec {item['spec']!r} must be a number in [0, 1] or absent")
        entries.append(SuiteEntry(RegularizationSpec.parse(item["spec"]), notebook))
    reduction = _fraction(data.get("design"))
    if reduction > 1 and (not spec_factors or len(spec_factors) < len(data.get("factors") or {})):
        raise ValueError("a fractional design selects spec-factor combinations only: give spec factors alone")
    from ablations.designs import select  # in grid order; the full grid needs no pyDOE

    for run in select([len(v) for v in spec_factors.values()], reduction) if spec_factors else []:
        levels = [str(v[i]) for v, i in zip(spec_factors.values(), run)]
        tokens = [level for level in levels if level != "baseline"]
        entries.append(SuiteEntry(RegularizationSpec.parse("+".join(tokens) or "baseline")))
    if not entries:
        raise ValueError("lists no specs: give 'specs', 'factors' or both")
    names = [str(e.spec) for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"lists these specs more than once: {', '.join(repeated)}")
    return entries


def _fraction(value: Any) -> int:
    """The reduction R of ``design``: 1 for ``full`` (or absent), R for ``{fraction: R}`` (`ablations.designs`)."""
    if value in (None, "full"):
        return 1
    if isinstance(value, dict) and set(value) == {"fraction"} and integer(1)(value["fraction"]) is None:
        return int(value["fraction"])
    raise ValueError(f"design {value!r} must be 'full' or {{fraction: R}} with an integer R >= 1 (2: a half)")


def _spec_label(spec: RegularizationSpec, levels: tuple[str, ...]) -> str:
    """The most specific level of a spec factor whose fields `spec` carries, else baseline."""
    base = RegularizationSpec().to_dict()
    carried = []
    for level in levels:
        own = RegularizationSpec.parse(level).to_dict()
        if level != "baseline" and all(spec.to_dict()[k] == v for k, v in own.items() if base[k] != v):
            carried.append((len(set(own.items()) - set(base.items())), level))
    return max(carried, key=lambda c: c[0])[1] if carried else "baseline"


def _cell(suite: Suite, settings: TrainSettings, combo: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The Trial fields of one combination of levels: each replaces its setting or its value in the tree."""
    tree: dict[str, Any] = {"model": suite.model, "data": suite.data, "optimizer": settings.optimizer}
    trainer = json.loads(suite.trainer_json)
    for key, value in combo:
        root, _, rest = key.partition(".")
        if key in SETTING_FACTORS and key != "optimizer":
            settings = replace(settings, **{key: value})
        elif not rest:
            tree[root] = value
        elif root == "trainer":
            trainer[rest] = value
        else:
            base = tree[root] or (ClassRef("lit_cifar.models.NotebookCNN") if root == "model" else None)
            if not isinstance(base, ClassRef):
                raise ValueError(f"factor {key} needs {root}: {{class_path: ...}} to set its init_args")
            changed = base.to_dict()
            *path, last = rest.split(".")
            node = changed
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
            tree[root] = tree_value(root, changed)
    return {
        "settings": replace(settings, optimizer=tree["optimizer"]),
        "model": tree["model"],
        "data": tree["data"],
        "trainer_json": json.dumps(trainer, sort_keys=True),
        "factor_levels": combo,
    }


def expand_trials(
    suite: Suite, settings: TrainSettings, only: Optional[Sequence[str]] = None, data_parallel: int = 1
) -> list[Trial]:
    """The suite's trials: cells in suite order (the last factor varying fastest), each with every seed; `only`
    keeps the named specs or cells (SuiteError for a name that is neither)."""
    combos = itertools.product(*([(k, v) for v in levels] for k, levels in suite.setting_factors))
    cells = [_cell(suite, settings, combo) for combo in combos]
    trials = [
        Trial(
            suite.name,
            entry.spec,
            0,
            order=order,
            notebook=entry.notebook,
            data_parallel=data_parallel,
            spec_levels=tuple((k, _spec_label(entry.spec, levels)) for k, levels in suite.spec_factors),
            **cell,
        )
        for order, (entry, cell) in enumerate(itertools.product(suite.entries, cells))
    ]
    wanted = {trial.cell for trial in trials}
    if only:
        wanted = set()
        for text in only:
            spec = str(RegularizationSpec.parse(text)) if "," not in text else None
            matching = {t.cell for t in trials if text == t.cell or str(t.spec) == spec}
            if not matching:
                raise SuiteError(
                    f"spec {text!r} is not in suite {suite.name!r}; its specs: "
                    f"{', '.join(dict.fromkeys(t.cell for t in trials))}"
                )
            wanted |= matching
    return [replace(trial, seed=seed) for trial in trials if trial.cell in wanted for seed in settings.seeds]
