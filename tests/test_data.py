"""CIFAR-10 reading (both official layouts), the train/val split, train-only normalization, batching, sharding
and augmentation of `lit_cifar.data`."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lit_cifar.data import (
    AUGMENT_PADDING,
    CIFAR10DataModule,
    DatasetError,
    load_data_pickle,
    EpochSampler,
    read_batch,
    fit_normalization,
    random_crop_flip,
    read_split,
)
from lit_cifar.layouts import (
    BIN_LAYOUT,
    CLASSES,
    DATA_ENV,
    OFFICIAL_URL,
    PY_LAYOUT,
    TEST_FILE,
    TRAIN_FILES,
    find_layout,
)
from lit_cifar.module import InputNormalization, RegularizedClassifier
from tests.helpers import quiet_trainer
from tests.synthetic import synthetic_parts, write_binary_layout, write_python_layout

N_TRAIN, N_TEST, VAL_SIZE = 630, 200, 100  # sizes of the `cifar_dir` fixture's splits


def make_datamodule(data_dir: Path, **kwargs) -> CIFAR10DataModule:
    """A set-up data module on `data_dir`, small validation split unless told otherwise."""
    kwargs = {"val_size": VAL_SIZE, "batch_size": 64, "download": False, **kwargs}
    dm = CIFAR10DataModule(str(data_dir), **kwargs)
    dm.setup()
    return dm


# --------------------------------------------------------------------------------------------- reading files
def indexed_parts(sizes: tuple[int, ...] = (120, 123, 126, 129, 132), n_test: int = 50, seed: int = 0) -> dict:
    """Training files whose image number i (counted over all files) stores i in pixels [0, 0, 0] and [0, 0, 1]
    (low and high byte), with random bytes elsewhere, so any image can be traced back to its position."""
    rng = np.random.default_rng(seed)
    parts, start = {}, 0
    for name, size in zip(TRAIN_FILES, sizes):
        index = np.arange(start, start + size)
        images = rng.integers(0, 256, size=(size, 3072), dtype=np.uint8)
        images[:, 0], images[:, 1] = index % 256, index // 256
        parts[name] = (images, (index % len(CLASSES)).astype(np.uint8))
        start += size
    parts[TEST_FILE] = (
        rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8),
        (np.arange(n_test) % len(CLASSES)).astype(np.uint8),
    )
    return parts


def image_ids(images: torch.Tensor) -> list[int]:
    """The positions stored by `indexed_parts` in each image."""
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("indexed")
    write_binary_layout(root, indexed_parts())
    return root


def test_binary_records_decode_label_then_rgb_planes(tmp_path: Path) -> None:
    planes = [np.full(1024, 10, np.uint8), np.full(1024, 20, np.uint8), np.arange(1024, dtype=np.uint8)]
    first = bytes([7]) + b"".join(p.tobytes() for p in planes)
    second = bytes([2]) + bytes(range(256)) * 12
    path = tmp_path / "two.bin"
    path.write_bytes(first + second)

    images, labels = read_batch(path)

    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [7, 2] and labels.dtype == torch.int64
    assert (images[0, 0] == 10).all() and (images[0, 1] == 20).all()
    assert images[0, 2].flatten().tolist() == [i % 256 for i in range(1024)]  # row-major 32x32 plane
    assert images[0, 2, 1, 0] == 32  # second row starts at byte 32 of the plane
    assert images[1].flatten().tolist() == list(range(256)) * 12


def test_read_split_reads_files_of_any_size(cifar_dir: Path) -> None:
    """The synthetic training files hold 120, 123, ... 132 records: all are read, in file order."""
    parts = synthetic_parts()
    images, labels = read_split(cifar_dir / BIN_LAYOUT, train=True)
    expected_images = np.concatenate([parts[name][0] for name in TRAIN_FILES]).reshape(-1, 3, 32, 32)
    expected_labels = np.concatenate([parts[name][1] for name in TRAIN_FILES])
    assert len(images) == N_TRAIN
    np.testing.assert_array_equal(images.numpy(), expected_images)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)

    test_images, test_labels = read_split(cifar_dir / BIN_LAYOUT, train=False)
    np.testing.assert_array_equal(test_images.numpy(), parts[TEST_FILE][0].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(test_labels.numpy(), parts[TEST_FILE][1])


@pytest.mark.parametrize("layout", [PY_LAYOUT, BIN_LAYOUT])
def test_read_split_single_record_files(tmp_path: Path, layout: str) -> None:
    parts = {
        name: (np.full((1, 3072), i, np.uint8), np.array([i], np.uint8))
        for i, name in enumerate((*TRAIN_FILES, TEST_FILE))
    }
    folder = (write_python_layout if layout == PY_LAYOUT else write_binary_layout)(tmp_path, parts)
    images, labels = read_split(folder, train=True)
    assert labels.tolist() == [0, 1, 2, 3, 4]
    assert images[:, :, 5, 5].tolist() == [[i] * 3 for i in range(5)]


def test_both_layouts_load_identical_tensors(cifar_dir: Path, cifar_py_dir: Path) -> None:
    binary, pickled = make_datamodule(cifar_dir), make_datamodule(cifar_py_dir)
    for name in (
        "train_images",
        "train_labels",
        "val_images",
        "val_labels",
        "test_images",
        "test_labels",
        "mean",
        "std",
    ):
        a, b = getattr(binary, name), getattr(pickled, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert binary.train_images.dtype == torch.uint8 and binary.train_labels.dtype == torch.int64


def test_find_layout_prefers_pickles(tmp_path: Path) -> None:
    assert find_layout(tmp_path) is None
    (tmp_path / BIN_LAYOUT).mkdir()
    assert find_layout(tmp_path) == tmp_path / BIN_LAYOUT
    (tmp_path / PY_LAYOUT).mkdir()
    assert find_layout(tmp_path) == tmp_path / PY_LAYOUT


def test_classes() -> None:
    dm = CIFAR10DataModule("unused")
    assert len(dm.classes) == 10 and dm.classes[0] == "airplane" and dm.classes[-1] == "truck"


# ------------------------------------------------------------------------------------------- broken datasets
def test_missing_data_without_download_names_everything(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(str(tmp_path), download=False)
    with pytest.raises(DatasetError) as error:
        dm.prepare_data()
    message = str(error.value)
    for part in (str(tmp_path), PY_LAYOUT, BIN_LAYOUT, OFFICIAL_URL, "download=False"):
        assert part in message
    assert OFFICIAL_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    with pytest.raises(DatasetError, match="cifar-10-batches-bin"):
        dm.setup("fit")


def test_failed_download_names_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network here: torchvision's downloader is replaced by one that fails."""
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetError) as error:
        CIFAR10DataModule(str(tmp_path), download=True).prepare_data()
    message = str(error.value)
    for part in (str(tmp_path), PY_LAYOUT, BIN_LAYOUT, OFFICIAL_URL, "download=True", "download failed"):
        assert part in message
    assert "network unreachable" in str(error.value.__cause__)


def test_prepare_data_accepts_either_layout(cifar_dir: Path, cifar_py_dir: Path) -> None:
    for data_dir in (cifar_dir, cifar_py_dir):
        CIFAR10DataModule(str(data_dir), download=False).prepare_data()  # no error, no download


def test_data_dir_defaults_to_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert CIFAR10DataModule().data_dir == tmp_path
    monkeypatch.delenv(DATA_ENV)
    assert CIFAR10DataModule().data_dir == Path("data")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def garble(path: Path) -> None:
    path.write_bytes(b"this is not a pickle at all" * 10)


def remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("layout", "name", "damage"),
    [
        (BIN_LAYOUT, "data_batch_3.bin", truncate),
        (BIN_LAYOUT, "test_batch.bin", truncate),
        (BIN_LAYOUT, "data_batch_5.bin", remove),
        (PY_LAYOUT, "data_batch_2", garble),
        (PY_LAYOUT, "data_batch_4", truncate),
        (PY_LAYOUT, "test_batch", garble),
        (PY_LAYOUT, "data_batch_1", remove),
    ],
)
def test_damaged_file_raises_dataset_error_naming_it(
    tmp_path: Path, cifar_dir: Path, cifar_py_dir: Path, layout: str, name: str, damage
) -> None:
    source = cifar_dir if layout == BIN_LAYOUT else cifar_py_dir
    shutil.copytree(source / layout, tmp_path / layout)
    damage(tmp_path / layout / name)
    with pytest.raises(DatasetError, match=name):
        read_split(tmp_path / layout, train=name.startswith("data_batch"))
    with pytest.raises(DatasetError, match=name):
        make_datamodule(tmp_path)


def test_out_of_range_label_raises_dataset_error(tmp_path: Path) -> None:
    parts = synthetic_parts(per_train_file=5, n_test=5)
    parts["data_batch_2"][1][0] = 10
    folder = write_binary_layout(tmp_path, parts)
    with pytest.raises(DatasetError, match="label 10"):
        read_split(folder, train=True)


# -------------------------------------------------------------------------------------------------- split
def test_val_and_train_are_disjoint_and_cover_the_training_files(indexed_dir: Path) -> None:
    dm = make_datamodule(indexed_dir)
    train, val = image_ids(dm.train_images), image_ids(dm.val_images)
    assert len(val) == VAL_SIZE and len(train) == N_TRAIN - VAL_SIZE
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(N_TRAIN))
    assert dm.train_labels.tolist() == [i % 10 for i in train]  # labels travel with their images
    assert dm.val_labels.tolist() == [i % 10 for i in val]


def test_split_is_deterministic_per_split_seed(indexed_dir: Path) -> None:
    first, again = make_datamodule(indexed_dir, split_seed=3), make_datamodule(indexed_dir, split_seed=3)
    other = make_datamodule(indexed_dir, split_seed=4)
    assert torch.equal(first.val_images, again.val_images)
    assert torch.equal(first.train_images, again.train_images)
    assert set(image_ids(first.val_images)) != set(image_ids(other.val_images))


def test_limit_train_keeps_the_first_images(indexed_dir: Path) -> None:
    full, limited = make_datamodule(indexed_dir), make_datamodule(indexed_dir, limit_train=50)
    assert image_ids(limited.train_images) == image_ids(full.train_images)[:50]
    assert torch.equal(limited.val_images, full.val_images)
    assert torch.equal(limited.test_images, full.test_images)


def test_limit_train_larger_than_split_names_the_numbers(cifar_dir: Path) -> None:
    with pytest.raises(ValueError) as error:
        make_datamodule(cifar_dir, limit_train=1000)
    message = str(error.value)
    for number in ("limit_train=1000", str(N_TRAIN), str(VAL_SIZE), str(N_TRAIN - VAL_SIZE)):
        assert number in message


def test_val_size_must_leave_training_images(cifar_dir: Path) -> None:
    with pytest.raises(ValueError, match="val_size=630"):
        make_datamodule(cifar_dir, val_size=N_TRAIN)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalize": "global"},
        {"val_size": -1},
        {"batch_size": 0},
        {"limit_train": 0},
        {"num_workers": -1},
        {"split_seed": -1},
        {"seed": -2},
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CIFAR10DataModule("unused", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split_seed": "x"},
        {"seed": 1.5},
        {"val_size": "100"},
        {"batch_size": True},
        {"limit_train": 2.0},
        {"augment": "yes"},
        {"download": 1},
        {"data_dir": 3},
    ],
)
def test_constructor_rejects_arguments_of_the_wrong_type(kwargs: dict) -> None:
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        CIFAR10DataModule(**{"data_dir": "unused", **kwargs})


@pytest.mark.parametrize(
    ("spec", "normalize", "augment"),
    [("pixel+augment", "pixel", True), ("channel+bn", "channel", False), ("baseline", "none", False)],
)
def test_from_spec_sets_normalize_and_augment(spec: str, normalize: str, augment: bool) -> None:
    dm = CIFAR10DataModule.from_spec(spec, data_dir="somewhere", val_size=7)
    assert (dm.normalize, dm.augment, dm.val_size, dm.data_dir) == (normalize, augment, 7, Path("somewhere"))


# ---------------------------------------------------------------------------------------------- statistics
def numpy_statistics(images: torch.Tensor, normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's statistics: np.mean / np.std (population) per pixel, or per channel."""
    x = images.numpy().astype(np.float64)
    axis = (0,) if normalize == "pixel" else (0, 2, 3)
    return x.mean(axis=axis, keepdims=True)[0], x.std(axis=axis, keepdims=True)[0]


@pytest.mark.parametrize(("normalize", "shape"), [("pixel", (3, 32, 32)), ("channel", (3, 1, 1))])
def test_statistics_equal_numpy_on_the_training_split_only(cifar_dir: Path, normalize: str, shape: tuple) -> None:
    dm = make_datamodule(cifar_dir, normalize=normalize)
    assert dm.mean.shape == dm.std.shape == shape
    mean, std = numpy_statistics(dm.train_images, normalize)
    np.testing.assert_allclose(dm.mean.numpy(), mean, rtol=1e-4)
    np.testing.assert_allclose(dm.std.numpy(), std, rtol=1e-4)
    # Including the validation images gives other statistics: the test above can tell them apart.
    mean_all, std_all = numpy_statistics(torch.cat([dm.train_images, dm.val_images]), normalize)
    assert not np.allclose(dm.mean.numpy(), mean_all, rtol=1e-4)
    assert not np.allclose(dm.std.numpy(), std_all, rtol=1e-4)


@pytest.mark.parametrize("normalize", ["pixel", "channel"])
def test_statistics_do_not_depend_on_chunk_size(cifar_dir: Path, normalize: str) -> None:
    images, _ = read_split(cifar_dir / BIN_LAYOUT, train=True)
    whole = fit_normalization(images, normalize)
    chunked = fit_normalization(images, normalize, chunk=7)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_no_normalization_feeds_raw_pixels(cifar_dir: Path) -> None:
    dm = make_datamodule(cifar_dir, normalize="none")
    assert torch.equal(dm.mean, torch.zeros(3, 1, 1)) and torch.equal(dm.std, torch.ones(3, 1, 1))
    images = dm.test_images[:4]
    assert torch.equal(dm.preprocess(images, train=False), images)
    assert torch.equal(InputNormalization("none")(images), images.float())


def test_statistics_ignore_val_and_test_images(tmp_path: Path, indexed_dir: Path) -> None:
    """Overwrite every validation image and the test file: the fitted statistics stay the same."""
    original = make_datamodule(indexed_dir)
    val_ids = image_ids(original.val_images)
    parts = indexed_parts()
    images = np.concatenate([parts[name][0] for name in TRAIN_FILES])
    images[val_ids, 2:] = 255  # keep the two id pixels
    start = 0
    for name in TRAIN_FILES:
        size = len(parts[name][0])
        parts[name] = (images[start : start + size], parts[name][1])
        start += size
    parts[TEST_FILE] = (np.zeros_like(parts[TEST_FILE][0]), parts[TEST_FILE][1])
    write_binary_layout(tmp_path, parts)

    changed = make_datamodule(tmp_path)
    assert image_ids(changed.val_images) == val_ids
    assert not torch.equal(changed.val_images, original.val_images)
    assert not torch.equal(changed.test_images, original.test_images)
    assert torch.equal(changed.train_images, original.train_images)
    assert torch.equal(changed.mean, original.mean) and torch.equal(changed.std, original.std)


def test_model_standardizes_with_the_training_statistics(cifar_dir: Path) -> None:
    dm = make_datamodule(cifar_dir, normalize="pixel")
    norm = InputNormalization("pixel")
    norm.set_statistics(dm.mean, dm.std)
    x = norm(dm.preprocess(dm.train_images, train=True))
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.mean(0), torch.zeros(3, 32, 32), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(3, 32, 32), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_loader_counts_every_image_once(cifar_dir: Path, split: str) -> None:
    dm = make_datamodule(cifar_dir, batch_size=64)  # 200 test images: 3 full batches and one of 8
    loader = getattr(dm, f"{split}_dataloader")()
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert len(batches) == len(loader)
    assert len(labels) == {"val": VAL_SIZE, "test": N_TEST}[split]
    assert torch.equal(labels, getattr(dm, f"{split}_labels"))
    assert torch.equal(images, getattr(dm, f"{split}_images"))


def test_train_loader_visits_every_training_image_in_a_shuffled_order(indexed_dir: Path) -> None:
    dm = make_datamodule(indexed_dir, batch_size=64, seed=5)
    loader = dm.train_dataloader()
    ids = [i for images, _ in loader for i in image_ids(images)]
    assert sorted(ids) == sorted(image_ids(dm.train_images))
    assert ids != image_ids(dm.train_images)
    loader.sampler.set_epoch(1)
    assert [i for images, _ in loader for i in image_ids(images)] != ids


@pytest.mark.parametrize("split", ["train", "test"])
def test_worker_loader_gives_the_same_batches(cifar_dir: Path, split: str) -> None:
    """num_workers > 0 uses a torch DataLoader: same batches, same order as the in-memory batches."""
    in_memory = make_datamodule(cifar_dir, batch_size=64, seed=2)
    workers = make_datamodule(cifar_dir, batch_size=64, seed=2, num_workers=1)
    expected = list(getattr(in_memory, f"{split}_dataloader")())
    loader = getattr(workers, f"{split}_dataloader")()
    assert isinstance(loader, torch.utils.data.DataLoader) and len(loader) == len(expected)
    for (images, labels), (want_images, want_labels) in zip(loader, expected, strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


@pytest.mark.parametrize("n", [200, 201])
def test_unshuffled_shards_cover_each_index_once(n: int) -> None:
    shards = [list(EpochSampler(n, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(n))
    assert [len(EpochSampler(n, shuffle=False, rank=r, world_size=2)) for r in range(2)] == [len(s) for s in shards]


@pytest.mark.parametrize("n", [200, 201])
def test_shuffled_shards_are_disjoint_and_equal_length(n: int) -> None:
    samplers = [EpochSampler(n, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
    shards = [list(s) for s in samplers]
    assert len(shards[0]) == len(shards[1]) == n // 2 == len(samplers[0])
    assert not set(shards[0]) & set(shards[1])
    assert all(0 <= i < n for shard in shards for i in shard)
    for sampler in samplers:
        sampler.set_epoch(1)
    assert [list(s) for s in samplers] != shards


def test_the_training_order_is_reproducible_and_changes_per_epoch_and_seed() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochSampler(100, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    first = order(7, 0)
    assert sorted(first) == list(range(100)) and first == order(7, 0)
    assert first != order(7, 1) and first != order(8, 0)


# ------------------------------------------------------------------------------------------------ augmentation
def crop_windows(image: torch.Tensor) -> list[torch.Tensor]:
    """Every 32x32 window of `image` zero-padded by AUGMENT_PADDING, unflipped and flipped horizontally."""
    p = AUGMENT_PADDING
    padded = torch.nn.functional.pad(image, (p, p, p, p))
    windows = [padded[:, y : y + 32, x : x + 32] for y in range(2 * p + 1) for x in range(2 * p + 1)]
    return windows + [w.flip(-1) for w in windows]


def test_random_crop_flip_outputs_shifted_or_flipped_windows() -> None:
    # Every pixel value is distinct and nonzero, so a window matches in exactly one place.
    images = (torch.arange(16 * 3 * 32 * 32) + 1).reshape(16, 3, 32, 32)
    out = random_crop_flip(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    matches = []
    for image, crop in zip(images, out):
        found = [k for k, window in enumerate(crop_windows(image)) if torch.equal(window, crop)]
        assert len(found) == 1
        matches.append(found[0])
    identity = (2 * AUGMENT_PADDING + 1) ** 2 // 2  # the centred, unflipped window
    assert len(set(matches)) > 1 and any(k != identity for k in matches)
    assert any(k >= (2 * AUGMENT_PADDING + 1) ** 2 for k in matches)  # some flipped


def test_random_crop_flip_is_seeded_and_keeps_uint8() -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    first = random_crop_flip(images, generator=torch.Generator().manual_seed(1))
    again = random_crop_flip(images, generator=torch.Generator().manual_seed(1))
    assert first.dtype == torch.uint8 and torch.equal(first, again)
    assert not torch.equal(first, images)


def test_preprocess_augments_only_training_batches(cifar_dir: Path) -> None:
    """Batches stay uint8 images: augmentation changes training batches only, standardization is the model's."""
    images = make_datamodule(cifar_dir, normalize="channel").train_images[:32]
    augmenting = make_datamodule(cifar_dir, normalize="channel", augment=True)
    for _ in range(3):
        assert torch.equal(augmenting.preprocess(images, train=False), images)
    augmented = augmenting.preprocess(images, train=True)
    assert augmented.dtype == torch.uint8 and not torch.equal(augmented, images)
    assert torch.equal(make_datamodule(cifar_dir, normalize="channel").preprocess(images, train=True), images)


def test_batches_without_trainer_are_not_augmented(cifar_dir: Path) -> None:
    """`on_after_batch_transfer` outside a training loop (no trainer) is evaluation: no augmentation."""
    dm = make_datamodule(cifar_dir, augment=True)
    images, labels = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(x, images) and torch.equal(y, labels)


class Inverting(CIFAR10DataModule):
    """A subclass with its own batch transform, as the class docstring documents."""

    def preprocess(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        return 255 - images if train else images


def test_a_subclass_preprocess_is_the_batch_transform(cifar_dir: Path) -> None:
    dm = Inverting(str(cifar_dir), val_size=VAL_SIZE, download=False)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    dm.trainer = type("Fitting", (), {"training": True})()  # what on_after_batch_transfer reads of a Trainer
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(x, 255 - images)


# -------------------------------------------------------------------------------------------------- predict
def test_predict_batches_are_the_test_images_with_their_index(cifar_dir: Path) -> None:
    dm = make_datamodule(cifar_dir, batch_size=64)
    batches = list(dm.predict_dataloader())
    assert torch.equal(torch.cat([images for images, _ in batches]), dm.test_images)
    assert torch.cat([index for _, index in batches]).tolist() == list(range(N_TEST))


def test_predict_on_images_you_hand_it(cifar_dir: Path) -> None:
    dm = make_datamodule(cifar_dir, batch_size=4)
    images = dm.val_images[:10]
    dm.set_predict_images(images)
    batches = list(dm.predict_dataloader())
    assert len(batches) == 3 and torch.equal(torch.cat([b[0] for b in batches]), images)
    dm.set_predict_images(None)
    assert sum(len(b[0]) for b in dm.predict_dataloader()) == N_TEST


@pytest.mark.parametrize("images", [torch.zeros(2, 3, 32, 32), torch.zeros(2, 32, 32, 3, dtype=torch.uint8), [1]])
def test_predict_images_must_be_uint8_cifar_images(images) -> None:
    with pytest.raises(ValueError, match="uint8"):
        CIFAR10DataModule("unused").set_predict_images(images)


# --------------------------------------------------------------------------------------------------- state
def test_load_state_dict_restores_the_split(indexed_dir: Path) -> None:
    """A checkpoint's split wins over this module's arguments; data already loaded is split again."""
    trained = make_datamodule(indexed_dir, split_seed=3, val_size=50, limit_train=200)
    other = make_datamodule(indexed_dir, split_seed=4)
    other.load_state_dict(trained.state_dict())
    assert (other.split_seed, other.val_size, other.limit_train) == (3, 50, 200)
    assert image_ids(other.train_images) == image_ids(trained.train_images)
    assert image_ids(other.val_images) == image_ids(trained.val_images)
    assert torch.equal(other.mean, trained.mean)


def test_load_state_dict_refuses_another_normalization(cifar_dir: Path) -> None:
    state = make_datamodule(cifar_dir, normalize="channel").state_dict()
    with pytest.raises(ValueError, match="normalize='channel'"):
        make_datamodule(cifar_dir, normalize="pixel").load_state_dict(state)


def test_samplers_are_distributed_samplers_lightning_leaves_alone(cifar_dir: Path) -> None:
    """Lightning wraps a DataLoader's sampler in a DistributedSampler under DDP unless it already is one; ours
    shards by itself, so wrapping it would shard twice."""
    dm = make_datamodule(cifar_dir, num_workers=1)
    for loader in (dm.train_dataloader(), dm.test_dataloader(), make_datamodule(cifar_dir).val_dataloader()):
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)


def test_fit_leaves_the_test_split_on_disk_until_it_is_used(cifar_dir: Path, monkeypatch) -> None:
    """setup("fit") and setup("validate") read the training file only; the test split is read once, when
    test_images/test_labels or the test and predict loaders first need it, and equals what setup() reads at once."""
    import lit_cifar.data as data

    reads = []
    original = data.read_split
    monkeypatch.setattr(
        data, "read_split", lambda layout, train, **kw: reads.append(train) or original(layout, train, **kw)
    )
    dm = CIFAR10DataModule(str(cifar_dir), val_size=VAL_SIZE, batch_size=64, download=False)
    assert dm.test_images is None and dm.test_labels is None and reads == []  # not set up: nothing to read
    dm.setup("fit")
    dm.setup("validate")
    assert reads == [True]
    tested = torch.cat([labels for _, labels in dm.test_dataloader()])
    assert reads == [True, False] and len(dm.test_images) == len(tested)
    everything = make_datamodule(cifar_dir)
    assert torch.equal(dm.test_images, everything.test_images) and torch.equal(tested, everything.test_labels)
    predicting = CIFAR10DataModule(str(cifar_dir), val_size=VAL_SIZE, batch_size=64, download=False)
    predicting.setup("fit")
    assert len(torch.cat([index for _, index in predicting.predict_dataloader()])) == len(everything.test_labels)


# ------------------------------------------------------------------------------------------ pickles run no code
class OpensAFile:
    """What a crafted dataset pickle holds: unpickling it calls ``open(path, "w")``, creating `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("protocol", [2, 5])
def test_dataset_pickles_of_numeric_arrays_read_under_any_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "batch"
    content = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2], "batch_label": "x", "n": 2.5}
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    loaded = load_data_pickle(path)
    np.testing.assert_array_equal(loaded["data"], content["data"])
    assert loaded["labels"] == [1, 2] and loaded["batch_label"] == "x" and loaded["n"] == 2.5


def test_a_crafted_pickle_in_the_data_folder_runs_no_code(tmp_path: Path, cifar_py_dir: Path) -> None:
    shutil.copytree(cifar_py_dir / PY_LAYOUT, tmp_path / PY_LAYOUT)
    marker = tmp_path / "ran"
    crafted = pickle.dumps({"data": OpensAFile(marker), "labels": [0]})
    (tmp_path / PY_LAYOUT / "data_batch_1").write_bytes(crafted)
    with pytest.raises(DatasetError, match=r"data_batch_1: UnpicklingError: refusing io.open"):
        CIFAR10DataModule(str(tmp_path), download=False).verify()  # the check before a sweep
    with pytest.raises(DatasetError, match="refusing io.open"):
        make_datamodule(tmp_path)
    assert not marker.exists()
    pickle.loads(crafted)  # what an unrestricted reader would have done
    assert marker.exists()


def test_a_dataset_pickle_with_an_object_array_is_refused(tmp_path: Path, cifar_py_dir: Path) -> None:
    shutil.copytree(cifar_py_dir / PY_LAYOUT, tmp_path / PY_LAYOUT)
    objects = np.array([[0] * 3072], dtype=object)
    (tmp_path / PY_LAYOUT / "test_batch").write_bytes(pickle.dumps({"data": objects, "labels": [0]}))
    with pytest.raises(DatasetError, match="test_batch: UnpicklingError: refusing an array of object dtype"):
        CIFAR10DataModule(str(tmp_path), download=False).verify()


@pytest.mark.parametrize(("normalize", "shape"), [("pixel", (1, 28, 28)), ("channel", (5, 1, 1)), ("none", (5, 1, 1))])
def test_statistics_are_shaped_by_the_images(normalize: str, shape: tuple) -> None:
    channels = shape[0] if normalize != "pixel" else 1
    images = torch.randint(0, 256, (40, channels, 28, 28), dtype=torch.uint8)
    mean, std = fit_normalization(images, normalize)
    assert mean.shape == std.shape == shape
    if normalize != "none":
        expected_mean, expected_std = numpy_statistics(images, normalize)
        np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-5)
        np.testing.assert_allclose(std.numpy(), expected_std, rtol=1e-5)


# ------------------------------------------------------------------------- tensors on the device vs workers
FAST_PATH_SPEC = "pixel+bn+dropout=0.25+maxnorm=3+augment"  # every source of randomness and every hook


def fit_metrics(data_dir: Path, num_workers: int) -> dict[str, float]:
    pl.seed_everything(3, verbose=False)
    dm = CIFAR10DataModule.from_spec(
        FAST_PATH_SPEC,
        data_dir=str(data_dir),
        val_size=100,
        batch_size=64,
        limit_train=256,
        num_workers=num_workers,
        seed=3,
    )
    trainer = quiet_trainer(max_epochs=2)
    model = RegularizedClassifier(FAST_PATH_SPEC)
    trainer.fit(model, dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    tested = trainer.test(model, dm, verbose=False)[0]
    return {**metrics, **tested, "weight_sum": float(model.backbone.hidden.weight.detach().sum())}


@pytest.mark.slow
def test_fast_path_trains_exactly_like_the_plain_dataloader_path(cifar_dir):
    fast, plain = fit_metrics(cifar_dir, num_workers=0), fit_metrics(cifar_dir, num_workers=1)
    assert set(fast) >= {"train/loss", "val/acc", "test/acc", "weight_sum"}
    assert fast == plain
