"""A third-party project's own 1x28x28 data module, residual backbone and LightningModule (`tests.thirdparty.gray`)
with the library and the harness, through the public API: any image shape, refusals in one line before anything
trains, each test image counted once under DDP, and checkpoints of a backbone instance that load alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml

from lit_cifar import RegularizationSpec, RegularizedClassifier
from tests.helpers import REPO, install_wheel, outside_env, results, sweep
from tests.test_reuse import quiet_trainer
from tests.thirdparty.gray import (
    AlwaysNormalized,
    CountTestImages,
    DeclaredNormalized,
    GrayDigits,
    OwnModule,
    ResidualNet,
)

GRAY = "tests.thirdparty.gray"
BN_BY_DROPOUT = ["pixel", "pixel+bn", "pixel+dropout=0.25", "pixel+bn+dropout=0.25"]
SETTINGS = {"epochs": 1, "batch_size": 32, "seeds": [0]}


def gray_suite(tmp_path: Path, module: str = GRAY, **content: Any) -> Path:
    """The lab's suite file: its residual backbone on its 1x28x28 data, `BN_BY_DROPOUT`, `content` replacing keys
    (a ``None`` value drops one); ``{module}`` in a class path is `module`, where the lab's code lives."""
    data = {
        "name": "gray",
        "settings": SETTINGS,
        "specs": BN_BY_DROPOUT,
        "model": {"class_path": "{module}.ResidualNet"},
        "data": {"class_path": "{module}.GrayDigits"},
        **content,
    }
    data = {key: value for key, value in data.items() if value is not None}
    path = tmp_path / "gray.yaml"
    path.write_text(yaml.safe_dump(data).replace("{module}", module))
    return path


def fitted(spec: str, data: GrayDigits | None = None, **trainer: Any) -> tuple[RegularizedClassifier, GrayDigits]:
    torch.manual_seed(0)
    spec_ = RegularizationSpec.parse(spec)
    dm = data or GrayDigits(normalize=spec_.normalize)
    model = RegularizedClassifier(spec_, backbone=ResidualNet(spec_))
    quiet_trainer(max_epochs=1, **trainer).fit(model, datamodule=dm)
    return model, dm


# ------------------------------------------------------------------------------------------- any image shape
@pytest.mark.parametrize(("spec", "shape"), [("pixel", (1, 28, 28)), ("channel", (1, 1, 1)), ("baseline", (1, 1, 1))])
def test_the_library_trains_and_standardizes_1x28x28_images(spec: str, shape: tuple) -> None:
    model, dm = fitted(spec)
    assert tuple(model.input_norm.mean.shape) == shape and torch.equal(model.input_norm.mean, dm.mean)
    x = model.input_norm(dm.train[0]).double()
    if spec == "pixel":
        torch.testing.assert_close(x.mean(0), torch.zeros(shape, dtype=torch.float64), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"images of shape \(2, 3, 28, 28\) do not fit"):
        model(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))


def test_the_notebook_cnn_names_the_shape_it_takes() -> None:
    model = RegularizedClassifier("baseline")
    with pytest.raises(ValueError, match=r"NotebookCNN takes \(B, 3, 32, 32\) images .* got \(2, 1, 28, 28\)"):
        model(torch.zeros(2, 1, 28, 28))


# ------------------------------------------------------------------------------------------------ refusals
REFUSALS = [
    ({"model": {"class_path": "{module}.OwnModule"}}, "model {module}.OwnModule is a LightningModule"),
    ({"specs": ["pixel+augment"]}, "spec 'pixel+augment' asks for augment but data module GrayDigits"),
    (
        {"model": {"class_path": "{module}.AlwaysNormalized"}, "specs": ["pixel"]},
        "spec 'pixel' does not ask for bn but backbone AlwaysNormalized has BatchNorm layers",
    ),
]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        *REFUSALS,
        ({"data": {"class_path": "{module}.NoStatistics"}}, "has no mean and std after setup('fit')"),
        ({"model": None, "specs": ["pixel"]}, "NotebookCNN takes (B, 3, 32, 32) images"),
    ],
)
def test_what_would_train_mislabelled_exits_2_in_one_line_before_any_trial_folder(
    capsys: pytest.CaptureFixture, tmp_path: Path, content: dict, expected: str
) -> None:
    logdir = tmp_path / "logs"
    status, _, err = sweep(capsys, "--suite", str(gray_suite(tmp_path, **content)), "--logdir", str(logdir))
    assert status == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("python -m ablations.run: error: ") and expected.format(module=GRAY) in line, line
    assert not (logdir / "gray").exists()


def test_the_library_refuses_a_lightning_module_and_unasked_layers_unless_declared() -> None:
    with pytest.raises(ValueError, match="OwnModule is a LightningModule: give a plain torch.nn.Module backbone"):
        RegularizedClassifier("pixel", backbone=OwnModule())
    with pytest.raises(ValueError, match="does not ask for bn but backbone AlwaysNormalized has BatchNorm"):
        RegularizedClassifier("pixel", backbone=AlwaysNormalized())
    RegularizedClassifier("pixel", backbone=DeclaredNormalized())  # its BatchNorm is declared fixed
    with pytest.raises(ValueError, match="asks for bn but backbone DeclaredNormalized does not honour it"):
        RegularizedClassifier("pixel+bn", backbone=DeclaredNormalized())


def test_the_library_refuses_an_augment_spec_for_data_that_cannot_augment() -> None:
    spec = RegularizationSpec.parse("pixel+augment")
    model = RegularizedClassifier(spec, backbone=ResidualNet(spec))
    steps: list[int] = []

    class Steps(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            steps.append(1)

    with pytest.raises(ValueError, match="asks for augment but data module GrayDigits has augment=None: it cannot"):
        quiet_trainer(max_epochs=1, callbacks=[Steps()]).fit(model, datamodule=GrayDigits())
    assert not steps


# ------------------------------------------------------------------------------------------------- harness
@pytest.mark.slow
def test_a_bn_by_dropout_suite_of_1x28x28_images_runs_through_the_harness_without_banners(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    command = [sys.executable, "-m", "ablations.run", "--suite", str(gray_suite(tmp_path)), "--logdir", str(logdir)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "GPU available" not in output and "TPU available" not in output and "Tip:" not in output
    finished = results(logdir)
    assert sorted(finished) == sorted(f"gray/{spec}/seed=0" for spec in BN_BY_DROPOUT)
    assert {r["test_images"] for r in finished.values()} == {101}


# ----------------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_process_ddp_trains_and_counts_each_test_image_of_a_data_module_of_ones_own_once(tmp_path: Path) -> None:
    model, _ = fitted("pixel+bn+dropout=0.25", strategy="ddp_spawn", devices=2)
    (alone,) = quiet_trainer().test(model, datamodule=GrayDigits(), verbose=False)
    counted = tmp_path / "count"
    trainer = quiet_trainer(devices=2, strategy="ddp_spawn", callbacks=[CountTestImages(counted)])
    (together,) = trainer.test(model, datamodule=GrayDigits(), verbose=False)
    assert int(counted.read_text()) == 101
    assert together["test/acc"] == pytest.approx(alone["test/acc"], abs=1e-6)
    assert together["test/loss"] == pytest.approx(alone["test/loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------------ checkpoints
LOAD_AND_PREDICT = """
import sys, torch
from lit_cifar import RegularizedClassifier
model = RegularizedClassifier.load_from_checkpoint(sys.argv[1], allowed_class_paths=["tests.thirdparty"]).eval()
images = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(images), sys.argv[3])
"""


def test_a_checkpoint_of_a_backbone_instance_loads_in_a_fresh_process_and_predicts_exactly(tmp_path: Path) -> None:
    spec = "pixel+bn+dropout=0.25"
    model, dm = fitted(spec, limit_train_batches=2, limit_val_batches=1)
    trainer = quiet_trainer(max_epochs=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    images = dm.test[0][:16]
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        expected = model.eval()(images)
    command = [
        sys.executable,
        "-c",
        LOAD_AND_PREDICT,
        *(str(tmp_path / n) for n in ("model.ckpt", "images.pt", "out.pt")),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)


def test_a_checkpoint_names_what_to_pass_and_imports_only_allowed_class_paths(tmp_path: Path) -> None:
    class Local(ResidualNet):  # cannot be imported by another process: its init args are not recorded
        pass

    spec = RegularizationSpec.parse("pixel")
    for name, backbone in (("recorded", ResidualNet(spec, width=4)), ("local", Local(spec, width=4))):
        trainer = quiet_trainer(max_epochs=0)
        trainer.fit(RegularizedClassifier(spec, backbone=backbone), datamodule=GrayDigits())
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
    with pytest.raises(ValueError, match=r"'tests.thirdparty.gray.ResidualNet' is not allowed: importing it runs"):
        RegularizedClassifier.load_from_checkpoint(tmp_path / "recorded.ckpt")
    loaded = RegularizedClassifier.load_from_checkpoint(tmp_path / "recorded.ckpt", allowed_class_paths=[GRAY])
    assert loaded.backbone.width == 4 and loaded.hparams["backbone_init_args"] == {"in_channels": 1, "width": 4}
    with pytest.raises(ValueError, match=r"backbone \(.*<locals>.Local\) is not the NotebookCNN built here.*backbone="):
        RegularizedClassifier.load_from_checkpoint(tmp_path / "local.ckpt")
    with pytest.raises(ValueError, match="weights_only=False"):
        RegularizedClassifier.load_from_checkpoint(tmp_path / "local.ckpt", weights_only=False)
    assert RegularizedClassifier.load_from_checkpoint(tmp_path / "local.ckpt", backbone=Local(spec, width=4))


class OpensAFile:
    """An object whose unpickling calls ``open(path, "w")``: what a crafted checkpoint holds."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_loading_a_checkpoint_runs_no_code_whatever_torchs_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = quiet_trainer(max_epochs=0)
    trainer.fit(RegularizedClassifier("pixel", backbone=ResidualNet(RegularizationSpec.parse("pixel"))), GrayDigits())
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    marker = tmp_path / "ran"
    torch.save({**checkpoint, "extra": OpensAFile(marker)}, tmp_path / "crafted.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's default is then to run code
    with pytest.raises(Exception, match="Weights only load failed"):
        RegularizedClassifier.load_from_checkpoint(tmp_path / "crafted.ckpt", allowed_class_paths=[GRAY])
    assert not marker.exists()
    torch.load(tmp_path / "crafted.ckpt")  # what loading with torch's default would have done
    assert marker.exists()


def test_the_command_line_imports_a_checkpoints_class_path_only_when_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lit_cifar.cli import check_checkpoint

    trainer = quiet_trainer(max_epochs=0)
    trainer.fit(RegularizedClassifier("pixel", backbone=ResidualNet(RegularizationSpec.parse("pixel"))), GrayDigits())
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(SystemExit) as stopped:
        check_checkpoint(str(tmp_path / "model.ckpt"))
    assert stopped.value.code == 2
    assert "'tests.thirdparty.gray.ResidualNet' is not allowed" in capsys.readouterr().err
    monkeypatch.setenv("LIT_CIFAR_ALLOWED_BACKBONES", "tests.thirdparty.gray")
    check_checkpoint(str(tmp_path / "model.ckpt"))


# ------------------------------------------------------------------------------------------- from the wheel
LAB = """
import subprocess, sys
from pathlib import Path

import lightning.pytorch as pl
import torch

import lit_cifar
from lit_cifar import RegularizationSpec, RegularizedClassifier
from mylab import CountTestImages, GrayDigits, ResidualNet

LOAD = '''
import sys, torch
from lit_cifar import RegularizedClassifier
model = RegularizedClassifier.load_from_checkpoint(sys.argv[1], allowed_class_paths=["mylab"]).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2], weights_only=True)), sys.argv[3])
'''
QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)

if __name__ == "__main__":
    assert Path(lit_cifar.__file__).is_relative_to(sys.prefix), lit_cifar.__file__  # the installed copy
    spec = RegularizationSpec.parse("pixel+bn+dropout=0.25")
    torch.manual_seed(0)
    model = RegularizedClassifier(spec, backbone=ResidualNet(spec))
    pl.Trainer(max_epochs=1, devices=2, strategy="ddp_spawn", **QUIET).fit(model, datamodule=GrayDigits())
    counter = CountTestImages(Path("count"))
    tester = pl.Trainer(devices=2, strategy="ddp_spawn", callbacks=[counter], **QUIET)
    tester.test(model, datamodule=GrayDigits(), verbose=False)
    assert Path("count").read_text() == "101", Path("count").read_text()
    saver = pl.Trainer(max_epochs=0, devices=1, **QUIET)
    saver.fit(model, datamodule=GrayDigits())
    saver.save_checkpoint("model.ckpt")
    images = GrayDigits().test[0][:16]
    torch.save(images, "images.pt")
    with torch.no_grad():
        expected = model.eval()(images)
    subprocess.run([sys.executable, "-c", LOAD, "model.ckpt", "images.pt", "out.pt"], check=True)
    assert torch.equal(torch.load("out.pt", weights_only=True), expected)
    print("ok")
"""


@pytest.mark.slow
def test_a_lab_runs_its_suite_trains_under_ddp_and_reloads_its_checkpoint_from_the_wheel(tmp_path: Path) -> None:
    """The lab's code (`tests.thirdparty.gray`, copied outside the repository as ``mylab``) with the installed
    wheel: 2-process CPU DDP training and testing (101 test images counted once), its checkpoint loaded in a fresh
    process predicting exactly, its bn x dropout suite through ``lit-cifar-ablate`` without banners, and its
    LightningModule, an augment spec and an always-BatchNorm backbone each refused in one line."""
    python = install_wheel(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "tests" / "thirdparty" / "gray.py", work / "mylab.py")
    (work / "lab.py").write_text(LAB)
    env = {**outside_env(), "PYTHONPATH": str(work)}  # the lab's module, nothing from the repository
    options: dict[str, Any] = {"capture_output": True, "text": True, "env": env, "cwd": work}
    done = subprocess.run([python, "lab.py"], timeout=600, **options)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]

    ablate = str(python.parent / "lit-cifar-ablate")
    suite = gray_suite(work, module="mylab")
    done = subprocess.run([ablate, "--suite", str(suite)], capture_output=True, text=True, env=env, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    banners = [text for text in ("GPU available", "TPU available", "Tip:") if text in done.stdout + done.stderr]
    assert not banners, done.stderr[-3000:]
    assert len(list((work / "logs" / "gray").glob("*/seed=0/result.json"))) == len(BN_BY_DROPOUT)
    for content, expected in REFUSALS:
        logdir = tmp_path / "refused"
        suite = gray_suite(work, module="mylab", **content)
        command = [ablate, "--suite", str(suite), "--logdir", str(logdir)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work)
        assert done.returncode == 2 and expected.format(module="mylab") in done.stderr, done.stderr[-3000:]
        assert len(done.stderr.strip().splitlines()) == 1 and not (logdir / "gray").exists()

    # The lab's question: its backbone's depth x bn x optimizer, one suite, one table, one effects model.
    factors = {"model.init_args.depth": [1, 2], "bn": ["baseline", "bn"], "optimizer": ["adam", "torch.optim.SGD"]}
    suite = gray_suite(work, module="mylab", name="deep", specs=[], factors=factors)
    deep = [ablate, "--suite", str(suite)]
    done = subprocess.run(deep, capture_output=True, text=True, env=env, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = "load_results('logs/deep').groupby(['depth', 'bn', 'optimizer']).size().items()"
    script = f"from ablations import load_results\nfor key, n in {sizes}:\n    print(*key, n)"
    done = subprocess.run([python, "-c", script], **options)
    cells = [f"{d} {b} {o} 1" for d in (1, 2) for b in ("baseline", "bn") for o in ("SGD", "adam")]
    assert done.stdout.split("\n")[:-1] == cells, done.stdout + done.stderr[-2000:]
    assert "depth" in (work / "logs" / "deep" / "effects.csv").read_text()
    source = work / "mylab.py"  # the lab edits its forward: the rerun refuses until --force
    source.write_text(source.read_text().replace("x + block(x)", "block(x) + x"))
    done = subprocess.run(deep, capture_output=True, text=True, env=env, cwd=work)
    assert done.returncode == 2 and "(model source changed)" in done.stderr and "--force" in done.stderr
