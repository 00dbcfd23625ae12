"""MagNet's reformer (Meng and Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples",
CCS 2017) as a purifier: an auto-encoder trained on clean images with Gaussian noise, whose
reconstruction replaces the input.

The MNIST auto-encoder of the MagNet paper (its "Detector I / Reformer" structure): 3x3
convolutions with 3 channels and sigmoid activations, ``Conv - AvgPool 2 - Conv`` down and
``Conv - Upsample 2 - Conv - Conv(1)`` up, 'same' padding, trained with the mean squared error
to the clean image from inputs with Gaussian noise of standard deviation 0.1 (the paper's
noise volume), Adam and an L2 weight penalty of 1e-9. MagNet's detectors are not used: the
PuVAE paper compares reformers (purifiers) only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..classifiers import train_adam_cosine
from ..serialization import PretrainedMixin
from .base import ImagePurifier

__all__ = ["MagNetConfig", "MagNetReformer", "fit_magnet"]


@dataclass(frozen=True)
class MagNetConfig:
    """Shape of the auto-encoder.

    Attributes:
        image_shape: ``(channels, height, width)``; height and width must be even.
        channels: filters of every hidden convolution (MagNet's MNIST structure: 3).
        kernel: convolution size (3).
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    channels: int = 3
    kernel: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        c, h, w = self.image_shape
        if min(c, h, w) < 1 or h % 2 or w % 2:
            raise ValueError(f"image_shape must be (channels, even height, even width), got {self.image_shape}")
        if self.channels < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"channels must be >= 1 and kernel odd, got {self.channels} and {self.kernel}")


class MagNetReformer(PretrainedMixin, ImagePurifier):
    """MagNet's auto-encoder reformer; ``purify(x)`` is the reconstruction of ``x``.

    Example:
        >>> reformer = MagNetReformer()
        >>> reformer.purify(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    model_type = "magnet"

    def __init__(self, config: MagNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MagNetConfig()
        self.image_shape = config.image_shape
        c, k, pad = config.channels, config.kernel, config.kernel // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(config.image_shape[0], c, k, padding=pad), nn.Sigmoid(),
            nn.AvgPool2d(2),
            nn.Conv2d(c, c, k, padding=pad), nn.Sigmoid(),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(c, c, k, padding=pad), nn.Sigmoid(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(c, c, k, padding=pad), nn.Sigmoid(),
            nn.Conv2d(c, config.image_shape[0], k, padding=pad), nn.Sigmoid(),
        )

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The auto-encoder's output (no input checks; used in training)."""
        return self.decoder(self.encoder(images))

    def _purify(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.reconstruct(images.to(self.encoder[0].weight.dtype))

    def _config_dict(self) -> dict[str, Any]:
        return {**asdict(self.config), "image_shape": list(self.config.image_shape)}

    @classmethod
    def _from_config_dict(cls, raw: dict[str, Any]) -> MagNetReformer:
        return cls(MagNetConfig(**{**raw, "image_shape": tuple(raw["image_shape"])}))


def fit_magnet(
    dataset: Dataset[Any],
    *,
    config: MagNetConfig | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    noise: float = 0.1,
    weight_decay: float = 1e-9,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> MagNetReformer:
    """Train MagNet's reformer on clean images (labels are ignored).

    Args:
        dataset: map-style data set of ``(image (C, H, W) in [0, 1], label)``.
        config: auto-encoder shape; default MagNet's MNIST structure for the images' shape.
        epochs, batch_size, lr: Adam settings (MagNet: 100 epochs).
        noise: standard deviation of the Gaussian noise added to the inputs (MagNet: 0.1);
            the target is the clean image.
        weight_decay: L2 penalty on the weights (MagNet: 1e-9).
        seed: seeds initialisation, shuffling and noise.
        device: where to train (default CPU).
        progress: show a tqdm bar.

    Returns:
        The trained reformer in eval mode.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not noise >= 0 or not lr > 0:
        raise ValueError(f"noise must be >= 0 and lr > 0, got {noise} and {lr}")
    image, _ = dataset[0]
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(f"dataset items must be (image tensor (C, H, W), label), got {type(image).__name__}")
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    model = MagNetReformer(config or MagNetConfig(tuple(image.shape))).to(device)  # type: ignore[arg-type]

    def denoising_loss(net: nn.Module, clean: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        noisy = (clean + noise * torch.randn_like(clean)).clamp(0, 1)
        return F.mse_loss(net.reconstruct(noisy), clean)  # type: ignore[operator]

    train_adam_cosine(model, dataset, denoising_loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      device=device, progress=progress, desc="MagNet", weight_decay=weight_decay)
    return model
