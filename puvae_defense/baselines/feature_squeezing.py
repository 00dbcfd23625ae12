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

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BitDepthSqueeze", "squeezable_bits", "squeezed_bits_attack"]


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


def squeezable_bits(images: torch.Tensor, eps: float, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Which pixels an L-inf budget ``eps`` can move across 1-bit squeezing's ``threshold``.

    A pixel is squeezed to 1 when it exceeds the threshold. Within ``[x - eps, x + eps]`` clipped
    to [0, 1], it is stuck at 1 when even its lowest value exceeds the threshold, stuck at 0 when
    even its highest does not, and free otherwise.

    Returns:
        ``(bits, free)``: the clean images' squeezed bits (float) and the mask of free pixels.
    """
    low, high = (images - eps).clamp(0, 1), (images + eps).clamp(0, 1)
    free = (low <= threshold) & (high > threshold)
    return (images > threshold).to(images.dtype), free


def squeezed_bits_attack(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    threshold: float = 0.5,
    steps: int = 100,
    lr: float = 0.1,
    flip_rounds: int = 20,
    flip_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """An attack made for 1-bit squeezing: search the binary images the eps-ball can reach.

    Behind 1-bit squeezing the model only ever sees binary images, and of those only the ones whose
    free pixels (:func:`squeezable_bits`) differ from the clean image's bits. The attack

    1. relaxes the free pixels to ``sigmoid(w)`` and runs Adam on ``score`` (the defense's own
       decision margin, positive when it is fooled) for ``steps`` steps, from the clean bits plus a
       little noise;
    2. rounds them, then refines by pixel flips for ``flip_rounds`` rounds: the free pixels whose
       flip the gradient says raises the margin most, a ``flip_fraction`` of them at a time, kept
       when the exact margin of the flipped binary image rises, halved otherwise;
    3. returns images within ``eps`` of the input whose squeezed bits are the ones found.

    A straight-through gradient (the rounding's BPDA) attacks the rounding's surroundings; this
    attacks the rounding itself. Report the worst case per image over both.

    Args:
        score: ``(binary or relaxed images in [0, 1], labels) -> (B,)`` margin; > 0: fooled.
        images: ``(B, C, H, W)`` in [0, 1]; labels: ``(B,)`` true labels.
        eps: L-inf budget.

    Returns:
        Adversarial images, ``|x' - x| <= eps``, in [0, 1].
    """
    if not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    if steps < 0 or flip_rounds < 0 or not 0 < flip_fraction <= 1 or not lr > 0:
        raise ValueError("steps and flip_rounds must be >= 0, flip_fraction in (0, 1] and lr > 0")
    x = images.detach()
    bits, free = squeezable_bits(x, eps, threshold)
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    w = ((bits * 2 - 1) * 2 + 0.5 * noise).masked_fill(~free, 0).requires_grad_(True)

    def relaxed(weights: torch.Tensor) -> torch.Tensor:
        return torch.where(free, torch.sigmoid(weights), bits)

    optimizer = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            loss = -score(relaxed(w), labels).sum()
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()
    found = torch.where(free, (torch.sigmoid(w.detach()) > 0.5).to(x.dtype), bits)
    with torch.no_grad():
        best = score(found, labels)
    size = torch.full((x.shape[0],), flip_fraction, device=x.device)
    counts = free.flatten(1).sum(1)
    for _ in range(flip_rounds):
        working = best <= 0
        if not bool(working.any()):
            break
        with torch.enable_grad():
            probe = found.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(score(probe, labels).sum(), probe)
        gain = (grad * (1 - 2 * found)).masked_fill(~free, float("-inf")).flatten(1)  # first-order gain of a flip
        k = (size * counts).ceil().long().clamp(min=1)
        order = gain.argsort(1, descending=True)
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=x.device).expand_as(order))
        chosen = (ranks < k[:, None]) & (gain > 0) & working[:, None]
        flipped = torch.where(chosen.view_as(found), 1 - found, found)
        with torch.no_grad():
            margin = score(flipped, labels)
        better = margin > best
        found = torch.where(better[:, None, None, None], flipped, found)
        best = torch.where(better, margin, best)
        size = torch.where(better, size, size / 2)
    # A value within [x - eps, x + eps] on the side of the threshold each found bit asks for.
    low, high = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    above = torch.maximum(low, torch.minimum(high, torch.full_like(x, threshold + 1e-3)))
    below = torch.minimum(high, torch.maximum(low, torch.full_like(x, threshold - 1e-3)))
    wanted = torch.where(found > 0.5, torch.where(x > threshold, x, above), torch.where(x > threshold, below, x))
    return torch.where(free, wanted, x).detach()
