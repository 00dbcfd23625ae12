"""What every purifier of the baselines shares: images in, purified images out.

A purifier here is an ``nn.Module`` with ``image_shape`` and ``purify(images, generator=None)``
that returns images of the same shape in [0, 1]. :class:`~puvae_defense.PurifiedClassifier`
takes one exactly as it takes a PuVAE, so the evaluation harness and users treat them alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from .._checks import check_images

__all__ = ["ImagePurifier"]


class ImagePurifier(nn.Module, ABC):
    """Base class of the baseline purifiers (MagNet's reformer, Defense-GAN).

    Subclasses implement :meth:`_purify`; :meth:`purify` checks the input first (shape,
    dtype, values in [0, 1], device) with the same errors as :class:`~puvae_defense.PuVAE`.
    """

    #: ``(channels, height, width)`` of the images the purifier takes.
    image_shape: tuple[int, int, int]

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Purified ``(B, C, H, W)`` images in [0, 1] for ``images`` of the same shape in [0, 1]."""
        images = check_images(images, self.image_shape)
        parameter = next(self.parameters(), None)
        if parameter is not None and images.device != parameter.device:
            raise ValueError(f"images are on {images.device} but the purifier is on {parameter.device}; "
                             "move one of them with .to(...)")
        return self._purify(images, generator)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`purify`."""
        return self.purify(images)

    @abstractmethod
    def _purify(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The purification of checked images."""
