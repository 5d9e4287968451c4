"""Suites: declarative lists of specs plus their training settings, read from YAML; and the trials they expand to.

A suite file has a ``name``, optional ``description``, ``settings`` (any field of `TrainSettings`) and either
``specs`` (a list of ``{spec: TEXT, notebook: ACCURACY}`` or plain spec strings), ``factors`` (a mapping from factor
name to a list of levels, each level spec tokens or ``baseline`` for off, whose cartesian product gives the specs),
or both (explicit specs first). ``notebook.yaml`` and ``full.yaml`` ship in ``ablations/suites/``; ``seed`` is
an alias of ``notebook`` (its old name, which read like a random seed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from lit_cifar.spec import RegularizationSpec

SUITES_DIR = Path(__file__).parent / "suites"
SUITE_ALIASES = {"seed": "notebook"}  # old name -> shipped suite
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


class SuiteError(ValueError):
    """A suite that cannot be read: unknown name, unreadable or malformed YAML, bad spec or setting."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a trial's numbers besides its spec and seed (all part of its settings hash).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimizer step (per device under DDP).
        seeds: the seeds each spec is trained with; a seed fixes init, data order, dropout and augmentation.
        val_size: training images held out for validation (never the test set).
        split_seed: seed of the train/validation split, the same for every trial so all see the same data.
        limit_train: train on only the first N images of the training split (None: all of them).
        lr: Adam's learning rate at step 0.
        lr_decay: Keras's legacy decay: step t uses ``lr / (1 + lr_decay * t)``.
        precision: Lightning precision, e.g. ``32-true`` (default), ``bf16-mixed`` or ``16-mixed`` (GPU).
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not self.seeds or not all(isinstance(s, int) and s >= 0 for s in self.seeds):
            raise ValueError(f"seeds={list(self.seeds)!r} must be a non-empty list of integers >= 0")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={list(self.seeds)!r} has a repeated seed")
        if not isinstance(self.val_size, int) or self.val_size < 0:
            raise ValueError(f"val_size={self.val_size!r} must be an integer >= 0")
        if self.limit_train is not None and (not isinstance(self.limit_train, int) or self.limit_train < 1):
            raise ValueError(f"limit_train={self.limit_train!r} must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r} must be a number > 0")
        if not (isinstance(self.lr_decay, (int, float)) and self.lr_decay >= 0):
            raise ValueError(f"lr_decay={self.lr_decay!r} must be a number >= 0")

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

    @property
    def spec_names(self) -> list[str]:
        return [str(e.spec) for e in self.entries]


@dataclass(frozen=True)
class Trial:
    """One training run: a spec of a suite, a seed, and the settings."""

    suite: str
    spec: RegularizationSpec
    seed: int
    settings: TrainSettings
    order: int  # the spec's position in its suite, so reports list specs in suite order
    notebook: Optional[float] = None
    data_parallel: int = 1  # devices x nodes one trial trains on (changes the global batch, so it is hashed)

    @property
    def name(self) -> str:
        return f"{self.spec}/seed={self.seed}"

    def run_dir(self, logdir: Path) -> Path:
        return Path(logdir) / self.suite / str(self.spec) / f"seed={self.seed}"

    def hashed_settings(self) -> dict[str, Any]:
        """What determines this trial's result; a finished trial whose hash matches is not rerun."""
        settings = asdict(self.settings)
        del settings["seeds"]
        return {"spec": str(self.spec), "seed": self.seed, "data_parallel": self.data_parallel, **settings}

    @property
    def settings_hash(self) -> str:
        text = json.dumps(self.hashed_settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise SuiteError(f"cannot read suite file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SuiteError(f"malformed YAML in suite file {path}: {error}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"suite file {path} must hold a mapping with 'name' and 'specs' or 'factors', "
                         f"not {type(data).__name__}")
    return data


def _entries(data: dict[str, Any], path: Path) -> list[SuiteEntry]:
    entries: list[SuiteEntry] = []
    for item in data.get("specs") or []:
        text, notebook = (item, None) if isinstance(item, str) else (item.get("spec"), item.get("notebook"))
        entries.append(SuiteEntry(RegularizationSpec.parse(text), notebook))
    factors = data.get("factors") or {}
    if not isinstance(factors, dict) or not all(isinstance(v, list) and v for v in factors.values()):
        raise SuiteError(f"suite file {path}: 'factors' must map each factor name to a non-empty list of levels")
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


def load_suite(name_or_path: str) -> Suite:
    """A shipped suite by name (``notebook``, its alias ``seed``, ``full``) or a suite YAML file by path.

    Raises:
        SuiteError: naming the suite or file and what is wrong with it.
    """
    name_or_path = SUITE_ALIASES.get(name_or_path, name_or_path)
    path = Path(name_or_path)
    if not (name_or_path.endswith((".yaml", ".yml")) or path.exists()):
        path = SUITES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise SuiteError(f"unknown suite {name_or_path!r}: choose one of {', '.join(available_suites())} "
                             "or give the path of a suite .yaml file")
    data = _read_yaml(path)
    unknown = set(data) - {"name", "description", "settings", "specs", "factors"}
    if unknown:
        raise SuiteError(f"suite file {path}: unknown keys {sorted(unknown)}; allowed: name, description, "
                         "settings, specs, factors")
    settings_data = data.get("settings") or {}
    valid = {f.name for f in fields(TrainSettings)}
    if not isinstance(settings_data, dict) or set(settings_data) - valid:
        raise SuiteError(f"suite file {path}: bad settings {settings_data!r}; allowed keys: {', '.join(sorted(valid))}")
    try:
        return Suite(name=str(data.get("name") or path.stem), entries=tuple(_entries(data, path)),
                     settings=TrainSettings(**settings_data), description=str(data.get("description", "")))
    except (ValueError, TypeError, AttributeError) as error:
        if isinstance(error, SuiteError):
            raise
        raise SuiteError(f"suite file {path}: {error}") from None


def expand_trials(suite: Suite, settings: TrainSettings, only: Optional[list[str]] = None,
                  data_parallel: int = 1) -> list[Trial]:
    """The suite's trials in a fixed order: specs in suite order, each with every seed.

    Raises:
        SuiteError: if a name in `only` is not a spec of the suite.
    """
    wanted = set(suite.spec_names)
    if only:
        wanted = set()
        for text in only:
            name = str(RegularizationSpec.parse(text))
            if name not in suite.spec_names:
                raise SuiteError(f"spec {text!r} is not in suite {suite.name!r}; its specs: "
                                 f"{', '.join(suite.spec_names)}")
            wanted.add(name)
    return [Trial(suite.name, entry.spec, seed, settings, order, entry.notebook, data_parallel)
            for order, entry in enumerate(suite.entries) if str(entry.spec) in wanted
            for seed in settings.seeds]


def shard(trials: list[Trial], k: int, n: int) -> list[Trial]:
    """The k-th (1-based) of n disjoint parts of `trials`: every n-th trial starting at k-1."""
    if not (1 <= k <= n):
        raise ValueError(f"shard {k}/{n} is out of range: K must be between 1 and N")
    return trials[k - 1::n]
