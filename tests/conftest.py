"""Shared fixtures: tiny models, and the environment that keeps tests offline and CPU-first."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

# Before anything imports triton or huggingface_hub (both read these at import time).
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.pop("HF_TOKEN", None)
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

from puvae_defense import PuVAE, PuVAEConfig

TINY_MNIST = PuVAEConfig(
    image_shape=(1, 28, 28),
    num_classes=10,
    conv_channels=4,
    encoder_hidden=(32, 32),
    latent_dim=8,
    decoder_hidden=64,
    deconv_channels=4,
)
TINY_CIFAR = PuVAEConfig(
    image_shape=(3, 32, 32),
    num_classes=10,
    conv_channels=4,
    encoder_hidden=(32,),
    latent_dim=8,
    decoder_hidden=64,
    deconv_channels=4,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _bundled_copy_warning_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library says once per process that it uses bundled copies; each test sees it as a fresh process would."""
    from puvae_defense import hub

    monkeypatch.setattr(hub, "_warned_bundled", False)


@pytest.fixture
def bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run bf16 code as on a CPU with bf16 units, so it does not warn on CPUs that emulate it."""
    monkeypatch.setattr("puvae_defense._checks.cpu_has_bf16", lambda: True)


@pytest.fixture
def tiny_vae() -> PuVAE:
    torch.manual_seed(0)
    return PuVAE(TINY_MNIST).eval()


@pytest.fixture
def tiny_cifar_vae() -> PuVAE:
    torch.manual_seed(0)
    return PuVAE(TINY_CIFAR).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` or ``experiments/<name>.py`` (not packages) as a fresh module."""
    root = Path(__file__).parent.parent
    path = next(p for p in (root / "scripts" / f"{name}.py", root / "experiments" / f"{name}.py") if p.is_file())
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_dataset(n: int = 96, shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10, seed: int = 0):
    """Labelled images in [0, 1]: a fixed random template per class plus noise."""
    from puvae_defense.data import ImageDataset

    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, *shape, generator=gen).round()
    labels = torch.arange(n) % classes
    images = (0.8 * templates[labels] + 0.2 * torch.rand(n, *shape, generator=gen)).clamp(0, 1)
    return ImageDataset(images, labels, tuple(str(c) for c in range(classes)))


def tiny_source(shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(shape).prod()), 16),
                               torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, classes))


@pytest.fixture(scope="session")
def mnist_root():
    """The MNIST files laid out by `puvae-defense data fetch mnist` (the set-up script runs it)."""
    from puvae_defense.data import DatasetNotFoundError, default_data_root, load_dataset

    root = default_data_root()
    try:
        load_dataset("mnist", "test", root=root)
    except DatasetNotFoundError as err:
        pytest.fail(f"MNIST is not fetched ({err}); run ./scripts/setup.sh")
    return root
