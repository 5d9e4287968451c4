"""The package as a user gets it: one version source, typed packages, declared dependencies that match the
imports, console scripts that return exit statuses, and a wheel that installs and works outside the repository."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablations import store
from ablations.report import load_results
from lit_cifar.cli import main as cli_main
from tests.helpers import REPO, install_wheel, outside_env

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# import name -> distribution name, for the third-party modules the packages import
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "lightning": "lightning",
    "torch": "torch",
    "torchvision": "torchvision",
    "torchmetrics": "torchmetrics",
    "tensorboard": "tensorboard",
    "jsonargparse": "jsonargparse",
    "numpy": "numpy",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "scipy": "scipy",
    "statsmodels": "statsmodels",
    "pandas": "pandas",
    "ray": "ray",
    "pydoe": "pydoe",
    "pyDOE3": "pydoe3",
}


def requirement_names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}


def third_party_imports(package: str) -> set[str]:
    """The top-level names of every module `package`'s source imports that is neither stdlib nor our own."""
    names = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"lit_cifar", "ablations", "__future__"}


def test_the_version_has_one_source() -> None:
    import lit_cifar

    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lit_cifar.__version__"}
    assert lit_cifar.__version__.count(".") == 2


def test_both_packages_are_typed_and_ship_the_marker() -> None:
    for package in ("lit_cifar", "ablations"):
        assert (REPO / package / "py.typed").is_file()
        assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"][package]


def test_the_library_imports_only_its_core_requirements() -> None:
    core = requirement_names(PYPROJECT["project"]["dependencies"])
    assert {DISTRIBUTIONS[name] for name in third_party_imports("lit_cifar")} <= core
    assert not core & {"scipy", "statsmodels", "pandas", "matplotlib", "tqdm", "ray"}  # the harness's


def test_the_harness_imports_only_core_harness_ray_and_design_requirements() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    allowed = requirement_names(
        PYPROJECT["project"]["dependencies"] + extras["ablations"] + extras["ray"] + extras["design"]
    )
    assert {DISTRIBUTIONS[name] for name in third_party_imports("ablations")} <= allowed


def test_cli_main_returns_an_exit_status(cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sys.exit(main())` (the console script) must see 0 after a finished run, not the CLI object."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lit-cifar"])
    status = cli_main(
        [
            "fit",
            "--model.spec",
            "pixel",
            "--data.data_dir",
            str(cifar_dir),
            "--data.val_size",
            "100",
            "--data.batch_size",
            "64",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    assert status == 0 and type(status) is int


def test_a_result_that_vanishes_after_the_listing_is_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's result.json removed between the report's listing and its read (a trial being rerun: `read_result`
    then finds nothing and returns None) is skipped, not counted as an empty result."""
    folder = tmp_path / "suite" / "pixel" / "seed=0"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text("{}")  # listed by the glob
    monkeypatch.setattr(store, "read_result", lambda run_dir: None)  # gone when read
    assert load_results(tmp_path / "suite") == ([], [])


USER_CODE = textwrap.dedent("""
    import importlib.metadata, subprocess, sys
    from pathlib import Path

    import lightning.pytorch as pl
    import torch
    from torch import nn

    import lit_cifar
    from lit_cifar import CIFAR10DataModule, RegularizationSpec, RegularizedClassifier

    assert Path(lit_cifar.__file__).is_relative_to(sys.prefix), lit_cifar.__file__  # the installed copy
    assert lit_cifar.__version__ == importlib.metadata.version("lit-cifar")


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.out = nn.Linear(3 * 32 * 32, 16), nn.Linear(16, 10)

        def forward(self, x):
            return self.out(torch.relu(self.fc1(x.flatten(1))))

        def regularized_layers(self):
            return [self.fc1]


    class CountSteps(pl.Callback):
        steps = 0

        def on_train_batch_end(self, *args):
            CountSteps.steps += 1


    spec = RegularizationSpec.parse("pixel+l2=0.001+maxnorm=3")
    dm = CIFAR10DataModule.from_spec(spec, data_dir=sys.argv[1], val_size=100, batch_size=64)
    model = RegularizedClassifier(spec, backbone=Tiny())
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[CountSteps()])
    trainer.fit(model, datamodule=dm)
    assert CountSteps.steps == 2
    entry_points = importlib.metadata.distribution("lit-cifar").entry_points
    scripts = [e.name for e in entry_points if e.group == "console_scripts"]
    assert "lit-cifar" in scripts and "lit-cifar-ablate" in scripts, scripts
    for name in scripts:
        done = subprocess.run([str(Path(sys.prefix) / "bin" / name), "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (name, done.stderr[-2000:])
    print("ok", len(scripts))
""")


@pytest.mark.slow
def test_the_wheel_installs_and_works_outside_the_repository(tmp_path: Path, cifar_dir: Path) -> None:
    """A third party's view: build the wheel, install it into a fresh environment (torch and the other requirements
    from the running interpreter's site-packages), and from another folder train a backbone of its own through the
    public API, with a callback, and run every console script's --help."""
    work = tmp_path / "work"
    work.mkdir()
    python = install_wheel(tmp_path)
    (work / "user.py").write_text(USER_CODE)
    done = subprocess.run(
        [python, "user.py", str(cifar_dir)], capture_output=True, text=True, env=outside_env(), cwd=work, timeout=600
    )
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


WITHOUT = "import sys; sys.modules[{missing!r}] = None\n"  # as on a base install: the module cannot be imported


@pytest.mark.parametrize("missing", ["yaml", "matplotlib"])
@pytest.mark.parametrize("script", ["ablate_main", "report_main", "compare_main", "board_main", "python -m"])
def test_without_the_harness_extra_every_command_says_which_extra_in_one_line(script: str, missing: str) -> None:
    if script == "python -m":
        code = (
            WITHOUT + "import runpy; sys.argv = ['x', '--help']; runpy.run_module('ablations.run', run_name='__main__')"
        )
    else:
        code = WITHOUT + f"import ablations; sys.exit(ablations.{script}(['--help']))"
    done = subprocess.run([sys.executable, "-c", code.format(missing=missing)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-2000:]
    assert (
        done.stderr.count("\n") == 1 and missing in done.stderr and 'pip install "lit-cifar[ablations]"' in done.stderr
    )


@pytest.mark.parametrize("script", ["ablate_main", "report_main", "compare_main", "board_main"])
def test_with_the_extra_every_command_answers_help(script: str, capsys: pytest.CaptureFixture) -> None:
    import ablations

    with pytest.raises(SystemExit) as stop:
        getattr(ablations, script)(["--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out
    assert f"ablations:{script}" in PYPROJECT["project"]["scripts"].values()
