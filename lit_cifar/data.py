"""CIFAR as uint8 (N, 3, 32, 32) tensors up to the training device, and a `LightningDataModule` that fits the
normalization statistics on the training split and cuts batches by index in a seeded per-epoch order."""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Protocol, cast, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lit_cifar.layouts import BIN_LAYOUT, CIFAR10, CIFAR100, CIFAR100_LAYOUT, CLASSES, CifarFormat, default_data_dir
from lit_cifar.layouts import IMAGE_SHAPE, find_layout
from lit_cifar.spec import NORMALIZATIONS, Normalization, RegularizationSpec, check_number

RECORD_BYTES = 1 + 3 * 32 * 32  # a binary-layout record: 1 label byte + 3072 pixel bytes
AUGMENT_PADDING = 4  # pixels of zero padding around the image before the random 32x32 crop
# A checkpoint's data state (`CIFAR10DataModule.state_dict`), whatever the data module's class name.
DATA_STATE_KEYS = frozenset({"normalize", "mean", "std", "split_seed", "val_size", "limit_train"})


@runtime_checkable
class NormalizingData(Protocol):
    """What `lit_cifar.RegularizedClassifier` reads from a data module: ``normalize`` as its spec's, and the training
    split's ``mean``/``std`` (`fit_normalization`; ``None`` until fitted), which a fitted model overwrites."""

    normalize: Normalization
    mean: Optional[Tensor]
    std: Optional[Tensor]


def attached_datamodule(trainer: pl.Trainer) -> Optional[pl.LightningDataModule]:
    """The data module `trainer` runs with, if any (Lightning sets ``Trainer.datamodule`` without declaring it)."""
    return getattr(trainer, "datamodule", None)


class DatasetError(ValueError):
    """CIFAR files are missing, truncated or corrupt; the message names the file or directory."""


# All a dataset pickle may name: NumPy's array reconstruction (NumPy 1 and 2) and Python 2's byte-string helper.
PICKLE_GLOBALS = frozenset(
    [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
    + [(f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
)


class DataUnpickler(pickle.Unpickler):
    """Resolves only `PICKLE_GLOBALS`: a crafted file naming any other callable fails before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a dataset pickle holds only numeric arrays")
        return super().find_class(module, name)


def load_data_pickle(path: Path) -> Any:
    """A (Python 2, so latin1) dataset pickle of dicts, lists, strings, numbers and numeric arrays, read with
    `DataUnpickler`; ``pickle.UnpicklingError`` for anything else."""
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


def read_batch(path: Path, fmt: CifarFormat = CIFAR10) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) of one file, binary records (``*.bin``) or a pickle;
    DatasetError naming a file that is missing, truncated or corrupt."""
    try:
        if path.suffix == ".bin":
            records = np.fromfile(path, dtype=np.uint8)
            if not records.size or records.size % RECORD_BYTES:
                raise DatasetError(
                    f"truncated or corrupt {fmt.name} file {path}: {records.size} bytes is not a whole number of "
                    f"{RECORD_BYTES}-byte records"
                )
            data, labels = records.reshape(-1, RECORD_BYTES)[:, 1:], records[::RECORD_BYTES].astype(np.int64)
        else:
            entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in load_data_pickle(path).items()}
            data, labels = entry["data"], np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, *IMAGE_SHAPE)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"missing {fmt.name} file {path}") from None
    except OSError as error:
        raise DatasetError(f"cannot read {fmt.name} file {path}: {error.strerror}") from None
    except Exception as error:  # truncated pickles raise EOFError, UnpicklingError, KeyError, ValueError...
        raise DatasetError(f"corrupt {fmt.name} file {path}: {type(error).__name__}: {error}") from None
    if len(images) != len(labels):
        raise DatasetError(f"corrupt {fmt.name} file {path}: {len(images)} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= fmt.num_classes))
    if len(bad):
        raise DatasetError(
            f"corrupt {fmt.name} file {path}: record {bad[0]} has label {labels[bad[0]]}, "
            f"outside 0-{fmt.num_classes - 1} ({len(bad)} such record(s))"
        )
    return images, torch.from_numpy(labels)


def read_split(layout_dir: Path, train: bool, fmt: CifarFormat = CIFAR10) -> tuple[Tensor, Tensor]:
    """The training files (``train=True``) or the test file of one layout folder, each of any number of records."""
    suffix = ".bin" if layout_dir.name == BIN_LAYOUT else ""
    names = fmt.train_files if train else (fmt.test_file,)
    images, labels = zip(*(read_batch(layout_dir / f"{name}{suffix}", fmt) for name in names))
    return torch.cat(images), torch.cat(labels)


def fit_normalization(images: Tensor, normalize: Normalization, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Mean and population std (float32, 0-255 units; std 1 where constant) of `images` (N, C, H, W): per pixel
    (C, H, W) for ``"pixel"``, per channel (C, 1, 1) for ``"channel"``, 0 and 1 for ``"none"``; float64 sums."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    if images.dim() != 4 or min(images.shape[1:]) < 1:
        raise ValueError(f"images must be (N, C, H, W), got image shape {tuple(images.shape[1:])}")
    if normalize == "none":
        return torch.zeros(images.shape[1], 1, 1), torch.ones(images.shape[1], 1, 1)
    dims = (0,) if normalize == "pixel" else (0, 2, 3)
    total = total_sq = torch.zeros((), dtype=torch.float64)
    for part in images.split(chunk):
        x = part.double()
        total = total + x.sum(dims, keepdim=True)
        total_sq = total_sq + x.square().sum(dims, keepdim=True)
    count = images.numel() // total.numel()
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.squeeze(0).float(), torch.where(std > 0, std, 1.0).squeeze(0).float()


def random_crop_flip(images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """A random HxW crop of each image of a (B, C, H, W) batch zero-padded by 4 pixels, flipped with probability 1/2."""
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


class EpochSampler(DistributedSampler):
    """Every ``world_size``-th index from ``rank``, shuffled by (seed, epoch) and cut to equal shards, or in order with
    every image once; a ``DistributedSampler``, so Lightning never shards it again."""

    def __init__(self, n: int, shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        indices = cast("torch.utils.data.Dataset[int]", range(n))  # DistributedSampler needs only len(dataset)
        super().__init__(indices, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle)
        self.n = n

    def indices(self) -> Tensor:
        """This rank's indices for the current epoch."""
        if not self.shuffle:
            return torch.arange(self.rank, self.n, self.num_replicas)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        return order[self.rank :: self.num_replicas][: len(self)]

    def __len__(self) -> int:
        return self.n // self.num_replicas if self.shuffle else len(range(self.rank, self.n, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


def evaluation_sampler(trainer: Optional[pl.Trainer], n: int) -> EpochSampler:
    """This rank's shard of `n` evaluation images, in order, never padded (as Lightning's are), so DDP counts each
    image once. In a data module of your own::

        def test_dataloader(self):
            sampler = evaluation_sampler(self.trainer, len(self.test_set))
            return DataLoader(self.test_set, batch_size=64, sampler=sampler)
    """
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    return EpochSampler(n, shuffle=False, rank=rank, world_size=world)


class TensorBatches:
    """Batches of ``(images, labels)`` cut by index in an `EpochSampler`'s order from tensors moved to `device` once:
    no worker processes, no per-image Python."""

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, sampler: EpochSampler, device: Optional[torch.device]
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
        for index in indices.split(self.batch_size):
            yield self.images[index], self.labels[index]


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 with a held-out validation split and normalization statistics fitted on the training split only.

    Batches are ``(uint8 images (B, 3, 32, 32), int64 labels (B,))`` (prediction: ``(images, index)``), augmented by
    `preprocess` on the device; under DDP each rank takes a disjoint shard. `state_dict` (saved in checkpoints) holds
    the statistics, the split and the training order's seed. A bad argument is a TypeError or ValueError naming it.

    Args:
        data_dir: folder of ``cifar-10-batches-py/`` or ``-bin/`` (``None``: ``$LIT_CIFAR_DATA``, else ``./data``).
        normalize: ``"none"`` (raw 0-255 pixels), ``"pixel"`` (per-pixel mean/std) or ``"channel"``.
        augment: random crop (4-pixel padding) and horizontal flip on training batches.
        val_size: training images held out for validation (never the test set).
        split_seed: seed of the permutation that picks the validation images.
        batch_size: images per batch, for training and evaluation.
        limit_train: keep only the first N of the remaining training images (``None``: all of them).
        download: let `prepare_data` download the official archive through torchvision (checksum-verified).
        num_workers: 0 serves batches from tensors on the device; > 0 a ``DataLoader`` with workers (same order).
        seed: seed of the training order; ``None``: ``torch.initial_seed()`` at `setup` (``seed_everything`` sets it).
    """

    FORMAT: CifarFormat = CIFAR10  # which dataset, and how it lies on disk

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
        for name, low in (("val_size", 0), ("batch_size", 1), ("num_workers", 0), ("split_seed", 0)):
            check_number(name, locals()[name], low, integer=True)
        check_number("limit_train", limit_train, 1, integer=True, optional=True)
        check_number("seed", seed, 0, integer=True, optional=True)
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
        self._test: Optional[tuple[Tensor, Tensor]] = None  # read when first needed

    def default_classes(self) -> tuple[str, ...]:
        """The class names, index by index."""
        return CLASSES

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_spec(cls, spec: RegularizationSpec | str, **kwargs: Any) -> CIFAR10DataModule:
        """A data module whose normalization and augmentation are those of `spec`."""
        spec = RegularizationSpec.coerce(spec)
        return cls(normalize=spec.normalize, augment=spec.augment, **kwargs)

    def _layout(self, download_error: Optional[BaseException] = None) -> Path:
        """The folder of the dataset's layout in `data_dir`; DatasetError saying what is missing and what to do."""
        layout = find_layout(self.data_dir, self.FORMAT)
        if layout is not None and download_error is None:
            return layout
        if download_error is not None:
            what = f"the download failed: {type(download_error).__name__}: {download_error}"
        elif self.download:
            what = "call prepare_data() to download it"
        else:
            what = "pass download=True, or point data_dir (or $LIT_CIFAR_DATA) at a folder holding either layout"
        fmt = self.FORMAT
        expected = " or ".join(
            f"{self.data_dir / name} ({'binary' if name == BIN_LAYOUT else 'Python'} version)" for name in fmt.layouts
        )
        raise DatasetError(
            f"{fmt.name} not found in {self.data_dir}: expected {expected}, from {fmt.url}. "
            f"download={self.download}: {what}."
        ) from download_error

    def prepare_data(self) -> None:
        """Download and extract the official archive (checksum-verified) if no layout is present."""
        if find_layout(self.data_dir, self.FORMAT) is not None or not self.download:
            self._layout()
            return
        import torchvision.datasets

        try:
            getattr(torchvision.datasets, self.FORMAT.torchvision)(str(self.data_dir), train=True, download=True)
        except Exception as error:
            self._layout(error)

    def _train_size(self, total: int, layout: Path) -> int:
        """The training images left of `total` after validation and `limit_train`; ValueError if none or too few."""
        if self.val_size >= total:
            raise ValueError(f"val_size={self.val_size} leaves no training images: {layout} holds {total}")
        train = total - self.val_size
        if self.limit_train is not None and self.limit_train > train:
            raise ValueError(
                f"limit_train={self.limit_train} is larger than the training split: "
                f"{total} images - val_size {self.val_size} = {train}"
            )
        return train if self.limit_train is None else self.limit_train

    def setup(self, stage: Optional[str] = None) -> None:
        """Load the images, hold out the validation split and fit the normalization on the training split. The
        test split is read for ``"test"``, ``"predict"`` and ``None`` or on first use, not for fitting."""
        if self.train_images is None:
            layout = self._layout()
            images, labels = read_split(layout, train=True, fmt=self.FORMAT)
            train = self._train_size(len(labels), layout)
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
            val_index, train_index = order[: self.val_size], order[self.val_size :][:train]
            self.train_images, self.train_labels = images[train_index], labels[train_index]
            self.val_images, self.val_labels = images[val_index], labels[val_index]
            if self.mean is None:  # statistics restored from a checkpoint win over a refit
                self.mean, self.std = fit_normalization(self.train_images, self.normalize)
            if self.seed is None:
                self.seed = torch.initial_seed() % 2**31
        if stage in (None, "test", "predict"):
            self._read_test()

    def class_examples(self, per_class: int = 1) -> tuple[Tensor, list[str]]:
        """Up to `per_class` training images of every class (uint8, class by class) and their names, after `setup`."""
        if self.train_images is None or self.train_labels is None:
            raise RuntimeError("class_examples() needs the data: call setup() first")
        check_number("per_class", per_class, 1, integer=True)
        index = torch.cat([(self.train_labels == c).nonzero()[:per_class, 0] for c in range(len(self.classes))])
        return self.train_images[index], [self.classes[int(c)] for c in self.train_labels[index]]

    def verify(self) -> dict[str, int]:
        """``{"train": N, "val": val_size, "test": N}`` after reading every file once: DatasetError naming a bad file,
        ValueError for a split that does not fit."""
        layout = self._layout()
        total = len(read_split(layout, train=True, fmt=self.FORMAT)[1])
        test = len(read_split(layout, train=False, fmt=self.FORMAT)[1])
        return {"train": self._train_size(total, layout), "val": self.val_size, "test": test}

    def _batches(self, images: Optional[Tensor], labels: Optional[Tensor], train: bool) -> Any:
        """Device-resident `TensorBatches` (``num_workers == 0``) or a worker `DataLoader` in the same order."""
        if images is None or labels is None:
            raise RuntimeError(f"{type(self).__name__} has no data to serve yet: call setup() first")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        seed = 0 if self.seed is None else self.seed
        sampler = EpochSampler(len(labels), shuffle=train, seed=seed, rank=rank, world_size=world)
        if self.num_workers == 0:
            device = trainer.strategy.root_device if trainer is not None else None
            return TensorBatches(images, labels, self.batch_size, sampler, device=device)
        dataset, workers = TensorDataset(images, labels), self.num_workers
        generator = torch.Generator().manual_seed(seed)  # seeding workers must not draw from the global RNG
        return DataLoader(dataset, self.batch_size, sampler=sampler, num_workers=workers, generator=generator)

    def train_dataloader(self) -> Any:
        """The training split's batches, reshuffled every epoch (seeded)."""
        return self._batches(self.train_images, self.train_labels, train=True)

    def val_dataloader(self) -> Any:
        """The validation split's batches, in order, each image once."""
        return self._batches(self.val_images, self.val_labels, train=False)

    def test_dataloader(self) -> Any:
        """The test split's batches, in order, each image once."""
        return self._batches(*self._read_test(), train=False)

    def predict_dataloader(self) -> Any:
        """Batches of ``(images, index)``: the test split, or the images of `set_predict_images`, in order."""
        images = self.predict_images if self.predict_images is not None else self.test_images
        return self._batches(images, None if images is None else torch.arange(len(images)), train=False)

    def _read_test(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The test split, read from disk on first use after `setup`; ``(None, None)`` before."""
        if self._test is None and self.train_images is not None:
            self._test = read_split(self._layout(), train=False, fmt=self.FORMAT)
        return self._test or (None, None)

    @property
    def test_images(self) -> Optional[Tensor]:
        """The test split's uint8 images, read from disk on first use once the module is set up."""
        return self._read_test()[0]

    @property
    def test_labels(self) -> Optional[Tensor]:
        """The test split's int64 labels, read with `test_images`."""
        return self._read_test()[1]

    def set_predict_images(self, images: Optional[Tensor]) -> None:
        """Predict on `images` (uint8, shaped as the training images) instead of the test split (``None``)."""
        shape = tuple(self.train_images.shape[1:]) if self.train_images is not None else IMAGE_SHAPE
        if images is not None and (
            not isinstance(images, Tensor) or images.dtype != torch.uint8 or tuple(images.shape[1:]) != shape
        ):
            raise ValueError(
                f"predict images must be a uint8 tensor of shape (N, {', '.join(map(str, shape))}), got "
                f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
            )
        self.predict_images = images

    def preprocess(self, images: Tensor, train: bool) -> Tensor:
        """The batch transform on the device, uint8 in, 0-255 units out: augments training batches when ``augment``;
        override it to plug in your own."""
        return random_crop_flip(images) if train and self.augment else images

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        return self.preprocess(images, train=self.trainer is not None and self.trainer.training), labels

    def state_dict(self) -> dict[str, Any]:
        """The statistics, the split and the training order's seed: a resumed run draws the uninterrupted one's."""
        return {key: getattr(self, key) for key in sorted(DATA_STATE_KEYS | {"seed"})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a checkpoint's statistics and split (data loaded with another split is split again);
        ValueError if the checkpoint's ``normalize`` is not this module's."""
        if state_dict["normalize"] != self.normalize:
            raise ValueError(
                f"the checkpoint's data was normalized with normalize={state_dict['normalize']!r}, "
                f"this data module has normalize={self.normalize!r}"
            )
        split = {key: state_dict[key] for key in ("val_size", "split_seed", "limit_train")}
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
    """CIFAR-100 (100 classes, named in its ``meta`` file) in ``cifar-100-python/``; else as `CIFAR10DataModule`."""

    FORMAT = CIFAR100

    def default_classes(self) -> tuple[str, ...]:
        with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError):
            names = load_data_pickle(self.data_dir / CIFAR100_LAYOUT / "meta")["fine_label_names"]
            if len(names) == CIFAR100.num_classes:
                return tuple(str(n) for n in names)
        return tuple(f"class_{i}" for i in range(CIFAR100.num_classes))
