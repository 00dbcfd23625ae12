"""The paper's target classifiers A-D, the source classifier M_s, and a trainer for them.

A-D come from the paper's supplement (the Defense-GAN family): ReLU after every
convolution and hidden FC layer, 'valid' padding (the supplement gives none; we choose
valid). A and B are for 28x28x1 images, C and D for 32x32x3, but every architecture is
built for any image shape.

``"source"`` is the source classifier ``M_s`` whose cross-entropy trains the PuVAE
(eq. 11-12). The paper only says it has "a fixed architecture"; ours is deliberately
unlike A and B (max pooling instead of strided convolutions, no dropout):
Conv(32, 5x5) - MaxPool(2) - Conv(64, 5x5) - MaxPool(2) - FC(256) -
FC(classes), so that defending A and B is a transfer, as in the paper.

``"cw"`` is the MNIST network of Carlini & Wagner (2017, arXiv:1608.04644): two 3x3
convolutions of 32 maps, max pooling, two of 64, max pooling, FC(200) - FC(200). We use it
as the **held-out selection classifier**: recipes are chosen on the validation split with
its accuracy, never with A, B (what we report) or the source (what the PuVAE trains against).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._checks import check_sigma
from .serialization import PretrainedMixin

__all__ = ["ARCHITECTURES", "ClassifierConfig", "PaperClassifier", "accuracy", "fit_classifier", "gaussian_noise_objective",
           "train_adam_cosine"]

Arch = Literal["A", "B", "C", "D", "source", "cw"]
ARCHITECTURES: tuple[str, ...] = ("A", "B", "C", "D", "source", "cw")

# (out_channels, kernel, stride, max-pool after) of each convolution; dropout (after the trunk,
# after the first FC layer); FC widths
_SPECS: dict[str, dict[str, Any]] = {
    "A": {"convs": [(64, 5, 1, False), (64, 5, 2, False)], "fcs": [128], "dropout": (0.25, 0.5)},
    "B": {"convs": [(128, 3, 1, False), (64, 3, 2, False)], "fcs": [128], "dropout": (0.25, 0.5)},
    "C": {"convs": [(64, 5, 1, False), (128, 5, 1, False), (256, 5, 2, False)], "fcs": [512, 256], "dropout": (0.25, 0.5)},
    "D": {"convs": [(128, 3, 1, False), (256, 3, 1, False), (512, 3, 2, False)], "fcs": [512], "dropout": (0.25, 0.5)},
    "source": {"convs": [(32, 5, 1, True), (64, 5, 1, True)], "fcs": [256], "dropout": (0.0, 0.0)},
    "cw": {"convs": [(32, 3, 1, False), (32, 3, 1, True), (64, 3, 1, False), (64, 3, 1, True)], "fcs": [200, 200],
           "dropout": (0.0, 0.0)},
}


def _smallest_side(arch: str) -> int:
    """The smallest square image side that classifier ``arch`` accepts (its convolutions are 'valid')."""
    side = 1
    while True:
        size = side
        for _, kernel, stride, pool in _SPECS[arch]["convs"]:
            size = (size - kernel) // stride + 1 if size >= kernel else 0
            size = size // 2 if pool else size
        if size > 0:
            return side
        side += 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Which classifier, for which images.

    Attributes:
        arch: ``"A"``, ``"B"``, ``"C"``, ``"D"``, ``"source"`` or ``"cw"``.
        image_shape: ``(channels, height, width)``.
        num_classes: number of output logits.
    """

    arch: Arch = "A"
    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown classifier architecture {self.arch!r}; choose one of {ARCHITECTURES}")
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if len(self.image_shape) != 3 or min(self.image_shape) <= 0:
            raise ValueError(f"image_shape must be (channels, height, width), got {self.image_shape!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")


class PaperClassifier(PretrainedMixin, nn.Sequential):
    """One of the paper's classifiers as an ``nn.Sequential``; returns logits.

    Args:
        config: architecture, image shape and class count.

    Example:
        >>> net = PaperClassifier(ClassifierConfig("A"))
        >>> net(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        config = config or ClassifierConfig()
        spec = _SPECS[config.arch]
        channels, height, width = config.image_shape
        layers: list[nn.Module] = []
        for out_channels, kernel, stride, pool in spec["convs"]:
            layers += [nn.Conv2d(channels, out_channels, kernel, stride=stride), nn.ReLU()]
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            if pool:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out_channels
        if height <= 0 or width <= 0:
            raise ValueError(f"images of shape {config.image_shape} are too small for classifier {config.arch}: it needs "
                             f"at least {_smallest_side(config.arch)}x{_smallest_side(config.arch)} pixels (resize the "
                             "images, or choose an architecture for small images)")
        trunk_dropout, fc_dropout = spec["dropout"]
        layers.append(nn.Flatten())
        if trunk_dropout:
            layers.append(nn.Dropout(trunk_dropout))
        features = channels * height * width
        for i, width_fc in enumerate(spec["fcs"]):
            layers += [nn.Linear(features, width_fc), nn.ReLU()]
            if i == 0 and fc_dropout:
                layers.append(nn.Dropout(fc_dropout))
            features = width_fc
        layers.append(nn.Linear(features, config.num_classes))
        super().__init__(*layers)
        self.config = config

    model_type = "classifier"

    def _config_dict(self) -> dict[str, Any]:
        return {**asdict(self.config), "image_shape": list(self.config.image_shape)}

    @classmethod
    def _from_config_dict(cls, raw: dict[str, Any]) -> PaperClassifier:
        return cls(ClassifierConfig(**{**raw, "image_shape": tuple(raw["image_shape"])}))


@torch.no_grad()
def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy in percent of ``model`` (logits) on a labelled data set."""
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        logits = model(images.to(device) if device is not None else images)
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += len(labels)
    return 100.0 * correct / max(total, 1)


def gaussian_noise_objective(sigma: float) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on ``clip(x + sigma * N(0, I), 0, 1)``: Cohen et al.'s (2019) training of a base
    classifier for randomized smoothing at ``sigma`` (every image noisy, a fresh draw each step),
    clipped as :class:`~puvae_defense.smoothing.SmoothedClassifier` clips by default."""
    check_sigma(sigma)

    def objective(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noisy = (images + sigma * torch.randn_like(images)).clamp(0, 1)
        return F.cross_entropy(net(noisy), labels)

    return objective


def fit_classifier(
    dataset: Dataset[tuple[torch.Tensor, int]],
    arch: Arch = "A",
    *,
    num_classes: int | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    objective: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> PaperClassifier:
    """Train one of the paper's classifiers with Adam and a cosine learning-rate schedule.

    Args:
        dataset: map-style data set of ``(image (C, H, W) in [0, 1], int label)``.
        arch: ``"A"``-``"D"``, ``"source"`` or ``"cw"``.
        num_classes: default: the data set's ``classes`` attribute, else max label + 1.
        epochs, batch_size, lr: optimisation settings.
        device: where to train (default CPU).
        seed: seeds initialisation and shuffling.
        progress: show a tqdm progress bar.
        objective: ``(model, images, labels) -> loss`` to minimise instead of the
            cross-entropy (e.g. :func:`puvae_defense.baselines.adversarial_training.fgsm_objective`).

    Returns:
        The trained classifier in eval mode.
    """
    image, _ = dataset[0]
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(f"dataset items must be (image tensor (C, H, W), label), got {type(image).__name__}")
    if num_classes is None:
        classes = getattr(dataset, "classes", None)
        num_classes = len(classes) if classes else 1 + max(int(dataset[i][1]) for i in range(len(dataset)))
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    model = PaperClassifier(ClassifierConfig(arch, tuple(image.shape), num_classes)).to(device)
    loss = objective or (lambda net, images, labels: F.cross_entropy(net(images), labels))
    train_adam_cosine(model, dataset, loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      device=device, progress=progress, desc=arch)
    return model


def train_adam_cosine(
    model: nn.Module,
    dataset: Dataset[Any],
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: bool,
    desc: str,
    weight_decay: float = 0.0,
) -> nn.Module:
    """The training loop shared by the classifiers and the baselines' networks.

    Adam with a cosine learning-rate schedule to 0 over all steps; batches shuffled by a
    generator seeded with ``seed``; ``loss(model, images, labels)`` minimised. Returns
    ``model`` in eval mode.
    """
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=False)
    total_steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    model.train()
    for epoch in range(epochs):
        bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for images, labels in bar:
            value = loss(model, images.to(device), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{value.item():.4f}")
    return model.eval()
