"""What several test files share: the repository root, the tiny training settings of a test sweep, readers of a
logdir's results, and waiting on processes (from `tests.processes`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ablations.store import RESULT_FILE, write_result
from ablations.suite import Trial, expand_trials, load_suite
from tests.processes import DEADLINE_S, alive, children, wait_until

__all__ = [
    "DEADLINE_S",
    "quiet_trainer",
    "REPO",
    "TINY",
    "alive",
    "children",
    "install_wheel",
    "numbers",
    "outside_env",
    "results",
    "sweep",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--val-size", "100", "--batch-size", "64"]  # a sweep on tests.synthetic's images
NET = "tests.thirdparty.nets.TinyResNet"  # a backbone of one's own
TINY_SETTINGS = {"epochs": 1, "batch_size": 32, "val_size": 64, "limit_train": 64, "seeds": [0]}
SMALL = ["--val-size", "100", "--batch-size", "64", "--limit-train", "64"]  # a notebook sweep on 64 images
SMALL_SETTINGS = {"val_size": 100, "batch_size": 64, "limit_train": 64}


def suite_file(folder: Path, name: str = "mine", **content: Any) -> Path:
    """`folder`/NAME.yaml: a suite of `content` over `TINY_SETTINGS` and the specs baseline and pixel."""
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump({"name": name, "settings": TINY_SETTINGS, "specs": ["baseline", "pixel"], **content})
    )
    return path


def trials_of(path: Path) -> list:
    """The trials of the suite file `path` with its own settings."""
    suite = load_suite(str(path))
    return expand_trials(suite, suite.settings)


def results(logdir: Path) -> dict[str, dict]:
    """{trial folder relative to `logdir`: its result.json} for every finished trial under a logdir."""
    return {str(p.parent.relative_to(logdir)): json.loads(p.read_text()) for p in logdir.glob(f"*/*/*/{RESULT_FILE}")}


def numbers(result: dict) -> tuple:
    """The parts of a result that training determines (not timings or the environment)."""
    return result["metrics"], result["history"], result["settings_hash"]


def sweep(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run `python -m ablations.run ARGS` in-process; returns (exit status, stdout, stderr)."""
    from ablations.run import main

    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def outside_env() -> dict[str, str]:
    """This process's environment without ``PYTHONPATH``: a process that imports nothing from the repository."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def install_wheel(tmp_path: Path) -> Path:
    """Build lit-cifar's wheel from a copy of the repository and install it into a fresh virtual environment under
    `tmp_path` (torch and the other requirements from the running interpreter's site-packages); returns its python."""
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    source = tmp_path / "source"  # a copy: building leaves build/ and *.egg-info, which stay out of the checkout
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", "logs", "build", "site", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        check=True,
        env=outside_env(),
        cwd=tmp_path,
    )
    wheel = next(dist.glob("lit_cifar-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # torch and the other requirements: the running interpreter's own site-packages, whether it is the system
    # Python or a virtual environment (whose --system-site-packages would reach the base interpreter's instead)
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    site_dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (Path(purelib) / "running-interpreter.pth").write_text("\n".join(site_dirs) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed", wheel],
        check=True,
        env=outside_env(),
        cwd=tmp_path,
    )
    return python


def quiet_trainer(**kwargs: Any) -> Any:
    """A quiet one-epoch CPU `Trainer` with no logger, checkpoints or sanity steps; `kwargs` override these."""
    import lightning.pytorch as pl

    options = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**options, **kwargs})


def notebook_trials(*, only: list[str], seeds: tuple[int, ...] = (0,), **settings: Any) -> list[Trial]:
    suite = load_suite("notebook")
    return expand_trials(suite, replace(suite.settings, seeds=seeds, **{**SMALL_SETTINGS, **settings}), only=only)


def finished(trial: Trial, logdir: Path, test_acc: float = 0.5, events: bool = True) -> Path:
    """Write a finished result.json (as `ablations.trial` does, with its checksum) and an event file."""
    paths = trial.paths(logdir)
    paths.folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "train/acc": test_acc + 0.1,
        "val/acc": test_acc,
        "test/acc": test_acc,
        "train/loss": 1.0,
        "val/loss": 1.0,
        "test/loss": 1.0,
    }
    write_result(
        paths.result,
        {
            **trial.record(),
            "metrics": metrics,
            "history": [{"epoch": 0, "val/acc": test_acc}],
            "wall_time_s": 1.0,
            "train_images": 64,
            "val_images": 100,
            "test_images": 200,
            "environment": {"cpu_threads": 1},
        },
    )
    if events:
        (paths.folder / "events.out.tfevents.1.host").write_bytes(b"events")
    return paths.result


def sweep_args(cifar_dir: Path, logdir: Path, *args: str) -> list[str]:
    return ["--data-dir", str(cifar_dir), "--logdir", str(logdir), *SMALL, *args]


def python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
