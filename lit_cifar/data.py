"""CIFAR-10 as in-memory uint8 tensors, and a `LightningDataModule` with train-fit normalization statistics.

CIFAR's images stay uint8 (N, 3, 32, 32) from disk to the training device. Batches are taken by index from a per-epoch
seeded permutation (`TensorBatches`) and, on the device, `CIFAR10DataModule.preprocess` augments training batches.
Standardization, ``(x - mean) / std`` with statistics fitted on the training split alone, is the model's job
(`lit_cifar.module.InputNormalization`): the data module fits the statistics and the model keeps them.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Protocol, cast, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from lit_cifar.layouts import (
    BIN_LAYOUT,
    CIFAR10,
    CIFAR100,
    CIFAR100_LAYOUT,
    CLASSES,
    CifarFormat,
    default_data_dir,
    find_layout,
)
from lit_cifar.spec import NORMALIZATIONS, Normalization, RegularizationSpec

IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
AUGMENT_PADDING = 4  # pixels of zero padding around the image before the random 32x32 crop
# The entries of `CIFAR10DataModule.state_dict` a checkpoint's data state has, whatever the data module's class name.
DATA_STATE_KEYS = frozenset({"normalize", "mean", "std", "split_seed", "val_size", "limit_train"})


@runtime_checkable
class NormalizingData(Protocol):
    """What `lit_cifar.RegularizedClassifier` reads from, and writes to, the Trainer's data module: the statistics
    its input normalization uses. `CIFAR10DataModule` and `CIFAR100DataModule` have these members; a data module
    of your own has them without subclassing either (``isinstance(dm, NormalizingData)`` checks that they exist).

    * ``normalize``: ``"none"``, ``"pixel"`` or ``"channel"``, as the model's spec's ``normalize`` (another one is a
      ValueError when fitting, validation, testing or prediction starts).
    * ``mean`` and ``std``: float tensors in 0-255 units fitted on the training split, shaped as one image (C, H, W)
      for ``"pixel"`` and (C, 1, 1) otherwise (`fit_normalization` computes them), or ``None`` until they are fitted
      (then nothing is read).

    When a stage starts, a model whose statistics are not fitted yet takes the data module's; a fitted one (trained,
    or loaded from a checkpoint) writes its own into ``mean`` and ``std`` where they differ, so that the data
    module's statistics describe the model. A data module without these members is neither read nor written: give
    the model its statistics with ``set_input_statistics(mean, std)``. One whose ``state_dict()`` has every key of
    `DATA_STATE_KEYS` (as `CIFAR10DataModule` and its subclasses do) is also given a checkpoint's data state when
    the checkpoint was saved under another class name (Lightning restores it only into the same one).
    """

    @property
    def normalize(self) -> Normalization:
        """How the data module's statistics standardize images: ``"none"``, ``"pixel"`` or ``"channel"``."""
        ...

    mean: Optional[Tensor]
    std: Optional[Tensor]


def attached_datamodule(trainer: pl.Trainer) -> Optional[pl.LightningDataModule]:
    """The data module `trainer` runs with, if any (Lightning sets ``Trainer.datamodule`` without declaring it)."""
    return getattr(trainer, "datamodule", None)


class DatasetError(ValueError):
    """CIFAR-10 (or CIFAR-100) files are missing, truncated or corrupt; the message names the file or directory."""


# What a dataset pickle may name: NumPy's array reconstruction (NumPy 1 and 2 module names, protocols 2-5) and the
# byte-string helper Python 2 pickles of arrays use. Nothing else is ever imported or called while reading one.
PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class DataUnpickler(pickle.Unpickler):
    """Reads the dataset pickles without running code: only the globals of `PICKLE_GLOBALS` resolve, so a crafted
    file that names any other callable raises ``pickle.UnpicklingError`` before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a dataset pickle holds only numeric arrays")
        return super().find_class(module, name)


def load_data_pickle(path: Path) -> Any:
    """The content of a dataset pickle read with `DataUnpickler`: dicts, lists, strings, numbers and numeric NumPy
    arrays (the official files are Python 2 pickles, hence latin1).

    Raises:
        pickle.UnpicklingError: the file names anything else, or holds an array of object dtype.
    """
    with open(path, "rb") as f:
        content = DataUnpickler(f, encoding="latin1").load()
    pending = [content]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending += [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple)):
            pending += value
        elif isinstance(value, np.ndarray) and value.dtype.hasobject:
            raise pickle.UnpicklingError("refusing an array of object dtype: a dataset pickle holds numeric arrays")
    return content


def _read_pickle_batch(path: Path, fmt: CifarFormat = CIFAR10) -> tuple[Tensor, Tensor]:
    name = fmt.name
    try:
        entry = load_data_pickle(path)
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data, labels = entry["data"], entry.get("labels", entry.get("fine_labels"))
        images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, *IMAGE_SHAPE)
        labels = torch.as_tensor(labels, dtype=torch.int64)
    except FileNotFoundError:
        raise DatasetError(f"missing {name} file {path}") from None
    except OSError as error:
        raise DatasetError(f"cannot read {name} file {path}: {error.strerror}") from None
    except Exception as error:  # truncated pickles raise EOFError, UnpicklingError, KeyError, ValueError...
        raise DatasetError(f"corrupt {name} file {path}: {type(error).__name__}: {error}") from None
    if len(images) != len(labels):
        raise DatasetError(f"corrupt {name} file {path}: {len(images)} images but {len(labels)} labels")
    check_labels(labels, path, fmt)
    return images, labels


def check_labels(labels: Tensor | np.ndarray, path: Path, fmt: CifarFormat = CIFAR10) -> None:
    """Raise DatasetError, naming the file and the record, if a label is not a class number of `fmt`."""
    labels = torch.as_tensor(labels)
    bad = ((labels < 0) | (labels >= fmt.num_classes)).nonzero().flatten()
    if len(bad):
        raise DatasetError(
            f"corrupt {fmt.name} file {path}: record {int(bad[0])} has label {int(labels[bad[0]])}, "
            f"outside 0-{fmt.num_classes - 1} ({len(bad)} such record(s))"
        )


def _read_binary_batch(path: Path) -> tuple[Tensor, Tensor]:
    try:
        raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except FileNotFoundError:
        raise DatasetError(f"missing CIFAR-10 file {path}") from None
    except OSError as error:
        raise DatasetError(f"cannot read CIFAR-10 file {path}: {error.strerror}") from None
    if not len(raw) or len(raw) % RECORD_BYTES:
        raise DatasetError(
            f"truncated or corrupt CIFAR-10 file {path}: {len(raw)} bytes is not a whole number of "
            f"{RECORD_BYTES}-byte records"
        )
    records = raw.view(-1, RECORD_BYTES)
    check_labels(records[:, 0], path)
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), records[:, 0].long()


def read_split(layout_dir: Path, train: bool, fmt: CifarFormat = CIFAR10) -> tuple[Tensor, Tensor]:
    """Read the training batches (``train=True``) or the test batch from one official layout folder.

    Returns uint8 images (N, 3, 32, 32) and int64 labels (N,). Every file may hold any number of records.
    The files are copied straight into one preallocated tensor, so reading costs one file's size on top.

    Raises:
        DatasetError: naming the file that is missing, truncated or corrupt.
    """
    binary = layout_dir.name == BIN_LAYOUT
    names = fmt.train_files if train else (fmt.test_file,)
    read = (
        (lambda name: _read_binary_batch(layout_dir / f"{name}.bin"))
        if binary
        else (lambda name: _read_pickle_batch(layout_dir / name, fmt))
    )
    images, count = torch.empty(0, *IMAGE_SHAPE, dtype=torch.uint8), 0
    parts: list[Tensor] = []  # each file's labels
    for name in names:
        part_images, part_labels = read(name)
        end = count + len(part_labels)
        if end > len(images):  # sized from the first file (the official ones are equal), grown if one is larger
            grown = torch.empty(count + len(part_labels) * (len(names) - len(parts)), *IMAGE_SHAPE, dtype=torch.uint8)
            grown[:count] = images[:count]
            images = grown
        images[count:end] = part_images
        parts.append(part_labels)
        count = end
    images, labels = images[:count], torch.cat(parts)
    bad = (labels < 0) | (labels >= fmt.num_classes)
    if bad.any():
        raise DatasetError(
            f"corrupt {fmt.name} data in {layout_dir}: label {int(labels[bad][0])} is outside 0-{fmt.num_classes - 1}"
        )
    return images, labels


def normalization_shape(normalize: Normalization, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the mean and std that standardize images of `image_shape` (C, H, W): the image's shape for
    ``"pixel"``, (C, 1, 1) for ``"channel"`` and ``"none"``.

    Raises:
        ValueError: `normalize` is not a normalization, or `image_shape` is not (C, H, W).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"images must be (C, H, W), got image shape {tuple(image_shape)}")
    return tuple(image_shape) if normalize == "pixel" else (image_shape[0], 1, 1)


def fit_normalization(images: Tensor, normalize: Normalization, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Mean and std (float32, 0-255 units) of `images` (N, C, H, W), per pixel (C, H, W) or per channel (C, 1, 1).

    The std is the population std (``np.std``, ddof=0), as the notebook computes it. ``"none"`` gives mean 0 and
    std 1, which feeds raw 0-255 pixels. Sums are accumulated in float64 over chunks, so memory stays small. Call it
    on a data module's training split to give it the `NormalizingData` statistics.
    """
    shape = normalization_shape(normalize, tuple(images.shape[1:]))
    if normalize == "none":
        return torch.zeros(shape), torch.ones(shape)
    dims = (0,) if normalize == "pixel" else (0, 2, 3)
    total = torch.zeros((), dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].double()
        total = total + x.sum(dims, keepdim=True)
        total_sq = total_sq + x.square().sum(dims, keepdim=True)
    count = len(images) * (1 if normalize == "pixel" else images.shape[2] * images.shape[3])
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant pixel would otherwise divide by zero
    return mean.squeeze(0).float(), std.squeeze(0).float()


def random_crop_flip(images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random HxW crop of each image zero-padded by 4 pixels, then a horizontal flip with probability 1/2.

    Works on a whole (B, C, H, W) batch at once on its device, any dtype.
    """
    b, c, h, w = images.shape
    p = AUGMENT_PADDING
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    shifts = torch.randint(0, 2 * p + 1, (2, b, 1), device=images.device, generator=generator)
    rows = (shifts[0] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (shifts[1] + torch.arange(w, device=images.device))[:, None, None, :]
    flip = torch.rand(b, device=images.device, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The training order of epoch `epoch`: a permutation of ``range(n)`` that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class EpochSampler(torch.utils.data.DistributedSampler):
    """Indices of one rank's shard, in a new seeded order each epoch when shuffling.

    With ``shuffle`` the order is `epoch_permutation(n, seed, epoch)`; the epoch is set by `set_epoch`, which
    Lightning calls at the start of every training epoch. With ``world_size > 1`` rank ``r`` takes every
    ``world_size``-th index starting at ``r``: disjoint shards that together cover the data. Shuffled (training)
    shards are cut to equal length so every rank runs the same number of steps; unshuffled (evaluation) shards
    keep every image, so each is counted exactly once.

    It is a ``DistributedSampler`` so that Lightning, even with ``use_distributed_sampler=True``, never wraps it in
    a second one (which would shard the shards: each rank would see half of its part).
    """

    def __init__(self, n: int, shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        indices = cast("torch.utils.data.Dataset[int]", range(n))  # DistributedSampler needs only len(dataset)
        super().__init__(indices, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle)
        self.n, self.world_size = n, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> Tensor:
        """This rank's indices for the current epoch."""
        if not self.shuffle:
            return torch.arange(self.rank, self.n, self.world_size)
        order = epoch_permutation(self.n, self.seed, self.epoch)
        return order[self.rank :: self.world_size][: self.n // self.world_size]

    def __len__(self) -> int:
        return self.n // self.world_size if self.shuffle else len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


def evaluation_sampler(trainer: Optional[pl.Trainer], n: int) -> EpochSampler:
    """The sampler that makes an evaluation (validation, test, predict) loader of `n` images count each image exactly
    once under DDP: this rank's disjoint shard, in order, never padded; every image on one process.

    Lightning's own ``DistributedSampler`` pads the shards to equal length, so some images are evaluated twice (102
    for 101 images on 2 processes). Use it in a data module of your own, whatever ``use_distributed_sampler``::

        def test_dataloader(self):
            sampler = evaluation_sampler(self.trainer, len(self.test_set))
            return DataLoader(self.test_set, batch_size=64, sampler=sampler)
    """
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    return EpochSampler(n, shuffle=False, rank=rank, world_size=world)


class TensorBatches:
    """Batches of ``(uint8 images, int64 labels)`` cut by index from tensors, in the order of an `EpochSampler`.

    The tensors are moved to `device` once, on first use, so batches are cut where the model runs: no worker
    processes, no per-image Python.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        sampler: EpochSampler,
        device: Optional[torch.device] = None,
    ) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler, self.device = sampler, device
        self.batch_sampler = None  # read by Lightning, which then calls `sampler.set_epoch` each epoch

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.device is not None and self.images.device != self.device:
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        indices = self.sampler.indices().to(self.labels.device)
        for start in range(0, len(indices), self.batch_size):
            index = indices[start : start + self.batch_size]
            yield self.images[index], self.labels[index]


def check_integer(name: str, value: Any, low: int, optional: bool = False) -> None:
    """`value` must be an integer >= `low` (or None if `optional`): TypeError / ValueError naming `name`."""
    if optional and value is None:
        return
    wanted = f"an integer >= {low}{' or None' if optional else ''}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be {wanted}")
    if value < low:
        raise ValueError(f"{name}={value!r} must be {wanted}")


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 with a held-out validation split and normalization statistics fitted on the training split only.

    **Batches** are ``(uint8 images (B, 3, 32, 32), int64 labels (B,))``, cut from tensors on the training device
    (``num_workers=0``) or served by a worker ``DataLoader`` in the same order. On the device,
    `on_after_batch_transfer` applies `preprocess` (augmentation of training batches; override it to plug in your
    own). Batches stay in 0-255 units: standardizing them with `mean` and `std` is the model's job
    (`RegularizedClassifier` takes the statistics from this module when fitting starts and keeps them in its
    checkpoints). Prediction batches are ``(uint8 images, index)``.

    **Under DDP** every rank takes a disjoint shard of each split (evaluation counts each image exactly once),
    whatever the Trainer's ``use_distributed_sampler``.

    **Checkpoints** hold `state_dict`: the statistics, the split (``val_size``, ``split_seed``, ``limit_train``) and
    the ``seed`` of the training order.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` (torchvision's pickles) or ``cifar-10-batches-bin/``
            (the official binary version). ``None``: ``$LIT_CIFAR_DATA``, else ``./data``.
        normalize: ``"none"`` (raw 0-255 pixels), ``"pixel"`` (per-pixel mean/std) or ``"channel"``.
        val_size: training images held out for validation (the test set is never used for validation).
        split_seed: seed of the permutation that picks the validation images; the same on every process and run.
        batch_size: images per batch, for training and evaluation.
        limit_train: keep only the first N of the remaining training images (``None``: all of them).
        augment: random crop (4-pixel padding) and horizontal flip on training batches.
        download: let `prepare_data` download the official archive through torchvision (checksum-verified)
            when neither layout is in `data_dir`.
        num_workers: 0 (default) serves batches from tensors on the training device; > 0 uses a
            ``torch.utils.data.DataLoader`` with that many worker processes (same order, slower).
        seed: seed of the per-epoch training order; ``None`` takes ``torch.initial_seed()`` at `setup`, which
            ``lightning.seed_everything(s)`` sets to ``s``.

    Raises:
        ValueError, TypeError: naming the argument, for a value of the wrong type or out of range.
    """

    FORMAT: CifarFormat = CIFAR10  # which dataset, and how it lies on disk
    STATE_KEYS = DATA_STATE_KEYS
    SPLIT_KEYS = ("val_size", "split_seed", "limit_train")

    def __init__(
        self,
        data_dir: Optional[str] = None,
        normalize: Normalization = "pixel",
        val_size: int = 5000,
        split_seed: int = 0,
        batch_size: int = 128,
        limit_train: Optional[int] = None,
        augment: bool = False,
        download: bool = True,
        num_workers: int = 0,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
        for name, value, low, optional in (
            ("val_size", val_size, 0, False),
            ("batch_size", batch_size, 1, False),
            ("num_workers", num_workers, 0, False),
            ("split_seed", split_seed, 0, False),
            ("limit_train", limit_train, 1, True),
            ("seed", seed, 0, True),
        ):
            check_integer(name, value, low, optional)
        for name, value in (("augment", augment), ("download", download)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}={value!r} must be True or False")
        if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir={data_dir!r} must be a path (str) or None")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.normalize, self.val_size, self.split_seed = normalize, val_size, split_seed
        self.batch_size, self.limit_train, self.augment = batch_size, limit_train, augment
        self.download, self.num_workers, self.seed = download, num_workers, seed
        self.classes: tuple[str, ...] = self.default_classes()
        self.mean: Optional[Tensor] = None
        self.std: Optional[Tensor] = None
        self.train_images: Optional[Tensor] = None  # the splits, once `setup` has read them
        self.train_labels: Optional[Tensor] = None
        self.val_images: Optional[Tensor] = None
        self.val_labels: Optional[Tensor] = None
        self.predict_images: Optional[Tensor] = None
        self._test: Optional[tuple[Tensor, Tensor]] = None  # (images, labels), read when first needed

    def default_classes(self) -> tuple[str, ...]:
        """The class names, index by index (CIFAR-10's ten)."""
        return CLASSES

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_spec(cls, spec: RegularizationSpec | str, **kwargs: Any) -> CIFAR10DataModule:
        """A data module whose normalization and augmentation are those of `spec`."""
        spec = RegularizationSpec.coerce(spec)
        return cls(normalize=spec.normalize, augment=spec.augment, **kwargs)

    # ----------------------------------------------------------------------------------------------- loading
    def missing_data_message(self, download_error: Optional[BaseException] = None) -> str:
        """What is missing, where we looked, where it comes from, and what `download` did about it."""
        if download_error is not None:
            what = f"the download failed: {type(download_error).__name__}: {download_error}"
        elif self.download:
            what = "call prepare_data() to download it"
        else:
            what = "pass download=True, or point data_dir (or $LIT_CIFAR_DATA) at a folder holding either layout"
        fmt = self.FORMAT
        expected = " or ".join(
            f"{self.data_dir / layout} ({'binary' if layout == BIN_LAYOUT else 'Python'} version)"
            for layout in fmt.layouts
        )
        return (
            f"{fmt.name} not found in {self.data_dir}: expected {expected}, from {fmt.url}. "
            f"download={self.download}: "
            f"{what}."
        )

    def prepare_data(self) -> None:
        """Download and extract the official archive (checksum-verified) if neither layout is present."""
        if find_layout(self.data_dir, self.FORMAT) is not None:
            return
        if not self.download:
            raise DatasetError(self.missing_data_message())
        import torchvision.datasets

        try:
            getattr(torchvision.datasets, self.FORMAT.torchvision)(str(self.data_dir), train=True, download=True)
        except Exception as error:
            raise DatasetError(self.missing_data_message(error)) from error

    def setup(self, stage: Optional[str] = None) -> None:
        """Load the images, hold out the validation split and fit the normalization on the training split.

        The test split is read when a stage needs it (``"test"``, ``"predict"``, or ``None``: every split) or when
        `test_images`/`test_labels` are first used, not for ``"fit"`` or ``"validate"``: a trial trains with 31 MB
        less resident.
        """
        if stage in (None, "test", "predict"):
            self._read_test()
        if self.train_images is not None:
            return
        layout = self._layout()
        images, labels = read_split(layout, train=True, fmt=self.FORMAT)
        if self.val_size >= len(labels):
            raise ValueError(f"val_size={self.val_size} leaves no training images: {layout} holds {len(labels)}")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        val_index, train_index = order[: self.val_size], order[self.val_size :]
        if self.limit_train is not None:
            if self.limit_train > len(train_index):
                raise ValueError(
                    f"limit_train={self.limit_train} is larger than the training split: "
                    f"{len(labels)} images - val_size {self.val_size} = {len(train_index)}"
                )
            train_index = train_index[: self.limit_train]
        self.train_images, self.train_labels = images[train_index], labels[train_index]
        self.val_images, self.val_labels = images[val_index], labels[val_index]
        if self.mean is None:  # statistics restored from a checkpoint win over a refit
            self.mean, self.std = fit_normalization(self.train_images, self.normalize)
        if self.seed is None:
            self.seed = torch.initial_seed() % 2**31

    def class_examples(self, per_class: int = 1) -> tuple[Tensor, list[str]]:
        """The first `per_class` training images of every class (uint8, class by class) and their class names.

        Call after `setup`. A class with fewer training images contributes what it has.
        """
        if self.train_images is None or self.train_labels is None:
            raise RuntimeError("class_examples() needs the data: call setup() first")
        if not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"per_class={per_class!r} must be a positive integer")
        picks = [(self.train_labels == c).nonzero().flatten()[:per_class] for c in range(len(self.classes))]
        index = torch.cat(picks)
        return self.train_images[index], [self.classes[int(c)] for c in self.train_labels[index]]

    def verify(self) -> dict[str, int]:
        """Check the dataset files and the split sizes without loading the images; returns the image counts.

        Cheap: the binary layout is checked by file sizes (whole records, every file present and readable) and its
        label bytes (each a class number); the pickle layout has its counts only inside the pickles, so each file is
        read once (and dropped).

        Returns:
            ``{"train": N, "val": val_size, "test": N}``: the images `setup` will put in each split.

        Raises:
            DatasetError: no layout in `data_dir`, or a file missing, unreadable or truncated (named).
            ValueError: a `val_size` that leaves no training images, or a `limit_train` larger than the split.
        """
        layout = find_layout(self.data_dir, self.FORMAT)
        if layout is None:
            raise DatasetError(self.missing_data_message())
        fmt = self.FORMAT

        def count(name: str) -> int:
            if layout.name != BIN_LAYOUT:
                return len(_read_pickle_batch(layout / name, fmt)[1])
            path = layout / f"{name}.bin"
            if not path.is_file():
                raise DatasetError(f"missing CIFAR-10 file {path}")
            if not os.access(path, os.R_OK):
                raise DatasetError(f"cannot read CIFAR-10 file {path}: Permission denied")
            size = path.stat().st_size
            if not size or size % RECORD_BYTES:
                raise DatasetError(
                    f"truncated or corrupt CIFAR-10 file {path}: {size} bytes is not a whole number "
                    f"of {RECORD_BYTES}-byte records"
                )
            check_labels(np.array(np.memmap(path, dtype=np.uint8, mode="r")[::RECORD_BYTES]), path)  # labels only
            return size // RECORD_BYTES

        total, test = sum(count(name) for name in fmt.train_files), count(fmt.test_file)
        if self.val_size >= total:
            raise ValueError(f"val_size={self.val_size} leaves no training images: {layout} holds {total}")
        train = total - self.val_size
        if self.limit_train is not None and self.limit_train > train:
            raise ValueError(
                f"limit_train={self.limit_train} is larger than the training split: {total} images - "
                f"val_size {self.val_size} = {train}"
            )
        return {"train": train if self.limit_train is None else self.limit_train, "val": self.val_size, "test": test}

    # -------------------------------------------------------------------------------------------- batches
    def _batches(self, images: Optional[Tensor], labels: Optional[Tensor], train: bool) -> Any:
        """Device-resident `TensorBatches` (``num_workers == 0``) or a plain worker `DataLoader` in the same
        order, sharded across ranks by `EpochSampler` under DDP.

        Raises:
            RuntimeError: the split is not loaded yet (`setup` reads it).
        """
        if images is None or labels is None:
            raise RuntimeError(f"{type(self).__name__} has no data to serve yet: call setup() first")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        seed = 0 if self.seed is None else self.seed  # None only before setup: no shuffled order is served then
        sampler = (
            EpochSampler(len(labels), shuffle=True, seed=seed, rank=rank, world_size=world)
            if train
            else evaluation_sampler(trainer, len(labels))
        )
        if self.num_workers == 0:
            device = trainer.strategy.root_device if trainer is not None else None
            return TensorBatches(images, labels, self.batch_size, sampler, device=device)
        # Its own generator: seeding the workers must not draw from the global RNG that dropout and augmentation
        # use, so both paths train identically.
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(images, labels),
            self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(seed),
        )

    def train_dataloader(self) -> Any:
        """The training split's batches of ``(uint8 images, labels)``, reshuffled every epoch (seeded)."""
        return self._batches(self.train_images, self.train_labels, train=True)

    def val_dataloader(self) -> Any:
        """The validation split's batches of ``(uint8 images, labels)``, in order, each image once."""
        return self._batches(self.val_images, self.val_labels, train=False)

    def _read_test(self) -> tuple[Tensor, Tensor]:
        if self._test is None:
            self._test = read_split(self._layout(), train=False, fmt=self.FORMAT)
        return self._test

    def _test_split(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The test split once the module is set up (read on first use), else ``(None, None)``."""
        return self._read_test() if self.train_images is not None or self._test is not None else (None, None)

    @property
    def test_images(self) -> Optional[Tensor]:
        """The test split's uint8 images (N, 3, 32, 32), read from disk on first use once the module is set up."""
        return self._test_split()[0]

    @property
    def test_labels(self) -> Optional[Tensor]:
        """The test split's int64 labels, read with `test_images`."""
        return self._test_split()[1]

    def _layout(self) -> Path:
        layout = find_layout(self.data_dir, self.FORMAT)
        if layout is None:
            raise DatasetError(self.missing_data_message())
        return layout

    def test_dataloader(self) -> Any:
        """The test split's batches of ``(uint8 images, labels)``, in order, each image once."""
        return self._batches(self.test_images, self.test_labels, train=False)

    def set_predict_images(self, images: Optional[Tensor]) -> None:
        """Predict on `images` (uint8, (N, C, H, W) as the training images) instead of the test split; ``None`` goes
        back to it."""
        shape = tuple(self.train_images.shape[1:]) if self.train_images is not None else IMAGE_SHAPE
        if images is not None and (
            not isinstance(images, Tensor) or images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape
        ):
            raise ValueError(
                f"predict images must be a uint8 tensor of shape (N, {', '.join(map(str, shape))})"
                f", got {getattr(images, 'dtype', type(images).__name__)} "
                f"{tuple(getattr(images, 'shape', ()))}"
            )
        self.predict_images = images

    def predict_dataloader(self) -> Any:
        """Batches of ``(uint8 images, index)`` for ``trainer.predict``: the test split, or the images given to
        `set_predict_images`, in order, each image once; ``index`` is the image's position in them."""
        images = self.predict_images if self.predict_images is not None else self.test_images
        return self._batches(images, None if images is None else torch.arange(len(images)), train=False)

    def preprocess(self, images: Tensor, train: bool) -> Tensor:
        """The batch transform, on the device the model runs on: uint8 images in, images in 0-255 units out.

        The default augments training batches (`random_crop_flip`) when ``augment`` and leaves evaluation batches
        as they are. Override it in a subclass to plug in your own augmentation; it may return uint8 or float
        images, and the model standardizes whatever it returns.
        """
        if train and self.augment:
            return random_crop_flip(images)
        return images

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """`preprocess` every batch once it is on the device (training batches as such only while fitting)."""
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(images, train=training), labels

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild this data: the normalization statistics, the split and the seed of
        the training order (so a resumed run draws the batches the uninterrupted one would)."""
        return {
            "normalize": self.normalize,
            "mean": self.mean,
            "std": self.std,
            "split_seed": self.split_seed,
            "val_size": self.val_size,
            "limit_train": self.limit_train,
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a checkpoint's statistics and split; data already loaded with another split is split again.

        Raises:
            ValueError: the checkpoint's ``normalize`` is not this module's.
        """
        if state_dict["normalize"] != self.normalize:
            raise ValueError(
                f"the checkpoint's data was normalized with normalize={state_dict['normalize']!r}, "
                f"this data module has normalize={self.normalize!r}"
            )
        split = {key: state_dict[key] for key in self.SPLIT_KEYS}
        changed = any(getattr(self, key) != value for key, value in split.items())
        for key, value in split.items():
            setattr(self, key, value)
        self.mean, self.std = state_dict["mean"], state_dict["std"]
        if state_dict["seed"] is not None:  # None: saved before setup, this module's own seed stands
            self.seed = state_dict["seed"]
        if changed and self.train_images is not None:
            self.train_images = None
            self.setup()


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (100 fine classes) in its official Python layout, ``cifar-100-python/`` (``train``, ``test`` and
    ``meta`` pickles): everything else (split, statistics fitted on the training split, batches, download through
    torchvision, checksum-verified) as `CIFAR10DataModule`. The class names come from ``meta`` when it is there."""

    FORMAT = CIFAR100

    def default_classes(self) -> tuple[str, ...]:
        meta = self.data_dir / CIFAR100_LAYOUT / "meta"
        try:
            names = load_data_pickle(meta)["fine_label_names"]
            if len(names) == CIFAR100.num_classes:
                return tuple(str(n) for n in names)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError):
            pass
        return tuple(f"class_{i}" for i in range(CIFAR100.num_classes))
