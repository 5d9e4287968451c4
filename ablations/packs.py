"""Packs (``--pack K``): which trials pack together, and training a pack as one batched model (`lit_cifar.pack`),
leaving every member's folder exactly as its single trial would. `ablations.engines.packs` runs a sweep's packs.

Every member gets its own ``result.json`` (the single trial's schema, with ``environment.pack`` naming the pack),
history, TensorBoard run (scalars, weight histograms, hparams.yaml, HParams record) and, when it fails, its own
``error.json``. Each member's lock is held while its pack trains; a member finished or running elsewhere is left
out, so a partly finished pack trains only the others.

Trials pack together when they share the suite, the training settings and the architecture (BatchNorm or not);
they may differ in seed, normalization, augmentation, penalties, max-norm and dropout. Packed and single results
differ only by floating-point rounding (see docs/packs.md), so the pack is provenance, not part of the settings
hash: either kind of result resumes the other.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Union

from ablations.identity import DEFAULT_DATA
from ablations.suite import RunOptions, Trial

AUTO = "auto"
MAX_AUTO_PACK = 64  # members of an automatic GPU pack at most
GPU_MEMORY_SHARE = 0.7  # of the GPU's free memory an automatic pack plans to use
CPU_AUTO_PACK = 1  # on a CPU a pack is no faster than its trials in turn (docs/packs.md)


def pack_value(text: str) -> Union[int, str]:
    """``--pack``'s value: ``auto`` or an integer >= 1 (ValueError naming the value otherwise)."""
    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--pack {text!r} is not an integer >= 1 or 'auto'") from None
    if value < 1:
        raise ValueError(f"--pack {value} must be >= 1 (or 'auto')")
    return value


def check_pack(pack: Union[int, str, None], engine: str, parallel: int, strategy: str, compile: bool) -> None:
    """Refuse what packs do not support (ValueError: the run exits 2 before anything trains)."""
    if pack in (None, 1):
        return
    problems = {
        f"--engine {engine}": engine != "local",
        f"--parallel {parallel}": parallel > 1,
        f"--strategy {strategy}": strategy != "auto",
        "--compile": compile,
    }
    for flag, bad in problems.items():
        if bad:
            raise ValueError(
                f"--pack {pack} is not supported with {flag}: packs train in one process of the local "
                "engine, one pack at a time; drop --pack, or that flag"
            )


MAXNORM_RESCALED = "train/maxnorm_rescaled"


def check_packable(trials: Sequence[Trial]) -> None:
    """Refuse trials a pack cannot train (ValueError): packs stack the notebook's CNN on CIFAR-10 with the built-in
    Adam; a suite that names another model, data or optimizer runs unpacked."""
    for trial in trials:
        other = {
            "a model": trial.model is not None,
            "data": trial.data != DEFAULT_DATA,
            "an optimizer": trial.settings.optimizer is not None,
        }
        named = [what for what, bad in other.items() if bad]
        if named:
            raise ValueError(
                f"--pack is not supported for trial {trial.name}, which names {' and '.join(named)} of "
                "its own: packs train the notebook's CNN on CIFAR-10 with the built-in Adam; drop --pack"
            )


def member_bytes(batch_size: int, batchnorm: bool) -> int:
    """A generous estimate of one member's GPU memory: weights, gradients and Adam's two moments of the
    notebook CNN (22.2 M parameters, fp32) and the activations of a batch kept for the backward pass."""
    parameters = 22_200_000 * 4 * 4
    per_image = (30 * 30 + 28 * 28 + 26 * 26) * 32 * 4 * (3 if batchnorm else 2) + 3 * 32 * 32 * 4
    return parameters + 2 * per_image * batch_size


def resolve_pack(pack: Union[int, str, None], trials: Sequence[Trial], accelerator: str) -> int:
    """The pack size to use: K as given; for ``auto`` on a GPU, as many members as fit in `GPU_MEMORY_SHARE`
    of its free memory (at most `MAX_AUTO_PACK`), and `CPU_AUTO_PACK` on a CPU."""
    if pack is None:
        return 1
    if pack != AUTO:
        return int(pack)
    import torch

    if accelerator not in ("auto", "gpu", "cuda") or not torch.cuda.is_available() or not trials:
        return CPU_AUTO_PACK
    free, _ = torch.cuda.mem_get_info()
    s = trials[0].settings
    fits = int(free * GPU_MEMORY_SHARE // member_bytes(s.batch_size, True))
    return max(1, min(MAX_AUTO_PACK, fits))


def pack_key(trial: Trial) -> str:
    """What the members of one pack share: suite, settings (but seeds), data-parallel width and architecture."""
    settings = asdict(trial.settings)
    del settings["seeds"]
    return json.dumps(
        {
            "suite": trial.suite,
            "settings": settings,
            "data_parallel": trial.data_parallel,
            "batchnorm": trial.spec.batchnorm,
        },
        sort_keys=True,
    )


def make_packs(trials: Sequence[Trial], size: int) -> list[list[Trial]]:
    """The trials grouped by `pack_key` (in order of first appearance) and each group cut into packs of at most
    `size`, as even as possible (27 trials with size 8: 7, 7, 7, 6)."""
    if size < 1:
        raise ValueError(f"pack size {size} must be >= 1")
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(pack_key(trial), []).append(trial)
    packs = []
    for group in groups.values():
        count = math.ceil(len(group) / size)
        base, extra = divmod(len(group), count)
        start = 0
        for index in range(count):
            end = start + base + (index < extra)
            packs.append(group[start:end])
            start = end
    return packs


# ---------------------------------------------------------------------------------------------- monitoring
def _pack_callbacks(
    trials: Sequence[Trial],
    options: RunOptions,
    histogram_tags: Sequence[str],
    member_hparams: Sequence[dict[str, Any]],
) -> tuple[Any, list[Any]]:
    """The pack's monitor and the Trainer's callbacks (the monitor, BatchNorm drift, the suite's samples, the
    interrupt check)."""
    import lightning.pytorch as pl
    import torch

    from ablations.monitor import (
        BatchNormDrift,
        NonFiniteLossError,
        SuiteSamples,
        Throughput,
        TrialLogger,
        log_weight_histogram,
    )
    from ablations.trial import StopWhenInterrupted

    class MemberDrift(BatchNormDrift):
        """`BatchNormDrift` of a pack's BatchNorm layers, split per member (its channels), kept, not logged."""

        def __init__(self, size: int) -> None:
            super().__init__()
            self.size = size
            self.values: list[dict[str, float]] = [{} for _ in range(size)]

        def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self._remove_hooks()
            if not self._batch or trainer.sanity_checking:
                return
            gaps, ratios = zip(*(self.channel_drift(layer, *batch) for layer, batch in self._batch.items()))
            gap = torch.stack([g.view(self.size, -1) for g in gaps], 1).flatten(1).mean(1).tolist()
            ratio = torch.stack([r.view(self.size, -1) for r in ratios], 1).flatten(1).mean(1).tolist()
            self.values = [{"val/bn_mean_gap": g, "val/bn_std_ratio": r} for g, r in zip(gap, ratio)]

    class PackMonitor(pl.Callback):
        """Every member's history, scalars and weight histograms in its own TensorBoard run; a member whose loss
        is no longer finite is failed (as its single trial would stop) while the others train on."""

        def __init__(self) -> None:
            self.loggers = [TrialLogger(t.paths(options.logdir).folder, t) for t in trials]
            for logger, hparams in zip(self.loggers, member_hparams):
                logger.log_hyperparams(hparams)
            self.histories: list[list[dict[str, float]]] = [[] for _ in trials]
            self.failed: dict[int, str] = {}
            self.tested: list[dict[str, float]] = [{} for _ in trials]
            self.drift = MemberDrift(len(trials))
            self.throughput = Throughput()
            self._val: list[dict[str, float]] = [{} for _ in trials]

        def _live(self) -> list[int]:
            return [k for k in range(len(trials)) if k not in self.failed]

        def on_validation_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
            if trainer.sanity_checking:
                return
            values = module.epoch_values("val")
            self._val = [
                {**v, **(d if trials[k].spec.batchnorm else {})}
                for k, (v, d) in enumerate(zip(values, self.drift.values))
            ]

        def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
            epoch, values = trainer.current_epoch, module.epoch_values("train")
            values = [
                v if trials[k].spec.max_norm else {m: x for m, x in v.items() if m != MAXNORM_RESCALED}
                for k, v in enumerate(values)
            ]  # as a single trial logs it: with max-norm only
            weight = module.network.hidden_weight
            for k in self._live():
                self.histories[k].append({"epoch": epoch, **values[k], **self._val[k]})
                self.loggers[k].log_epoch(self.histories[k][-1], epoch + 1)  # as a single trial's EpochHistory
                log_weight_histogram(self.loggers[k].experiment, f"weights/{histogram_tags[k]}", weight[k], epoch + 1)
                loss = values[k].get("train/loss", 0.0)
                if not math.isfinite(loss):
                    self.failed[k] = str(
                        NonFiniteLossError(
                            f"train/loss became {loss} in epoch {epoch}: the trial diverged (too strong a penalty or "
                            "learning rate?)"
                        )
                    )
                    module.mark_failed(k)
            if not self._live():
                raise NonFiniteLossError(f"every member of the pack diverged: {self.failed[0]}")

        def on_test_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
            self.tested = module.epoch_values("test")  # written with the HParams row by `log_trial`

    monitor = PackMonitor()
    callbacks = [
        monitor.drift,
        monitor,
        monitor.throughput,
        SuiteSamples(Path(options.logdir) / trials[0].suite),
        StopWhenInterrupted(),
    ]
    return monitor, callbacks


# ------------------------------------------------------------------------------------------------ training
def _members(trials: Sequence[Trial]) -> tuple[list[Any], Any]:
    """Each member's classifier built exactly as its single trial builds it (seeded, then constructed), and the
    members' random streams continuing from there."""
    import lightning.pytorch as pl
    import torch

    from lit_cifar import RegularizedClassifier
    from lit_cifar.pack import MemberRandomness

    members, states = [], []
    for trial in trials:
        s = trial.settings
        pl.seed_everything(trial.seed, workers=True, verbose=False)
        members.append(RegularizedClassifier(trial.spec, lr=s.lr, lr_decay=s.lr_decay))
        states.append(torch.get_rng_state())
    return members, MemberRandomness([t.seed for t in trials], states)


def _data_hparams(trial: Trial, options: RunOptions) -> dict[str, Any]:
    """The data module hyperparameters the member's single trial logs."""
    from lit_cifar import CIFAR10DataModule

    s = trial.settings
    dm = CIFAR10DataModule.from_spec(
        trial.spec,
        data_dir=options.data_dir,
        val_size=s.val_size,
        split_seed=s.split_seed,
        batch_size=s.batch_size,
        limit_train=s.limit_train,
        download=options.download,
        seed=trial.seed,
    )
    return dict(dm.hparams_initial)


def train_and_test_pack(trials: Sequence[Trial], options: RunOptions) -> list[dict[str, Any]]:
    """Train and test the trials as one pack. Returns, per member, ``{"result": ...}`` (what its single trial adds
    to result.json) or ``{"error": reason}`` for a member that diverged."""
    import lightning.pytorch as pl

    from ablations.trial import release_memory, trainer_kwargs
    from lit_cifar import tune_allocator
    from lit_cifar.pack import PackDataModule, PackedClassifier

    start = time.perf_counter()
    tune_allocator()
    s = trials[0].settings
    dm = PackDataModule(
        [t.spec for t in trials],
        [t.seed for t in trials],
        data_dir=options.data_dir,
        val_size=s.val_size,
        split_seed=s.split_seed,
        batch_size=s.batch_size,
        limit_train=s.limit_train,
        download=options.download,
    )
    dm.prepare_data()
    sizes = dm.verify()
    dm.setup("fit")
    release_memory()
    members, randomness = _members(trials)
    tags = [m.named_regularized_layers()[0][0] for m in members]
    hparams = [{**m.hparams_initial, **_data_hparams(t, options)} for m, t in zip(members, trials)]
    model = PackedClassifier(members, randomness)
    del members
    release_memory()
    model.set_input_statistics(dm.member_statistics())
    monitor, callbacks = _pack_callbacks(trials, options, tags, hparams)
    trainer = pl.Trainer(**trainer_kwargs(options, s), logger=False, callbacks=callbacks)
    trainer.fit(model, datamodule=dm)
    model.zero_grad(set_to_none=True)
    release_memory()
    trainer.test(model, datamodule=dm, verbose=False)
    wall = time.perf_counter() - start
    rate = model.train_images_seen / max(monitor.throughput.seconds, 1e-9)
    outcomes = []
    for k, logger in enumerate(monitor.loggers):
        if k in monitor.failed:
            outcomes.append({"error": monitor.failed[k]})
            continue
        metrics = {**monitor.histories[k][-1], **monitor.tested[k]}
        metrics.pop("epoch", None)
        logger.log_trial(metrics, monitor.histories[k])
        outcomes.append(
            {
                "result": {
                    "metrics": metrics,
                    "history": monitor.histories[k],
                    "wall_time_s": wall,
                    "train_images_per_s": rate,
                    "train_images": sizes["train"],
                    "val_images": sizes["val"],
                    "test_images": sizes["test"],
                    "world_size": 1,
                    "precision_ran": str(trainer.precision),
                }
            }
        )
    return outcomes
