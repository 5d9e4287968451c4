"""The engines behind one interface (`ablations.engines.Executor`): the local engine's worker slots, worker death
and DDP sweeps; and the layering of our modules (no import cycle, lazy imports included; the trial layer never
imports an engine)."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest

from ablations.engines import Executor, LocalExecutor, make_executor
from ablations.engines.base import Progress
from ablations.engines.local import run_local, worker_slots
from ablations.engines.ray import RayExecutor
from ablations.status import TrialState, TrialStatus
from ablations.store import ERROR_FILE, RESULT_FILE, write_result
from ablations.suite import RunOptions, TrainSettings, Trial
from lit_cifar.spec import RegularizationSpec
from tests import fakes
from tests.fakes import METRICS
from tests.helpers import DEADLINE_S, REPO, TINY, results, wait_until

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
    assert "ablations.report.report" in GRAPH["ablations.status"]  # a name of the package's lazy __getattr__
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
    for bad in ({"parallel": 0}, {"gpus": -1}, {"max_retries": -1}):  # checked once, for every engine
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=-?[0-9]+ must be >= "):
            make_executor("ray", **bad)


# ------------------------------------------------------------------------------------------- slots, Ray seam
def test_each_local_worker_gets_its_own_gpu_slot_and_thread_share():
    assert [(s.cuda_visible_devices, s.threads) for s in worker_slots(4, gpus=4, cpus=16)] == [
        ("0", 4),
        ("1", 4),
        ("2", 4),
        ("3", 4),
    ]
    assert [s.cuda_visible_devices for s in worker_slots(4, gpus=2, cpus=16)] == ["0", "1", "0", "1"]  # packed
    # GPUs numbered as the parent sees them (e.g. SLURM set CUDA_VISIBLE_DEVICES=3,5)
    assert [s.cuda_visible_devices for s in worker_slots(2, gpus=2, cpus=2, visible="3,5")] == ["3", "5"]
    assert [(s.cuda_visible_devices, s.threads) for s in worker_slots(3, gpus=0, cpus=2)] == [(None, 1)] * 3


# ------------------------------------------------------------------------------------ local worker processes
def test_workers_run_in_their_slots(tmp_path):
    options = RunOptions(logdir=str(tmp_path))
    statuses = run_local(
        fake_trials(),
        options,
        fakes.finish,
        Progress(fake_trials(), show=False),
        worker_slots(2, gpus=2, cpus=4, visible="6,7"),
    )
    assert [s.state for s in statuses] == ["done"] * 3
    seen = [json.loads(p.read_text()) for p in tmp_path.glob(f"fake/*/*/{RESULT_FILE}")]
    assert {r["cuda"] for r in seen} == {"6", "7"} and {r["threads"] for r in seen} == {"2"}


def test_a_killed_worker_fails_its_trial_and_the_sweep_goes_on(tmp_path):
    """The OOM killer or a segfault ends a worker: its trial is failed with the signal, a new worker takes over."""
    options = RunOptions(logdir=str(tmp_path))
    statuses = run_local(
        fake_trials(4),
        options,
        fakes.die_on_seed_1,
        Progress(fake_trials(4), show=False),
        worker_slots(2, gpus=0, cpus=2),
    )
    assert [s.state for s in statuses] == ["done", "failed", "done", "done"]
    assert "killed by SIGKILL" in str(statuses[1].error)
    error = json.loads((tmp_path / "fake/baseline/seed=1" / ERROR_FILE).read_text())
    assert error["signal"] == "SIGKILL" and error["settings_hash"] == fake_trials()[1].settings_hash
    assert not (tmp_path / "fake/baseline/seed=1" / RESULT_FILE).exists()


# ------------------------------------------------------------------------------------------- DDP sweeps
def ddp_command(data_dir: Path, logdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ablations.run",
        "--data-dir",
        str(data_dir),
        "--logdir",
        str(logdir),
        "--only",
        "pixel+bn",
        "--seeds",
        "0,1,2",
        "--accelerator",
        "cpu",
        "--strategy",
        "ddp",
        "--devices",
        "2",
        *TINY,
    ]


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, cifar_dir):
    """An uninterrupted 2-rank (gloo, CPU) sweep of 3 trials."""
    logdir = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(
        ddp_command(cifar_dir, logdir), cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S * 2
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return results(logdir)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_counts_the_test_set_once(ddp_reference):
    result = ddp_reference["notebook/pixel+bn/seed=0"]
    assert result["world_size"] == 2 and result["settings"]["data_parallel"] == 2
    assert result["test_images"] == 200
    # test/acc is a multiple of 1/200: all 200 test images counted once across the two ranks, none twice
    assert result["metrics"]["test/acc"] * 200 == pytest.approx(round(result["metrics"]["test/acc"] * 200), abs=1e-3)


@pytest.mark.slow
def test_ddp_sweep_killed_after_its_first_trial_resumes_to_the_same_results(ddp_reference, cifar_dir, tmp_path):
    """Every rank takes rank 0's decision: on resume all ranks skip the finished trial and train the same ones."""
    command = ddp_command(cifar_dir, tmp_path)
    sweep = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_until(lambda: bool(results(tmp_path)), "the first result.json", sweep)
    os.killpg(sweep.pid, signal.SIGKILL)  # rank 0 and the rank it launched
    sweep.wait()
    kept = {name: result["metrics"] for name, result in results(tmp_path).items()}
    assert "notebook/pixel+bn/seed=0" in kept and len(kept) < 3
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S * 2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{3 - len(kept)} trained, {len(kept)} already done" in rerun.stderr
    resumed = results(tmp_path)
    assert sorted(resumed) == sorted(ddp_reference)
    for name, result in resumed.items():
        assert (result["metrics"], result["history"]) == (
            ddp_reference[name]["metrics"],
            ddp_reference[name]["history"],
        ), name
        assert result["world_size"] == 2
