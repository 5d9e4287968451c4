"""Suites: declarative lists of specs plus their training settings, read from YAML; and the trials they expand to.

A suite file has a ``name``, optional ``description``, ``settings`` (any field of `TrainSettings`) and either
``specs`` (a list of ``{spec: TEXT, notebook: ACCURACY}`` or plain spec strings), ``factors`` (a mapping from factor
name to a list of levels, each level spec tokens or ``baseline`` for off, whose cartesian product gives the specs),
or both (explicit specs first). The shipped suites are the YAML files in ``ablations/suites/``.

A suite may also name its ``model`` and ``data`` by class path, and a factor named after a training setting
(``lr``, ``lr_decay``, ``batch_size``, ``epochs``, ``precision``, ``limit_train``, ``optimizer``) varies that
setting: every spec is crossed with every combination of their levels (`ablations.identity`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

from ablations import identity
from ablations.identity import DEFAULT_DATA, SETTING_FACTORS, ClassRef, DataRef, coerce_setting
from ablations.rules import Rule, finite, integer, one_of, optional
from ablations.store import TrialPaths
from lit_cifar.spec import RegularizationSpec

SUITES_DIR = Path(__file__).parent / "suites"
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
SEED_MAX = 2**32 - 1  # the largest seed numpy and Lightning's seed_everything accept
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")  # one folder under --logdir, never a path out of it


class SuiteError(ValueError):
    """A suite that cannot be read: unknown name, unreadable or malformed YAML, bad spec or setting."""


def _seed_list(value: Any) -> Optional[str]:
    seeds = list(value) if isinstance(value, (list, tuple)) else None
    if seeds and all(integer(0, high=SEED_MAX)(s) is None for s in seeds) and len(set(seeds)) == len(seeds):
        return None
    return f"must be a non-empty list of distinct integers from 0 to {SEED_MAX}"


SETTING_RULES: dict[str, Rule] = {  # what every TrainSettings field allows; the CLI checks its flags with these
    "epochs": integer(1),
    "batch_size": integer(1),
    "seeds": _seed_list,
    "val_size": integer(1, ": every trial reports its accuracy on held-out training images"),
    "split_seed": integer(0, ": numpy and Lightning seed with 32 bits", high=SEED_MAX),
    "limit_train": optional(integer(1)),
    "lr": finite(0),
    "lr_decay": finite(0, inclusive=True),
    "precision": one_of(PRECISIONS),
    "optimizer": identity.optimizer_problem,
}


def setting_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with `value` for the `TrainSettings` field `name` (e.g. ``"must be >= 1"``), or None."""
    return SETTING_RULES[name](value)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a trial's numbers besides its spec and seed (all part of its settings hash).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimizer step (per device under DDP).
        seeds: the seeds each spec is trained with; a seed fixes init, data order, dropout and augmentation.
        val_size: training images held out for validation (never the test set); at least 1.
        split_seed: seed of the train/validation split, the same for every trial so all see the same data.
        limit_train: train on only the first N images of the training split (None: all of them).
        lr: Adam's learning rate at step 0.
        lr_decay: Keras's legacy decay: step t uses ``lr / (1 + lr_decay * t)``.
        precision: Lightning precision, e.g. ``32-true`` (default), ``bf16-mixed`` or ``16-mixed`` (GPU).
        optimizer: None for the built-in Adam, else the optimizer's class and init args (``lr`` defaults to the
            ``lr`` setting when the class takes one; the ``lr_decay`` schedule applies to it too).

    Raises:
        ValueError: naming the field, its value and what it must be (`SETTING_RULES`).
    """

    epochs: int = 5
    batch_size: int = 128
    seeds: tuple[int, ...] = (0, 1, 2)
    val_size: int = 5000
    split_seed: int = 0
    limit_train: Optional[int] = None
    lr: float = 1e-3
    lr_decay: float = 1e-6
    precision: str = "32-true"
    optimizer: Optional[ClassRef] = None

    def __post_init__(self) -> None:
        for name in SETTING_RULES:
            value = getattr(self, name)
            problem = setting_problem(name, value)
            if problem:
                shown = list(value) if isinstance(value, tuple) else value
                raise ValueError(f"{name}={shown!r} {problem}")
        object.__setattr__(self, "seeds", tuple(self.seeds))

    def override(self, **values: Any) -> TrainSettings:
        """A copy with the values that are not None replaced (command-line overrides)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class SuiteEntry:
    spec: RegularizationSpec
    notebook: Optional[float] = None  # the notebook's reported test accuracy for this spec, if it ran it


@dataclass(frozen=True)
class Suite:
    name: str
    entries: tuple[SuiteEntry, ...]
    settings: TrainSettings = field(default_factory=TrainSettings)
    description: str = ""
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
    spec_levels: tuple[tuple[str, str], ...] = ()  # (spec factor, its level's label) for suites with factors
    trainer_json: str = "{}"  # the suite's Trainer arguments, canonical JSON
    fingerprints: tuple[tuple[str, str], ...] = ()  # ("model source" / "data", hash): identity beside the hash

    @property
    def cell(self) -> str:
        """The trial's cell of the suite's grid: its spec, then its other factors' levels
        (``pixel+bn,lr=0.0001,depth=2``); the spec alone for suites without them."""
        return ",".join([str(self.spec), *(identity.level_text(k, v) for k, v in self.factor_levels)])

    def levels(self) -> dict[str, str]:
        """{factor: its level's label} for every factor of the suite, e.g. ``{"bn": "bn", "optimizer": "adam"}``."""
        return {
            **dict(self.spec_levels),
            **{identity.alias(k): identity.level_label(k, v) for k, v in self.factor_levels},
        }

    @property
    def factors(self) -> tuple[str, ...]:
        """The keys of the suite's factors that are not spec factors (``lr``, ``model.init_args.depth``)."""
        return tuple(k for k, _ in self.factor_levels)

    @property
    def trainer(self) -> dict[str, Any]:
        return dict(json.loads(self.trainer_json))

    @property
    def name(self) -> str:
        return f"{self.cell}/seed={self.seed}"

    def paths(self, logdir: Path | str) -> TrialPaths:
        """Every file of this trial under `logdir` (its folder is ``<logdir>/<suite>/<cell>/seed=<s>``)."""
        return TrialPaths.of(logdir, self.suite, self.cell, self.seed)

    def run_dir(self, logdir: Path | str) -> Path:
        return self.paths(logdir).folder

    def hashed_settings(self) -> dict[str, Any]:
        """What determines this trial's result; a finished trial whose hash matches is not rerun. What is left at
        its default (Adam, the notebook's CNN, CIFAR-10, no Trainer arguments) is left out, so old hashes hold."""
        settings = asdict(self.settings)
        del settings["seeds"]
        del settings["optimizer"]
        hashed = {"spec": str(self.spec), "seed": self.seed, "data_parallel": self.data_parallel, **settings}
        extra = {
            "optimizer": self.settings.optimizer and self.settings.optimizer.to_dict(),
            "model": identity.model_identity(self.model),
            "data": identity.data_identity(self.data),
            "trainer": self.trainer or None,
        }
        return {**hashed, **{k: v for k, v in extra.items() if v is not None}}

    @property
    def settings_hash(self) -> str:
        text = json.dumps(self.hashed_settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def changes(self, result: dict[str, Any]) -> list[str]:
        """What differs between this trial and the finished `result` of its folder: the settings (by hash), and the
        ``model source`` or ``data`` fingerprint each recorded (one not recorded on either side is not compared)."""
        changed = [] if result.get("settings_hash") == self.settings_hash else ["settings"]
        old = result.get("fingerprints") or {}
        return changed + [k for k, v in self.fingerprints if k in old and old[k] != v]

    def record(self) -> dict[str, Any]:
        """What every result.json and error.json of this trial starts with: which trial, with which settings,
        ``levels`` ({factor: label}, every factor of its suite) and the ``fingerprints`` of its model source and
        data. A suite with factors other than spec factors adds ``cell`` (the folder's name) and ``factors``
        ({key: value})."""
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
        if self.factors:
            record["cell"] = self.cell
            record["factors"] = {k: identity.json_value(k, v) for k, v in self.factor_levels}
        return record


@dataclass(frozen=True)
class RunOptions:
    """How and where trials run; none of it changes a trial's numbers except through ``Trial.data_parallel``.

    Attributes:
        data_dir: CIFAR-10 folder (None: ``$LIT_CIFAR_DATA``, else ``./data``).
        logdir: root of the trial folders.
        accelerator, devices, strategy, num_nodes: passed to each trial's ``Trainer``.
        progress_bar: Lightning's per-epoch bar (only when a single trial runs).
        force: retrain trials that already have a matching result.
        download: let the data module download CIFAR-10 when ``data_dir`` lacks it.
        compile: ``torch.compile`` the network (same math, different kernels).
        save_model: keep each trial's final checkpoint in its folder (``TrialPaths.checkpoint``).
        loggers: Lightning loggers written beside TensorBoard (``csv``, ``mlflow``, ``wandb``).
    """

    data_dir: Optional[str] = None
    logdir: str = "logs"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    progress_bar: bool = False
    force: bool = False
    download: bool = True
    compile: bool = False
    save_model: bool = False
    loggers: tuple[str, ...] = ()


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # here, so that a command can say which extra is missing before anything fails

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SuiteError(f"cannot read suite file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise SuiteError(
            f"suite file {path} is not a YAML text file (byte {error.object[error.start]:#04x} at "
            f"offset {error.start} is not UTF-8 text): give a shipped suite's name "
            f"({', '.join(available_suites())}) or a suite .yaml file"
        ) from None
    except yaml.YAMLError as error:
        raise SuiteError(f"malformed YAML in suite file {path}: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise SuiteError(
            f"suite file {path} must hold a mapping with 'name' and 'specs' or 'factors', not {type(data).__name__}"
        )
    return data


def _listed_entry(item: Any, path: Path) -> SuiteEntry:
    """One item of ``specs``: a spec string, or ``{spec: TEXT, notebook: ACCURACY}``."""
    if isinstance(item, str):
        return SuiteEntry(RegularizationSpec.parse(item))
    if not isinstance(item, dict) or "spec" not in item or set(item) - {"spec", "notebook"}:
        raise SuiteError(
            f"suite file {path}: spec entry {item!r} must be a spec string or a mapping with 'spec' "
            "and optionally 'notebook'"
        )
    notebook = item.get("notebook")
    if notebook is not None and finite(0, inclusive=True, high=1)(notebook) is not None:
        raise SuiteError(
            f"suite file {path}: notebook={notebook!r} for spec {item['spec']!r} must be a number in "
            "[0, 1] (the notebook's test accuracy) or absent"
        )
    return SuiteEntry(RegularizationSpec.parse(item["spec"]), notebook)


def _entries(data: dict[str, Any], path: Path) -> list[SuiteEntry]:
    entries = [_listed_entry(item, path) for item in data.get("specs") or []]
    factors = data.get("factors") or {}
    if not isinstance(factors, dict) or not all(isinstance(v, list) and v for v in factors.values()):
        raise SuiteError(f"suite file {path}: 'factors' must map each factor name to a non-empty list of levels")
    factors = _spec_factors(factors)
    if factors:
        for levels in itertools.product(*factors.values()):
            tokens = [str(level) for level in levels if str(level) != "baseline"]
            entries.append(SuiteEntry(RegularizationSpec.parse("+".join(tokens) or "baseline")))
    if not entries:
        raise SuiteError(f"suite file {path} lists no specs: give 'specs', 'factors' or both")
    names = [str(e.spec) for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SuiteError(f"suite file {path} lists these specs more than once: {', '.join(repeated)}")
    return entries


def _is_spec_factor(name: str) -> bool:
    return name not in SETTING_FACTORS and name not in ("model", "data") and "." not in name


def _spec_factors(factors: dict[str, Any]) -> dict[str, Any]:
    return {name: levels for name, levels in factors.items() if _is_spec_factor(name)}


def _setting_factors(data: dict[str, Any], path: Path) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """The suite's factors that vary a training setting or a key of the config tree, each with its levels parsed
    and checked; two factors of one short name are refused (folders and columns name factors by it)."""
    found = []
    for name, levels in (data.get("factors") or {}).items():
        if _is_spec_factor(name):
            continue
        problem = None if name in SETTING_FACTORS else identity.tree_key_problem(name)
        if problem:
            raise SuiteError(f"suite file {path}: factor {name!r} {problem}")
        parsed = tuple(identity.parse_level(name, level) for level in levels)
        for level, value in zip(levels, parsed):
            problem = setting_problem(name, value) if name in SETTING_RULES else None
            if problem:
                raise SuiteError(f"suite file {path}: factor {name} level {level!r} {problem}")
        texts = [identity.level_text(name, v) for v in parsed]
        if len(set(texts)) < len(texts):
            raise SuiteError(f"suite file {path}: factor {name} lists a level more than once: {levels}")
        found.append((name, parsed))
    names = [identity.alias(name) for name, _ in found] + list(_spec_factors(data.get("factors") or {}))
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise SuiteError(f"suite file {path}: two factors share the short name {', '.join(clash)}: rename one")
    return tuple(found)


def _spec_label(spec: RegularizationSpec, levels: tuple[str, ...]) -> str:
    """The level of a spec factor that `spec` has: the most specific level whose spec fields it carries, else
    ``baseline``."""
    base = RegularizationSpec().to_dict()
    fields_of = {str(level): RegularizationSpec.parse(str(level)).to_dict() for level in levels}
    carried = [
        (len(set(f.items()) - set(base.items())), level)
        for level, f in fields_of.items()
        if level != "baseline" and all(spec.to_dict()[k] == v for k, v in f.items() if base[k] != v)
    ]
    return max(carried, key=lambda c: c[0])[1] if carried else "baseline"


def _trainer(value: Any, path: Path) -> str:
    """The suite's ``trainer`` mapping of Trainer arguments, checked (torch-free) and as canonical JSON."""
    if not isinstance(value, dict):
        raise SuiteError(f"suite file {path}: trainer {value!r} must map Trainer arguments to values")
    for key in value:
        problem = identity.tree_key_problem(f"trainer.{key}")
        if problem:
            raise SuiteError(f"suite file {path}: trainer.{key} {problem}")
    return json.dumps(value, sort_keys=True)


def _check_cells(suite: Suite, path: Path) -> None:
    """Every trial folder name of the grid must be one shell-friendly folder name."""
    for trial in expand_trials(suite, replace(suite.settings, seeds=(0,))):
        if not identity.CELL.fullmatch(trial.cell):
            raise SuiteError(
                f"suite file {path}: trial folder name {trial.cell!r} is not one folder name of "
                "letters, digits and . _ + = , -: simplify the factor's levels"
            )


def _designed(data: dict[str, Any], path: Path, entries: list[SuiteEntry]) -> list[SuiteEntry]:
    """The entries a suite's ``design`` keeps: all for ``full`` (or none given), else the listed specs and the
    factor combinations `ablations.designs.select` chooses (rows of the full grid, so the same trials)."""
    from ablations.designs import fraction_of, select

    try:
        reduction = fraction_of(data.get("design"))
    except ValueError as error:
        raise SuiteError(f"suite file {path}: {error}") from None
    if reduction == 1:
        return entries
    factors = _spec_factors(data.get("factors") or {})
    if not factors:
        raise SuiteError(f"suite file {path}: a fractional design needs 'factors'")
    if len(factors) < len(data.get("factors") or {}):
        raise SuiteError(
            f"suite file {path}: a fractional design selects spec-factor combinations only; it cannot "
            "be combined with setting or config-tree factors: use design: full"
        )
    levels = [len(v) for v in factors.values()]
    grid = list(itertools.product(*(range(k) for k in levels)))
    grid_entries = entries[len(entries) - len(grid) :]
    try:
        keep = {grid.index(run) for run in select(levels, reduction)}
    except (ValueError, ImportError) as error:
        raise SuiteError(f"suite file {path}: {error}") from None
    return entries[: len(entries) - len(grid)] + [e for i, e in enumerate(grid_entries) if i in keep]


def load_suite(name_or_path: str) -> Suite:
    """A shipped suite by name (``notebook``, ``full``, ...) or a suite YAML file by path.

    Raises:
        SuiteError: naming the suite or file and what is wrong with it.
    """
    path = Path(name_or_path)
    if not (name_or_path.endswith((".yaml", ".yml")) or path.exists()):
        path = SUITES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise SuiteError(
                f"unknown suite {name_or_path!r}: choose one of {', '.join(available_suites())} "
                "or give the path of a suite .yaml file"
            )
    data = _read_yaml(path)
    allowed = ("name", "description", "model", "data", "optimizer", "trainer", "settings", "specs", "factors", "design")
    unknown = set(data) - set(allowed)
    if unknown:
        raise SuiteError(f"suite file {path}: unknown keys {sorted(unknown)}; allowed: {', '.join(allowed)}")
    if "optimizer" in data and "optimizer" in (data.get("settings") or {}):
        raise SuiteError(f"suite file {path}: optimizer is given twice: keep the top-level one")
    settings_data = data.get("settings") or {}
    valid = {f.name for f in fields(TrainSettings)}
    if not isinstance(settings_data, dict) or set(settings_data) - valid:
        raise SuiteError(f"suite file {path}: bad settings {settings_data!r}; allowed keys: {', '.join(sorted(valid))}")
    name = str(data.get("name") or path.stem)
    if not SUITE_NAME.fullmatch(name):
        raise SuiteError(
            f"suite file {path}: name {name!r} must be one folder name (letters, digits and . _ + = -, "
            "not starting with '.'): the suite's trials are written under LOGDIR/NAME/"
        )
    try:
        settings_data = {
            **{k: coerce_setting(k, v) for k, v in settings_data.items()},
            "optimizer": identity.parse_level("optimizer", data.get("optimizer", settings_data.get("optimizer"))),
        }
        spec_factors = _spec_factors(data.get("factors") or {})
        suite = Suite(
            name=name,
            entries=tuple(_designed(data, path, _entries(data, path))),
            settings=TrainSettings(**settings_data),
            description=str(data.get("description", "")),
            model=identity.parse_model(data.get("model")),
            data=identity.parse_data(data.get("data")),
            setting_factors=_setting_factors(data, path),
            spec_factors=tuple((k, tuple(str(v) for v in levels)) for k, levels in spec_factors.items()),
            trainer_json=_trainer(data.get("trainer") or {}, path),
        )
        _check_cells(suite, path)
        return suite
    except (ValueError, TypeError, AttributeError) as error:
        if isinstance(error, SuiteError):
            raise
        raise SuiteError(f"suite file {path}: {error}") from None


def _cell(suite: Suite, settings: TrainSettings, combo: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The Trial fields of one combination of the non-spec factors' levels: each setting factor replaces its
    setting, each key into the tree (``model.init_args.depth``, ``trainer.gradient_clip_val``, ``model``) its value.
    """
    tree: dict[str, Any] = {
        "model": suite.model,
        "data": suite.data,
        "optimizer": settings.optimizer,
        "trainer": json.loads(suite.trainer_json),
    }
    for key, value in combo:
        root, _, rest = key.partition(".")
        if key in SETTING_FACTORS and key != "optimizer":
            settings = replace(settings, **{key: value})
        elif not rest:
            tree[root] = value
        elif root == "trainer":
            tree["trainer"][rest] = value
        else:
            base = tree[root] or (ClassRef("lit_cifar.models.NotebookCNN") if root == "model" else None)
            if not isinstance(base, ClassRef):
                raise ValueError(f"factor {key} needs {root}: {{class_path: ...}} to set its init_args")
            changed = base.to_dict()
            identity.set_key(changed, rest, value)
            tree[root] = ClassRef.parse(changed, root)
    return {
        "settings": replace(settings, optimizer=tree["optimizer"]),
        "model": tree["model"],
        "data": tree["data"],
        "trainer_json": json.dumps(tree["trainer"], sort_keys=True),
        "factor_levels": combo,
    }


def expand_trials(
    suite: Suite, settings: TrainSettings, only: Optional[list[str]] = None, data_parallel: int = 1
) -> list[Trial]:
    """The suite's trials in a fixed order: cells in suite order (specs in suite order, each with every
    combination of the other factors' levels, the last varying fastest), each with every seed.

    Raises:
        SuiteError: if a name in `only` is neither a spec nor a cell (``SPEC,lr=X``) of the suite.
    """
    combos = list(itertools.product(*([(k, v) for v in levels] for k, levels in suite.setting_factors)))
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
            matching = {t.cell for t in trials if text == t.cell}
            if not matching:
                name = str(RegularizationSpec.parse(text.split(",")[0])) if "," not in text else None
                matching = {t.cell for t in trials if name is not None and str(t.spec) == name}
            if not matching:
                raise SuiteError(
                    f"spec {text!r} is not in suite {suite.name!r}; its specs: "
                    f"{', '.join(dict.fromkeys(t.cell for t in trials))}"
                )
            wanted |= matching
    return [replace(trial, seed=seed) for trial in trials if trial.cell in wanted for seed in settings.seeds]


def shard(trials: list[Trial], k: int, n: int) -> list[Trial]:
    """The k-th (1-based) of n disjoint parts of `trials`: every n-th trial starting at k-1."""
    if not (1 <= k <= n):
        raise ValueError(f"shard {k}/{n} is out of range: K must be between 1 and N")
    return trials[k - 1 :: n]
