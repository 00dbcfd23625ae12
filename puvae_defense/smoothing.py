"""Randomized smoothing: a certified L2 radius for any classifier (Cohen, Rosenfeld and Kolter, ICML 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)``,
is constant within the L2 ball of radius ``sigma * Phi^-1(p_A)`` around ``x`` whenever the top
class has probability at least ``p_A`` (their Theorem 1). :class:`SmoothedClassifier` estimates
``g`` by Monte Carlo with Cohen et al.'s two procedures: ``PREDICT`` (a label or an abstention,
wrong with probability at most ``alpha``) and ``CERTIFY`` (a label and a radius that holds with
probability at least ``1 - alpha``).

Denoised smoothing (Salman, Sun, Yang, Kapoor and Kolter, NeurIPS 2020) puts a denoiser in front
of an unmodified classifier: here the base classifier is typically a
:class:`~puvae_defense.PurifiedClassifier` whose purifier was trained on Gaussian noise
(``recipe="smooth"``, the registered ``puvae-mnist-smooth``).

The noisy copies are clipped to [0, 1] before the base classifier by default (PuVAE takes
images in [0, 1]). Clipping is part of the base classifier ``h(z) = f(clip(z))``, so the
guarantee is unchanged. A base classifier that samples noise of its own (PuVAE's
``sigma_eps``) is fine too: the argument holds for the probability over both noises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ._checks import PRECISIONS, check_count, check_sigma, not_a_tensor, warn_if_emulated_bf16

__all__ = ["ABSTAIN", "Certificate", "SmoothedClassifier", "binomial_p_value", "certified_accuracy", "certified_right",
           "clopper_pearson_lower", "radius_bound"]

#: The label returned where the smoothed classifier abstains.
ABSTAIN = -1


class Certificate(NamedTuple):
    """What :meth:`SmoothedClassifier.certify` returns (unpacks as ``labels, radii``).

    Attributes:
        labels: ``(B,)`` int64 predicted class, :data:`ABSTAIN` (-1) where it abstains.
        radii: ``(B,)`` float64 certified L2 radius (0 where it abstains).
    """

    labels: torch.Tensor
    radii: torch.Tensor


# ---------------------------------------------------------------------------- statistics
def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower confidence bound on a binomial proportion.

    The ``alpha`` quantile of ``Beta(successes, trials - successes + 1)``; 0 when there is no
    success. Cohen et al.'s ``LowerConfBound``.
    """
    from scipy.stats import beta

    alpha = _check_alpha(alpha)
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def binomial_p_value(successes: int, trials: int) -> float:
    """Two-sided exact binomial test of ``successes`` in ``trials`` against p = 1/2 (1 when trials is 0)."""
    from scipy.stats import binomtest

    if trials == 0:
        return 1.0
    return float(binomtest(successes, trials, 0.5).pvalue)


def radius_bound(sigma: float, n: int, alpha: float) -> float:
    """The largest radius :meth:`SmoothedClassifier.certify` can give with ``n`` samples:
    ``sigma * Phi^-1(alpha ** (1 / n))``, reached when every sample votes for one class."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(_check_alpha(alpha) ** (1.0 / n)))


def certified_right(certificate: Certificate, labels: torch.Tensor, radius: float) -> torch.Tensor:
    """Per image (bool): certified with the right label at a radius of at least ``radius``."""
    labels = labels.to(certificate.labels.device)
    return (certificate.labels == labels) & (certificate.radii >= radius) & (certificate.labels != ABSTAIN)


def certified_accuracy(certificate: Certificate, labels: torch.Tensor, radius: float) -> float:
    """Share (%) of images whose certified label is right with a radius of at least ``radius``.

    At ``radius`` 0 this is the smoothed classifier's accuracy with abstentions counted as wrong.
    """
    hit = certified_right(certificate, labels, radius)
    return 100.0 * float(hit.double().mean()) if len(labels) else math.nan


# ---------------------------------------------------------------------------- the classifier
class SmoothedClassifier:
    """The Gaussian-smoothed version of a base classifier, estimated by Monte Carlo.

    Args:
        base: any callable mapping ``(N, C, H, W)`` images to ``(N, num_classes)`` logits (or
            scores; only the argmax is used), typically a :class:`~puvae_defense.PurifiedClassifier`
            in eval mode.
        sigma: standard deviation of the Gaussian noise (in the units of the images, [0, 1]).
        batch_size: noisy copies classified at once (memory stays bounded whatever ``n`` is;
            copies of several images share a batch when ``n`` is small).
        clip: clip the noisy copies to [0, 1] (needed for a PuVAE base; part of the base classifier).
        progress: show a progress bar over the noisy copies.
        precision: ``"fp32"``, or ``"bf16"`` to run the base classifier under bfloat16 autocast
            (1.5x faster on a CPU with bf16 units in docs/smoothing.md). The certificates stay
            valid, for the base classifier in that arithmetic: compare them only with ones made in
            the same precision.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
        >>> smoothed = SmoothedClassifier(net, sigma=0.25)
        >>> labels, radii = smoothed.certify(torch.rand(2, 1, 28, 28), n0=10, n=100)
        >>> labels.shape, radii.shape
        (torch.Size([2]), torch.Size([2]))
    """

    def __init__(
        self,
        base: Callable[[torch.Tensor], torch.Tensor],
        sigma: float,
        *,
        batch_size: int = 1000,
        clip: bool = True,
        progress: bool = False,
        precision: str = "fp32",
    ) -> None:
        if not callable(base):
            raise TypeError(f"base must be a callable classifier, got {type(base).__name__}")
        self.base = base
        self.sigma = check_sigma(sigma)
        self.batch_size = check_count("batch_size", batch_size)
        self.clip = bool(clip)
        self.progress = bool(progress)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision

    def __repr__(self) -> str:
        arithmetic = "" if self.precision == "fp32" else f", precision={self.precision!r}"
        return (f"SmoothedClassifier({type(self.base).__name__}, sigma={self.sigma}, "
                f"batch_size={self.batch_size}{arithmetic})")

    def predict(self, images: torch.Tensor, *, n: int = 100, alpha: float = 0.001,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Cohen et al.'s ``PREDICT``: the top class among ``n`` noisy copies of each image, or
        :data:`ABSTAIN` where a two-sided binomial test cannot tell it from the runner-up at level ``alpha``.

        Args:
            images: ``(B, C, H, W)`` floats.
            n: noisy copies per image.
            alpha: the probability of returning a class other than ``g(x)`` is at most this.
            generator: RNG for the noise (on the images' device), for reproducible results.

        Returns:
            ``(B,)`` int64 labels, -1 where it abstains.
        """
        check_count("n", n)
        alpha = _check_alpha(alpha)
        counts = self.vote_counts(images, n, generator=generator)
        if counts.shape[0] == 0:
            return torch.empty(0, dtype=torch.long)
        top2 = counts.topk(min(2, counts.shape[1]), dim=1)
        labels = top2.indices[:, 0].clone()
        for i in range(len(labels)):
            n_a = int(top2.values[i, 0])
            n_b = int(top2.values[i, 1]) if top2.values.shape[1] > 1 else 0
            if binomial_p_value(n_a, n_a + n_b) > alpha:
                labels[i] = ABSTAIN
        return labels

    def certify(self, images: torch.Tensor, *, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                generator: torch.Generator | None = None) -> Certificate:
        """Cohen et al.'s ``CERTIFY``: guess the top class from ``n0`` noisy copies, bound its
        probability from ``n`` fresh ones, and certify ``sigma * Phi^-1(p_A)`` where ``p_A > 1/2``.

        Args:
            images: ``(B, C, H, W)`` floats.
            n0: copies for choosing the class (not used in the bound).
            n: copies for the Clopper-Pearson lower bound ``p_A``; the radius can never exceed
                :func:`radius_bound` ``(sigma, n, alpha)``.
            alpha: the certificate is wrong with probability at most this.
            generator: RNG for the noise (on the images' device).

        Returns:
            :class:`Certificate` ``(labels, radii)``; label -1 and radius 0 where it abstains.
        """
        check_count("n0", n0)
        check_count("n", n)
        if n0 > n:
            raise ValueError(f"n0 (copies to choose the class, {n0}) must not exceed n (copies for the bound, {n})")
        alpha = _check_alpha(alpha)
        from scipy.stats import norm

        if _check_images(images).shape[0] == 0:
            return Certificate(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.float64))
        guesses = self.vote_counts(images, n0, generator=generator).argmax(1)
        counts = self.vote_counts(images, n, generator=generator)
        labels = torch.full((len(guesses),), ABSTAIN, dtype=torch.long)
        radii = torch.zeros(len(guesses), dtype=torch.float64)
        for i, guess in enumerate(guesses.tolist()):
            p_lower = clopper_pearson_lower(int(counts[i, guess]), n, alpha)
            if p_lower > 0.5:
                labels[i] = guess
                radii[i] = self.sigma * float(norm.ppf(p_lower))
        return Certificate(labels, radii)

    @torch.no_grad()
    def vote_counts(self, images: torch.Tensor, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, num_classes)`` int64: how many of ``n`` noisy copies of each image the base classifier
        puts in each class. Copies are drawn and classified ``batch_size`` at a time, image-major
        (copies of several images share a batch when ``n`` is smaller than ``batch_size``).
        """
        _check_images(images)
        check_count("n", n)
        batch = images.shape[0]
        total = batch * n
        counts: torch.Tensor | None = None
        if self.precision == "bf16":
            warn_if_emulated_bf16(images.device, "SmoothedClassifier precision='bf16'")
        arithmetic = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        bar = _progress_bar(total, self.progress)
        for start in range(0, total, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, total), device=images.device)
            owner = index // n
            clean = images[owner]
            noise = torch.randn(clean.shape, generator=generator, device=images.device, dtype=images.dtype)
            noisy = clean + self.sigma * noise
            if self.clip:
                noisy = noisy.clamp(0, 1)
            try:
                with arithmetic:
                    logits = self.base(noisy)
            except RuntimeError as err:  # e.g. images of another shape or dtype than the base classifier takes
                raise ValueError(f"the base classifier failed on noisy copies of the images ({noisy.dtype}, shape "
                                 f"{tuple(noisy.shape)}): {err}") from err
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != len(index):
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"the base classifier must return ({len(index)}, num_classes) logits, got {got}")
            if counts is None:
                counts = torch.zeros(batch, logits.shape[1], dtype=torch.long, device=images.device)
            predicted = logits.float().argmax(1).to(images.device)
            counts.index_put_((owner, predicted), torch.ones_like(predicted), accumulate=True)
            bar.update(len(index))
        bar.close()
        if counts is None:  # an empty batch of images
            return torch.zeros(0, 0, dtype=torch.long)
        return counts.cpu()


def _check_images(images: object) -> torch.Tensor:
    """A finite floating ``(B, C, H, W)`` tensor with values (not on the meta device)."""
    if not isinstance(images, torch.Tensor):
        raise not_a_tensor("images", images)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating (B, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    if images.device.type == "meta":
        raise ValueError("images are on the meta device: they have no values to classify")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or Inf values")
    return images


def _progress_bar(total: int, enabled: bool):  # noqa: ANN202 (a tqdm bar)
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="copy", unit_scale=True, leave=False, desc="smoothing")
