"""The training data: CIFAR-10 (the default), scikit-learn's handwritten digits, or a stand-in.

- ``cifar10``: training images get a random 32x32 crop of the image padded by 4 pixels, a
  random horizontal flip and per-channel normalisation; test images only the normalisation.
- ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 grey images of the digits 0-9, shipped
  inside scikit-learn: no download), upsampled to 3x32x32 and split once, the same way every
  time, into 1,437 training and 360 test images (NOTE [ The digits set ]).
- ``synthetic=True`` swaps in torchvision's ``FakeData`` (random 3x32x32 images, 10 classes,
  random labels): the whole training path runs offline, but the accuracy it reaches means nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..validation import UsageError, check_choice
from .metrics import CIFAR10_CLASSES

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DATASETS",
    "DIGITS_TEST_SIZE",
    "DataBundle",
    "DigitsDataset",
    "build_transforms",
    "check_data_dir",
    "check_dataset",
    "load_datasets",
    "load_digits",
]

#: The datasets :func:`load_datasets` knows; the first is the default.
DATASETS: tuple[str, ...] = ("cifar10", "digits")
#: Test images of the fixed digits split (the other 1,437 train).
DIGITS_TEST_SIZE = 360
#: How to install what ``digits`` needs.
_SKLEARN_HINT = "pip install scikit-learn (or, in a memprof checkout, pip install -e \".[data]\")"

#: Per-channel mean and standard deviation of the CIFAR-10 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: Where CIFAR-10 can be fetched by hand.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_FOLDER = "cifar-10-batches-py"
_ARCHIVE = "cifar-10-python.tar.gz"


@dataclass(frozen=True)
class DataBundle:
    """The train and test datasets and the class names."""

    train: Dataset
    test: Dataset
    classes: tuple[str, ...]
    synthetic: bool


def build_transforms(train: bool):
    """The CIFAR-10 transform: crop(32, padding=4) + flip + normalise for training, normalise for test."""
    from torchvision import transforms as T

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def _where_to_put(root: Path) -> str:
    return (
        f"put {_ARCHIVE} (from {CIFAR10_URL}) in {root} and pass --download, or its extracted "
        f"folder {_FOLDER}/ at {root / _FOLDER}; or use --synthetic to run without data"
    )


def check_data_dir(data_dir: str | os.PathLike[str], download: bool) -> Path:
    """Check, before any work, that CIFAR-10 is present or may be downloaded.

    Args:
        data_dir: the dataset root (holding ``cifar-10-batches-py/``).
        download: whether a download may be attempted.

    Returns:
        The absolute root.

    Raises:
        UsageError: when the data is absent and download is off, saying where to put the files;
            or when ``data_dir`` exists but is not a directory.
    """
    root = Path(data_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--data {root} is not a directory")
    if not download and not (root / _FOLDER).is_dir():
        raise UsageError(f"CIFAR-10 not found under {root} and download is off: {_where_to_put(root)}")
    return root


def check_dataset(
    dataset: str, data_dir: str | os.PathLike[str] = "./data", download: bool = True, synthetic: bool = False
) -> str:
    """Check, before any work, that ``dataset`` is known and can be loaded here.

    Args:
        dataset: a name from :data:`DATASETS`.
        data_dir, download: CIFAR-10's root and whether it may be downloaded (see
            :func:`check_data_dir`); unused for ``digits``.
        synthetic: the FakeData stand-in replaces the data: nothing else is checked.

    Returns:
        The dataset name.

    Raises:
        UsageError: for an unknown name (listing the known ones), absent CIFAR-10 files, or
            ``digits`` without scikit-learn (naming the ``pip install`` that fixes it).
    """
    check_choice("dataset", dataset, DATASETS)
    if synthetic:
        return dataset
    if dataset == "cifar10":
        check_data_dir(data_dir, download)
    else:
        _import_load_digits()
    return dataset


def _import_load_digits():
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise UsageError(f"dataset 'digits' needs scikit-learn, which is not installed: {_SKLEARN_HINT}") from None
    return sk_load_digits


# NOTE [ The digits set ]
# scikit-learn's load_digits holds 1,797 8x8 images with 17 grey levels (0-16). Each image is
# scaled to [0, 1], upsampled to 32x32 (bilinear: every model here expects CIFAR's 32x32), copied
# to 3 channels and normalised with the mean and standard deviation of the training images.
# The split is stratified and fixed (a permutation drawn from its own generator seeded 0, the
# last 36 of each class's images going to the test set, 360 in all), so every run, model and
# seed sees the same test images. Augmentation shifts each training image by up to 4 pixels
# (one pixel of the 8x8 original) in each direction, filling with the background: digits are
# not mirror-symmetric, so no flips, and small shifts are what varies between handwritten
# samples of this set (they are centred and size-normalised already).


class DigitsDataset(Dataset):
    """Preprocessed digit images (N, 3, 32, 32), labels, and an optional random shift.

    Args:
        images: normalised images, (N, 3, 32, 32) float32.
        labels: (N,) int64.
        max_shift: largest shift in pixels, each direction (0: no augmentation).
        fill: the value of the background after normalisation (what shifted-in pixels get).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, max_shift: int = 0, fill: float = 0.0) -> None:
        self.images = images
        self.labels = labels
        self.max_shift = int(max_shift)
        self.fill = float(fill)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        s = self.max_shift
        if s:
            # Global RNG: seeded by the training loop and saved in its checkpoints.
            dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,)))
            padded = torch.nn.functional.pad(x, (s, s, s, s), value=self.fill)  # (3, 32+2s, 32+2s)
            h, w = x.shape[-2:]
            x = padded[:, s + dy: s + dy + h, s + dx: s + dx + w]
        return x, int(self.labels[i])


def load_digits(max_shift: int = 4, size: int = 32) -> DataBundle:
    """scikit-learn's digits at ``size`` x ``size``, 3 channels, fixed split (NOTE [ The digits set ]).

    Args:
        max_shift: the training images' largest random shift in pixels (0: no augmentation).
        size: the side of the upsampled images.

    Returns:
        A :class:`DataBundle` with 1,437 training and 360 test images and classes "0".."9".

    Raises:
        UsageError: when scikit-learn is not installed (naming the ``pip install``).
    """
    raw = _import_load_digits()()
    x = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.as_tensor(raw.target, dtype=torch.int64)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    classes = sorted(int(c) for c in y.unique())
    per_class = DIGITS_TEST_SIZE // len(classes)
    test_idx = torch.cat([order[y[order] == c][-per_class:] for c in classes]).sort().values
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[test_idx] = True
    train_idx = torch.nonzero(~is_test).flatten()
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()  # (N, 3, size, size)
    fill = float(-mean / std)  # the normalised background (raw value 0)
    train = DigitsDataset(x[train_idx], y[train_idx], max_shift, fill)
    test = DigitsDataset(x[test_idx], y[test_idx], 0, fill)
    return DataBundle(train, test, tuple(str(c) for c in classes), synthetic=False)


def load_datasets(
    data_dir: str | os.PathLike[str] = "./data",
    *,
    dataset: str = "cifar10",
    synthetic: bool = False,
    download: bool = True,
    synthetic_size: int = 512,
) -> DataBundle:
    """Load ``dataset`` (train and test, with its augmentation), or a FakeData stand-in.

    Args:
        data_dir: CIFAR-10's root (``cifar-10-batches-py/`` lives there); unused for digits.
        dataset: ``cifar10`` (default) or ``digits`` (:func:`load_digits`).
        synthetic: use ``torchvision.datasets.FakeData`` instead (no files needed).
        download: let torchvision download CIFAR-10 when it is absent.
        synthetic_size: training images of the stand-in; the test set has a quarter of that
            (at least 10).

    Returns:
        A :class:`DataBundle`.

    Raises:
        UsageError: for an unknown dataset; when the data is absent and cannot be downloaded (no
            internet, download off), with the place where the files must go; for digits without
            scikit-learn.
    """
    check_choice("dataset", dataset, DATASETS)
    if synthetic:
        from torchvision.datasets import FakeData

        test_size = max(10, synthetic_size // 4)
        # Different random_offset: the test images are not the training images.
        train = FakeData(synthetic_size, (3, 32, 32), 10, transform=build_transforms(True), random_offset=0)
        test = FakeData(test_size, (3, 32, 32), 10, transform=build_transforms(False), random_offset=synthetic_size)
        return DataBundle(train, test, CIFAR10_CLASSES, synthetic=True)

    if dataset == "digits":
        return load_digits()

    from torchvision.datasets import CIFAR10

    root = check_data_dir(data_dir, download)
    try:
        train = CIFAR10(str(root), train=True, transform=build_transforms(True), download=download)
        test = CIFAR10(str(root), train=False, transform=build_transforms(False), download=False)
    except (OSError, RuntimeError) as exc:
        # URLError/socket errors when offline, RuntimeError for missing or corrupted files.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = "could not download CIFAR-10" if download else "CIFAR-10 not found"
        raise UsageError(f"{what} into {root} ({reason}): {_where_to_put(root)}") from exc
    return DataBundle(train, test, tuple(train.classes), synthetic=False)
