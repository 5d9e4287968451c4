"""Packs (`lit_cifar.pack`, `ablations.packs`): each member of a pack trains as its single trial does, up to fp32
rounding; packs group, resume and refuse what they do not support.

Tolerance (docs/packs.md): the packed network computes every member's convolutions as one grouped convolution and
its dense layers as batched matrix multiplies, which sum the same products in another order. Each such sum differs
by a few fp32 ulps (relative ~1e-7 to 1e-6); a few training steps amplify that, and the raw-pixel member (logits of
order 100) most. Adam's first updates are about ``lr * sign(gradient)``, so a gradient at rounding level (e.g.
from an augmented image's zero padding) can flip a whole ``lr`` step: measured, up to 2e-4 relative on the second
step's objective of an augmented member, 1e-7 for the others, 0 to 1e-7 on the first step. Everything random
(initialization, data order, augmentation, dropout masks) is drawn identically,
so a wrong mask or order shows as a difference of order 1, far above the tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ablations.engines.packs import run_pack
from ablations.packs import check_pack, make_packs, pack_value
from ablations.run import main
from ablations.store import RESULT_FILE
from ablations.suite import RunOptions, TrainSettings, Trial
from lit_cifar import CIFAR10DataModule, RegularizationSpec, RegularizedClassifier
from lit_cifar.pack import PackDataModule, PackedClassifier

SETTINGS = TrainSettings(epochs=1, batch_size=64, seeds=[0], val_size=100, limit_train=192)
FIRST_STEP_RTOL = 1e-5  # the first objective: forward rounding only, no update yet
STEP_RTOL = 1e-3  # later objectives: Adam's early steps turn rounding-level gradients into +-lr updates
FINAL_ATOL = {"loss": 1e-2, "ce": 1e-2, "acc": 0.02}  # relative for loss and ce; accuracy: at most 2 of 100 images


def trial(spec: str, seed: int, settings: TrainSettings = SETTINGS, suite: str = "packs") -> Trial:
    return Trial(suite, RegularizationSpec.parse(spec), seed, settings, 0)


class StepLosses(pl.Callback):
    """Every training step's objective: the single trial's returned loss, or each pack member's."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = module.step_losses if isinstance(module, PackedClassifier) else outputs["loss"].detach()
        self.losses.append(step.clone().double())


def trainer(callback: pl.Callback) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[callback],
    )


def data_kwargs(data_dir: Path) -> dict:
    s = SETTINGS
    return dict(
        data_dir=str(data_dir), val_size=s.val_size, batch_size=s.batch_size, limit_train=s.limit_train, download=False
    )


def single(t: Trial, data_dir: Path) -> tuple[torch.Tensor, dict]:
    """A member's single trial, as `ablations.trial` trains it: per-step objectives and test metrics."""
    pl.seed_everything(t.seed, verbose=False)
    dm = CIFAR10DataModule.from_spec(t.spec, seed=t.seed, **data_kwargs(data_dir))
    dm.setup("fit")
    model = RegularizedClassifier(t.spec, lr=SETTINGS.lr, lr_decay=SETTINGS.lr_decay)
    steps = StepLosses()
    fit = trainer(steps)
    fit.fit(model, datamodule=dm)
    return torch.stack(steps.losses), fit.test(model, datamodule=dm, verbose=False)[0]


def packed(trials: list[Trial], data_dir: Path) -> tuple[torch.Tensor, list[dict]]:
    """The same trials as one pack, built as `ablations.packs` builds it: (steps, K) objectives, test metrics."""
    from ablations.packs import _members

    dm = PackDataModule([t.spec for t in trials], [t.seed for t in trials], **data_kwargs(data_dir))
    dm.setup("fit")
    members, randomness = _members(trials)
    model = PackedClassifier(members, randomness)
    model.set_input_statistics(dm.member_statistics())
    steps = StepLosses()
    fit = trainer(steps)
    fit.fit(model, datamodule=dm)
    fit.test(model, datamodule=dm, verbose=False)
    return torch.stack(steps.losses), model.epoch_values("test")


def assert_members_match(trials: list[Trial], data_dir: Path) -> None:
    pack_steps, pack_tests = packed(trials, data_dir)
    for k, t in enumerate(trials):
        steps, tested = single(t, data_dir)
        assert len(steps) == len(pack_steps) >= 3
        torch.testing.assert_close(pack_steps[0, k], steps[0], rtol=FIRST_STEP_RTOL, atol=0, msg=f"{t.name} first step")
        torch.testing.assert_close(pack_steps[:, k], steps, rtol=STEP_RTOL, atol=0, msg=f"{t.name} per step")
        for name, tolerance in FINAL_ATOL.items():
            got, want = pack_tests[k][f"test/{name}"], tested[f"test/{name}"]
            scale = 1.0 if name == "acc" else abs(want)
            assert abs(got - want) <= tolerance * scale, (t.name, name, got, want)


@pytest.mark.slow
def test_pack_members_match_their_single_trials(cifar_dir):
    """Four members differing in seed, normalization (none/pixel/channel), penalties, max-norm, dropout and
    augmentation."""
    trials = [
        trial("pixel+dropout=0.25", 0),
        trial("channel+l2=0.01+augment", 1),
        trial("pixel+l1=0.001+maxnorm=2+dropout=0.5", 2),
        trial("baseline", 3),
    ]
    assert_members_match(trials, cifar_dir)


@pytest.mark.slow
def test_batchnorm_pack_members_match_their_single_trials(cifar_dir):
    assert_members_match([trial("pixel+bn", 0), trial("bn+dropout=0.5+augment", 1)], cifar_dir)


def test_packs_group_by_architecture_and_settings():
    other = TrainSettings(epochs=2, batch_size=64, seeds=[0])
    trials = [
        trial("pixel", 0),
        trial("pixel+bn", 0),
        trial("pixel", 1),
        trial("bn", 1),
        trial("pixel", 2),
        trial("pixel", 0, other),
        trial("pixel", 0, suite="elsewhere"),
    ]
    packs = [[t.name for t in p] for p in make_packs(trials, 2)]
    assert packs == [
        ["pixel/seed=0", "pixel/seed=1"],
        ["pixel/seed=2"],
        ["pixel+bn/seed=0", "bn/seed=1"],
        ["pixel/seed=0"],
        ["pixel/seed=0"],
    ]
    assert [len(p) for p in make_packs([trial("pixel", s) for s in range(27)], 8)] == [7, 7, 7, 6]


def test_pack_arguments_are_checked():
    assert pack_value("auto") == "auto" and pack_value("4") == 4
    for bad in ("0", "x", "-1"):
        with pytest.raises(ValueError, match="--pack"):
            pack_value(bad)
    with pytest.raises(ValueError, match="--engine ray"):
        check_pack(4, "ray", 1, "auto", False)
    with pytest.raises(ValueError, match="--parallel 2"):
        check_pack(4, "local", 2, "auto", False)
    check_pack(1, "ray", 2, "ddp", True)  # no pack: nothing to refuse


@pytest.mark.parametrize(
    "flags",
    [["--engine", "ray"], ["--parallel", "2"], ["--pack", "0"], ["--model", "tests.thirdparty.nets.TinyResNet"]],
)
def test_unsupported_pack_runs_exit_2_before_training(flags, tmp_path, cifar_dir, capsys):
    args = [
        "--data-dir",
        str(cifar_dir),
        "--logdir",
        str(tmp_path),
        "--only",
        "pixel",
        "--seeds",
        "0,1",
        "--accelerator",
        "cpu",
        *(["--pack", "2"] if "--pack" not in flags else []),
        *flags,
    ]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    assert "--pack" in capsys.readouterr().err
    assert not list(tmp_path.glob("notebook/*"))


@pytest.mark.slow
def test_partly_finished_pack_trains_only_the_others(tmp_path, cifar_dir):
    """Two of four members finished (one packed, one single): the rerun trains a pack of the other two, each
    member's folder holds a result of the single trial's schema, and finished results are untouched."""
    settings = TrainSettings(epochs=1, batch_size=64, seeds=[0], val_size=100, limit_train=128)
    trials = [
        trial(spec, seed, settings)
        for spec, seed in [("pixel", 0), ("pixel+dropout=0.25", 1), ("channel+l2=0.01", 2), ("pixel+maxnorm=3", 3)]
    ]
    options = RunOptions(data_dir=str(cifar_dir), logdir=str(tmp_path), accelerator="cpu")
    assert [s["status"] for s in run_pack(trials[:1], options)] == ["done"]
    from ablations.trial import run_trial

    assert run_trial(trials[1], options)["status"] == "done"
    before = {t.name: t.paths(tmp_path).result.read_bytes() for t in trials[:2]}
    statuses = run_pack(trials, options)
    assert [s["status"] for s in statuses] == ["skipped", "skipped", "done", "done"]
    assert {t.name: t.paths(tmp_path).result.read_bytes() for t in trials[:2]} == before
    single_result = json.loads(before[trials[1].name])
    for t in trials[2:]:
        result = json.loads(t.paths(tmp_path).result.read_text())
        assert result["environment"]["pack"] == {
            "size": 2,
            "index": trials.index(t) - 2,
            "members": [x.name for x in trials[2:]],
        }
        assert set(result) == set(single_result) and result["settings_hash"] == t.settings_hash
        assert set(result["history"][0]) >= {"epoch", "train/loss", "train/acc", "val/loss", "val/acc"}
        folder = t.paths(tmp_path).folder
        assert (folder / "hparams.yaml").exists() and list(folder.glob("events.out.tfevents.*"))
        maxnorm = {"train/maxnorm_rescaled": [1]} if t.spec.max_norm else {}  # logged with max-norm only
        assert _scalar_steps(folder) == {**_scalar_steps(trials[1].paths(tmp_path).folder), **maxnorm}  # as single
    assert "train/maxnorm_rescaled" in json.loads(trials[3].paths(tmp_path).result.read_text())["metrics"]
    assert len(list(tmp_path.glob(f"packs/*/*/{RESULT_FILE}"))) == 4


def _scalar_steps(folder) -> dict[str, list[int]]:
    """Each scalar tag of a trial's TensorBoard run with its steps (epochs trained)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    return {
        tag: [e.step for e in (events.Scalars(tag) if tag in tags["scalars"] else events.Tensors(tag))]
        for tag in [*tags["scalars"], *tags["tensors"]]
        if "/" in tag and not tag.startswith(("_hparams_", "trial/"))
    }
