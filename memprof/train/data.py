"""CIFAR-10 (or an offline stand-in of the same shape) with the usual augmentation.

Training images get a random 32x32 crop of the image padded by 4 pixels, a random horizontal
flip and per-channel normalisation; test images only the normalisation. ``synthetic=True``
swaps in torchvision's ``FakeData`` (random 3x32x32 images, 10 classes, random labels): the whole
training path runs offline, but the accuracy it reaches means nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import UsageError
from .metrics import CIFAR10_CLASSES

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DataBundle",
    "build_transforms",
    "check_data_dir",
    "load_datasets",
]

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


def build_transforms(train: bool):  # noqa: ANN201 - torchvision Compose
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


def load_datasets(
    data_dir: str | os.PathLike[str] = "./data",
    *,
    synthetic: bool = False,
    download: bool = True,
    synthetic_size: int = 512,
) -> DataBundle:
    """Load CIFAR-10 train/test with the standard augmentation, or a FakeData stand-in.

    Args:
        data_dir: the dataset root (``cifar-10-batches-py/`` lives there).
        synthetic: use ``torchvision.datasets.FakeData`` instead (no files needed).
        download: let torchvision download CIFAR-10 when it is absent.
        synthetic_size: training images of the stand-in; the test set has a quarter of that
            (at least 10).

    Returns:
        A :class:`DataBundle`.

    Raises:
        UsageError: when the data is absent and cannot be downloaded (no internet, download
            off), with the place where the files must go.
    """
    if synthetic:
        from torchvision.datasets import FakeData

        test_size = max(10, synthetic_size // 4)
        # Different random_offset: the test images are not the training images.
        train = FakeData(synthetic_size, (3, 32, 32), 10, transform=build_transforms(True), random_offset=0)
        test = FakeData(test_size, (3, 32, 32), 10, transform=build_transforms(False), random_offset=synthetic_size)
        return DataBundle(train, test, CIFAR10_CLASSES, synthetic=True)

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
