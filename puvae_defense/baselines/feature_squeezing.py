"""Bit-depth squeezing (Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in
Deep Neural Networks", NDSS 2018) as an input transform in front of a purifier.

Quantising an image to ``2**bits`` levels removes every perturbation that does not move a pixel
across a level boundary. On near-binary images (MNIST) with 1 bit, a pixel at 0 or 1 cannot
cross the 0.5 threshold under an L-inf budget below 0.5, so only edge pixels can still be
changed. It is another published defense: results with it are reported in their own rows
("PuVAE + bit squeezing"), never as PuVAE's, and it does not suit images that are not
near-binary (Fashion-MNIST, CIFAR-10).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BitDepthSqueeze"]


class BitDepthSqueeze(nn.Module):
    """Round images in [0, 1] to ``2**bits`` evenly spaced levels.

    The backward pass is the identity (a straight-through estimator), so that gradient
    attacks on a model behind it see through the rounding (the BPDA of this step) instead of
    a zero gradient that would only hide the model from them. ``straight_through=False``
    gives the exact, zero, gradient of rounding.

    Args:
        bits: bits per pixel kept, 1 to 8 (1: threshold at 0.5).
        straight_through: identity gradient (default) or the true zero gradient.

    Example:
        >>> BitDepthSqueeze(1)(torch.tensor([0.2, 0.49, 0.51, 0.9]))
        tensor([0., 0., 1., 1.])
    """

    def __init__(self, bits: int = 1, *, straight_through: bool = True) -> None:
        super().__init__()
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer from 1 to 8, got {bits!r}")
        self.bits = bits
        self.straight_through = straight_through

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        squeezed = torch.round(images * levels) / levels
        return images + (squeezed - images).detach() if self.straight_through else squeezed

    def extra_repr(self) -> str:
        return f"bits={self.bits}, straight_through={self.straight_through}"
