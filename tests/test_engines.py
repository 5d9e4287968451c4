"""The engines behind one interface (`ablations.engines.Executor`), the one trial status (`ablations.status`), and
the layering of our modules (no import cycle, lazy imports included; the trial layer never imports an engine)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest

from ablations.engines import Executor, LocalExecutor, make_executor
from ablations.engines.ray import RayExecutor
from ablations.engines.base import Progress
from ablations.engines.local import run_local, worker_slots
from ablations.status import FAILURE_FIELDS, TrialState, TrialStatus, claim, record_failure
from ablations.store import folder_lock, write_result
from ablations.suite import RunOptions, TrainSettings, Trial
from lit_cifar.spec import RegularizationSpec
from tests import fakes
from tests.fakes import METRICS
from tests.helpers import REPO

PACKAGES = (REPO / "lit_cifar", REPO / "ablations")
TRIAL_LAYER = ("ablations.trial", "ablations.store", "ablations.suite", "ablations.status", "ablations.signals")


def fake_trials(n: int = 3) -> list[Trial]:
    return [Trial("fake", RegularizationSpec(), seed, TrainSettings(seeds=(seed,)), 0) for seed in range(n)]


def finish(trial: Trial, logdir: Path) -> None:
    """A finished result of exactly the trial's settings."""
    trial.paths(logdir).folder.mkdir(parents=True, exist_ok=True)
    write_result(trial.paths(logdir).result, {**trial.record(), "metrics": METRICS, "history": []})


# ------------------------------------------------------------------------------------------------- imports
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for package in PACKAGES for p in package.rglob("*.py")}


def _resolve(name: str) -> Optional[str]:
    """The module of ours an imported name lives in (``ablations.engines.local.run_local`` -> its module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        isinstance(test, ast.Name)
        and test.id == "TYPE_CHECKING"
        or isinstance(test, ast.Attribute)
        and test.attr == "TYPE_CHECKING"
    )


def _imports_by_name(path: Path) -> set[str]:
    """The modules of ours a module imports by name at run time (``importlib.import_module``, ``__import__``): every
    string in it that names one of our modules, if it calls one."""
    tree = ast.parse(path.read_text())
    dynamic = any(
        isinstance(node, ast.Call)
        and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) in ("import_module", "__import__")
        for node in ast.walk(tree)
    )
    strings = (node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str))
    return {text for text in strings if text in MODULES} if dynamic else set()


def _defined(path: Path) -> set[str]:
    """The names a module defines at its top level (a package's lazy names are the others)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


BY_NAME = {module: _imports_by_name(path) for module, path in MODULES.items()}
DEFINED = {module: _defined(path) for module, path in MODULES.items()}


def imports_of(module: str) -> set[str]:
    """The modules of ours `module` imports, at module level or inside functions, not under TYPE_CHECKING; by name
    too (`_imports_by_name`). A package's by-name imports are its lazy ``__getattr__`` names: they count for the
    modules that import a name from the package (``from ablations.report import write_report`` imports
    ``ablations.report.report``), not for ``import ablations``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[Optional[str]] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                for branch in child.orelse:  # type: ignore[attr-defined]
                    visit(branch)
                continue
            if isinstance(child, ast.Import):
                found.update(_resolve(alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                for alias in child.names:
                    target = _resolve(f"{base}.{alias.name}")
                    found.add(target)
                    if target == base and alias.name not in DEFINED[base]:  # a lazy name of the package
                        found.update(BY_NAME[base])
            visit(child)

    visit(ast.parse(path.read_text()))
    if path.name != "__init__.py":
        found |= BY_NAME[module]
    return {m for m in found if m is not None and m != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            components.append(sorted([v, *component]))

    for module in GRAPH:
        if module not in index:
            connect(module)
    return [c for c in components if len(c) > 1]


def _reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for other in GRAPH[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen


def test_the_import_graph_sees_module_and_function_level_imports():
    assert "ablations.engines.base" in GRAPH["ablations.engines.local"]  # module level
    assert "ablations.trial" in GRAPH["ablations.engines.local"]  # inside LocalExecutor.execute
    assert "ablations.engines.local" in GRAPH["ablations.engines"]  # a package's __init__
    assert "ablations.report.report" in GRAPH["ablations.trust"]  # a name of the package's lazy __getattr__
    assert "lit_cifar.module" in GRAPH["ablations.custom"]  # `from lit_cifar import ...`: homes named in a table
    assert "lit_cifar.module" not in GRAPH["ablations.store"]  # `import lit_cifar` alone imports no class


def test_no_import_cycle_among_our_modules():
    cycles = _cycles()
    assert not cycles, cycles


def _imported_at_load(module: str) -> set[str]:
    """Every module (ours or not) a fresh interpreter holds after importing `module`."""
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_engines_package_imports_neither_ray_nor_its_engine_and_workers_no_chart_code():
    loaded = _imported_at_load("ablations.engines")
    assert not {"ray", "ablations.engines.ray", "torch"} & loaded
    worker = _imported_at_load("ablations.trial")  # what a training worker imports
    assert "ablations.monitor" in worker and "ablations.report.plots" not in worker


@pytest.mark.parametrize("module", TRIAL_LAYER)
def test_the_trial_layer_never_imports_an_engine(module):
    engines = {m for m in _reachable(module) if m == "ablations.engines" or m.startswith("ablations.engines.")}
    assert not engines, f"{module} imports {sorted(engines)}"
    assert "ablations.run" not in _reachable(module)


# ------------------------------------------------------------------------------------------- trial status
def test_a_trial_status_names_its_trial_state_and_reason():
    status = TrialStatus("pixel/seed=0", TrialState.FAILED, "boom")
    assert (status.trial, status.state, status.error) == ("pixel/seed=0", "failed", "boom")
    assert f"{status.state}" == str(status.state) == "failed" and json.dumps(status.state) == '"failed"'
    assert not TrialStatus("a", TrialState.BUSY).final and TrialStatus("a", TrialState.SKIPPED).final


def test_claim_is_the_one_decision_skip_busy_or_run(tmp_path):
    finished, held, free = fake_trials(3)
    options = RunOptions(logdir=str(tmp_path))
    finish(finished, tmp_path)
    with claim(finished, options) as state:
        assert state is TrialState.SKIPPED
    with folder_lock(held.paths(tmp_path).folder):  # another sweep runs it
        with claim(held, options) as state:
            assert state is TrialState.BUSY
    with claim(free, options) as state:
        assert state is TrialState.RUN
        with folder_lock(free.paths(tmp_path).folder) as locked:
            assert not locked  # the lock is held while the block runs
    with claim(finished, RunOptions(logdir=str(tmp_path), force=True)) as state:
        assert state is TrialState.RUN


# -------------------------------------------------------------------------------------------- executors
class InlineExecutor(Executor):
    """A third engine in a few lines: each trial in turn, in this process, with a stand-in runner."""

    name: ClassVar[str] = "inline"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def execute(self, trials: list[Trial], options: RunOptions) -> list[Any]:
        self.seen += [t.name for t in trials]
        return [fakes.finish(trial, options, False) for trial in trials]


def test_a_new_engine_is_one_executor_class_and_finished_trials_never_reach_it(tmp_path):
    trials = fake_trials(3)
    finish(trials[1], tmp_path)
    executor = InlineExecutor()
    statuses = executor.run(trials, RunOptions(logdir=str(tmp_path)))
    assert [s.state for s in statuses] == [TrialState.DONE, TrialState.SKIPPED, TrialState.DONE]
    assert executor.seen == [trials[0].name, trials[2].name]
    assert all(isinstance(s, TrialStatus) for s in statuses)


def test_the_factory_picks_the_executor_the_plan_asks_for():
    assert isinstance(make_executor("local", parallel=2, gpus=0), LocalExecutor)
    ray = make_executor("ray", parallel=2, gpus=2, ray_address="head:6379", max_retries=5)
    assert isinstance(ray, RayExecutor) and ray.resources.gpus == 1.0 and ray.max_retries == 5
    assert not make_executor("local", ranks=types.SimpleNamespace(rank=1)).skip_finished  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        make_executor("spark")


def test_the_local_executor_runs_its_trials_in_worker_slots(tmp_path):
    executor = LocalExecutor(parallel=2, gpus=0, run=fakes.finish)
    statuses = executor.run(fake_trials(3), RunOptions(logdir=str(tmp_path)))
    assert [s.state for s in statuses] == ["done"] * 3
    assert len({p.read_text() for p in tmp_path.glob("fake/*/*/started-*")}) == 2  # two worker processes


# ------------------------------------------------------------------------------------------ failure records
class _Lost(Exception):
    """A stand-in for Ray's WorkerCrashedError."""


def _stub_ray() -> Any:
    """Just what `_RaySweep` touches: a remote function, the exception types and a ``get`` whose worker died."""

    def get(ref: Any) -> Any:
        raise _Lost("the worker died")

    exceptions = types.SimpleNamespace(
        WorkerCrashedError=_Lost, NodeDiedError=_Lost, OutOfMemoryError=_Lost, RayError=Exception
    )
    return types.SimpleNamespace(
        remote=lambda f: types.SimpleNamespace(options=lambda **kw: None), exceptions=exceptions, get=get
    )


def _error_fields(trial: Trial, logdir: Path) -> set[str]:
    return set(json.loads(trial.paths(logdir).error.read_text()))


def test_every_engine_writes_the_same_error_json_fields(tmp_path, monkeypatch):
    """A trial that raised (run_trial, as local and Ray workers run it), a local worker that died, a Ray worker lost
    for good: each error.json holds the trial's record, error, traceback and signal, plus only
    what that path knows besides (the environment of a trial that started, Ray's engine and attempts)."""
    from ablations.engines.ray import TrialResources, _RaySweep
    from ablations.trial import run_trial

    trial = fake_trials(2)[1]  # seed 1: the one `fakes.die_on_seed_1` kills
    base = set(trial.record()) | set(FAILURE_FIELDS)
    fields = {}

    def boom(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("ablations.trial._train_and_test", boom)
    assert run_trial(trial, RunOptions(logdir=str(tmp_path / "trial"))).state == "failed"
    fields["trial"] = _error_fields(trial, tmp_path / "trial")

    options = RunOptions(logdir=str(tmp_path / "worker"))
    statuses = run_local(
        [trial], options, fakes.die_on_seed_1, Progress([trial], show=False), worker_slots(1, gpus=0, cpus=1)
    )
    assert statuses[0].state is TrialState.FAILED and "SIGKILL" in str(statuses[0].error)
    fields["worker"] = _error_fields(trial, tmp_path / "worker")

    sweep = _RaySweep(_stub_ray(), [trial], RunOptions(logdir=str(tmp_path / "ray")), TrialResources(), 0)
    sweep.attempts[0] = 1
    sweep._collect(object(), 0, False)
    sweep.progress.close()
    assert sweep.progress.statuses[0].state is TrialState.FAILED
    fields["ray"] = _error_fields(trial, tmp_path / "ray")

    assert fields == {
        "trial": base | {"environment"},
        "worker": base,
        "ray": base | {"engine", "attempts"},
    }


def test_a_failure_is_not_recorded_over_a_result_or_while_another_process_holds_the_trial(tmp_path):
    finished, held = fake_trials(2)
    finish(finished, tmp_path)
    assert record_failure(finished, tmp_path, "late").state is TrialState.FAILED
    assert not finished.paths(tmp_path).error.exists()
    with folder_lock(held.paths(tmp_path).folder):
        record_failure(held, tmp_path, "elsewhere")
    assert not held.paths(tmp_path).error.exists()
