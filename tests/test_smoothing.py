"""Randomized smoothing against closed forms: a linear base classifier's smoothed decision and
radius are known exactly (Cohen et al., 2019, section 3.1)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from puvae_defense import PuVAE, PurifiedClassifier
from puvae_defense.smoothing import (
    ABSTAIN,
    Certificate,
    SmoothedClassifier,
    binomial_p_value,
    certified_accuracy,
    clopper_pearson_lower,
    radius_bound,
)


class Halfspace(nn.Module):
    """Two classes split by the hyperplane ``w . x + b = 0``: class 1 where it is positive."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w.flatten(), b

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score = images.flatten(1) @ self.w + self.b
        return torch.stack([-score, score], dim=1)

    def margin(self, images: torch.Tensor) -> torch.Tensor:
        """Signed L2 distance of each image to the hyperplane: the smoothed classifier's exact radius."""
        return (images.flatten(1) @ self.w + self.b) / self.w.norm()


def _halfspace() -> Halfspace:
    w = torch.zeros(1, 4, 4)
    w[0, 0, :2] = torch.tensor([3.0, 4.0])  # ||w|| = 5
    return Halfspace(w, -1.0)


def _images(*first_pixels: tuple[float, float]) -> torch.Tensor:
    images = torch.zeros(len(first_pixels), 1, 4, 4)
    for i, (a, b) in enumerate(first_pixels):
        images[i, 0, 0, :2] = torch.tensor([a, b])
    return images


def test_certified_radius_of_a_linear_classifier_matches_its_margin() -> None:
    base = _halfspace()
    images = _images((0.4, 0.2), (0.0, 0.05), (0.05, 0.0))  # margins 0.2, -0.16, -0.17
    smoothed = SmoothedClassifier(base, sigma=0.25, clip=False, batch_size=4096)
    labels, radii = smoothed.certify(images, n0=100, n=50_000, alpha=0.001, generator=torch.Generator().manual_seed(0))
    margin = base.margin(images)
    assert labels.tolist() == [1, 0, 0]
    for radius, exact in zip(radii.tolist(), margin.abs().tolist(), strict=True):
        assert radius <= exact  # the bound holds (with probability 1 - alpha; seeded)
        assert radius > exact - 0.02  # and with n = 50,000 it is close to the exact radius


def test_predict_of_a_linear_classifier_is_the_side_of_the_hyperplane() -> None:
    base = _halfspace()
    images = _images((0.4, 0.2), (0.0, 0.05))
    labels = SmoothedClassifier(base, sigma=0.25, clip=False).predict(images, n=1000, generator=torch.Generator().manual_seed(1))
    assert labels.tolist() == [1, 0]


def test_a_classifier_on_the_boundary_abstains() -> None:
    base = _halfspace()
    on_boundary = _images((0.2, 0.1))  # 3 * 0.2 + 4 * 0.1 - 1 = 0
    smoothed = SmoothedClassifier(base, sigma=0.5, clip=False)
    generator = torch.Generator().manual_seed(2)
    assert smoothed.predict(on_boundary, n=200, alpha=0.001, generator=generator).tolist() == [ABSTAIN]
    labels, radii = smoothed.certify(on_boundary, n0=50, n=200, alpha=0.001, generator=generator)
    assert labels.tolist() == [ABSTAIN] and radii.tolist() == [0.0]


def test_a_constant_classifier_reaches_the_largest_radius_and_no_more() -> None:
    constant = lambda x: torch.tensor([0.0, 1.0, 0.0]).expand(x.shape[0], 3)  # noqa: E731
    smoothed = SmoothedClassifier(constant, sigma=0.5)
    labels, radii = smoothed.certify(torch.rand(3, 1, 4, 4), n0=10, n=1000, alpha=0.01)
    assert labels.tolist() == [1, 1, 1]
    expected = radius_bound(0.5, 1000, 0.01)
    assert expected == pytest.approx(0.5 * norm.ppf(0.01 ** (1 / 1000)))
    torch.testing.assert_close(radii, torch.full((3,), expected, dtype=torch.float64))


def test_statistics_against_closed_forms() -> None:
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05 ** (1 / 10))
    assert clopper_pearson_lower(1, 1, 0.3) == pytest.approx(0.3)  # Beta(1, 1) is uniform
    assert clopper_pearson_lower(50, 100, 0.001) < 0.5 < clopper_pearson_lower(70, 100, 0.001)
    assert binomial_p_value(5, 10) == pytest.approx(1.0)
    assert binomial_p_value(10, 10) == pytest.approx(2 * 0.5**10)
    assert binomial_p_value(0, 0) == 1.0


def test_seeded_runs_repeat_and_other_seeds_differ() -> None:
    base = _halfspace()
    images = _images((0.22, 0.1), (0.2, 0.12))
    smoothed = SmoothedClassifier(base, sigma=0.5, clip=False, batch_size=64)

    def counts(seed: int) -> torch.Tensor:
        return smoothed.vote_counts(images, 500, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(counts(3), counts(3))
    assert not torch.equal(counts(3), counts(4))
    assert counts(3).sum(1).tolist() == [500, 500]


def test_copies_are_classified_in_bounded_batches_and_clipped() -> None:
    sizes: list[int] = []
    ranges: list[tuple[float, float]] = []

    def base(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        ranges.append((float(x.min()), float(x.max())))
        return torch.zeros(x.shape[0], 2)

    SmoothedClassifier(base, sigma=1.0, batch_size=7).vote_counts(torch.rand(3, 1, 4, 4), 10)
    assert max(sizes) == 7 and sum(sizes) == 30
    assert min(low for low, _ in ranges) >= 0.0 and max(high for _, high in ranges) <= 1.0


def test_bf16_runs_the_base_classifier_under_autocast() -> None:
    seen: list[torch.dtype] = []

    def base(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype)
        return torch.zeros(x.shape[0], 2)

    SmoothedClassifier(base, sigma=0.5).vote_counts(torch.rand(2, 1, 4, 4), 3)
    SmoothedClassifier(base, sigma=0.5, precision="bf16").vote_counts(torch.rand(2, 1, 4, 4), 3)
    assert seen == [torch.float32, torch.bfloat16]
    assert not torch.is_autocast_enabled("cpu")  # and only while it classifies


def test_bf16_certifies_a_linear_classifier_within_its_margin() -> None:
    base = _halfspace()
    images = _images((0.4, 0.2), (0.0, 0.05))  # margins 0.2 and -0.16
    margin = base.margin(images).abs()
    for precision in ("fp32", "bf16"):
        smoothed = SmoothedClassifier(base, sigma=0.25, clip=False, batch_size=4096, precision=precision)
        labels, radii = smoothed.certify(images, n0=100, n=20_000, generator=torch.Generator().manual_seed(0))
        assert labels.tolist() == [1, 0]
        assert bool((radii <= margin.double() + 0.01).all()) and bool((radii > margin.double() - 0.03).all())
    assert "precision='bf16'" in repr(smoothed)


def test_certified_accuracy_counts_right_labels_with_enough_radius() -> None:
    certificate = Certificate(torch.tensor([1, 0, ABSTAIN, 2]), torch.tensor([0.5, 1.0, 0.0, 0.2], dtype=torch.float64))
    labels = torch.tensor([1, 1, 0, 2])
    assert certified_accuracy(certificate, labels, 0.0) == 50.0
    assert certified_accuracy(certificate, labels, 0.3) == 25.0
    assert certified_accuracy(certificate, labels, 0.6) == 0.0


def test_smoothing_a_purified_classifier(tiny_vae: PuVAE) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    smoothed = SmoothedClassifier(PurifiedClassifier(net, tiny_vae).eval(), sigma=0.5, batch_size=64)
    images = torch.rand(3, 1, 28, 28)
    labels, radii = smoothed.certify(images, n0=20, n=100, generator=torch.Generator().manual_seed(0))
    assert labels.shape == (3,) and radii.dtype == torch.float64
    assert bool(((labels >= ABSTAIN) & (labels < 10)).all())
    assert bool((radii <= radius_bound(0.5, 100, 0.001) + 1e-12).all())
    assert smoothed.predict(images, n=30).shape == (3,)


def test_empty_batches() -> None:
    smoothed = SmoothedClassifier(_halfspace(), sigma=0.5)
    empty = torch.zeros(0, 1, 4, 4)
    assert smoothed.predict(empty).shape == (0,)
    labels, radii = smoothed.certify(empty, n0=1, n=2)
    assert labels.shape == radii.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"sigma": 0.0}, "sigma must be a finite positive"), ({"sigma": -1.0}, "sigma must be a finite positive"),
     ({"sigma": math.inf}, "sigma must be a finite positive"), ({"sigma": math.nan}, "sigma must be a finite positive"),
     ({"sigma": 0.5, "batch_size": 0}, "batch_size must be an integer >= 1"),
     ({"sigma": 0.5, "precision": "fp16"}, r"precision must be one of \('fp32', 'bf16'\), got 'fp16'")],
)
def test_bad_settings_are_clear_errors(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SmoothedClassifier(_halfspace(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [({"n0": 200, "n": 100}, "n0 .* must not exceed n"), ({"n0": 0, "n": 100}, "n0 must be an integer >= 1"),
     ({"n0": 10, "n": 100, "alpha": 0.0}, r"alpha must be a number in \(0, 1\)"),
     ({"n0": 10, "n": 100, "alpha": 1.5}, r"alpha must be a number in \(0, 1\)"),
     ({"n0": 10, "n": 100, "alpha": math.nan}, r"alpha must be a number in \(0, 1\)")],
)
def test_bad_certify_arguments_are_clear_errors(call: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SmoothedClassifier(_halfspace(), sigma=0.5).certify(_images((0.1, 0.1)), **call)  # type: ignore[arg-type]


def test_bad_inputs_are_clear_errors() -> None:
    smoothed = SmoothedClassifier(_halfspace(), sigma=0.5)
    with pytest.raises(TypeError, match="expected a torch.Tensor for images"):
        smoothed.predict([[0.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or Inf"):
        smoothed.predict(torch.full((1, 1, 4, 4), math.nan))
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        smoothed.predict(_images((0.1, 0.1)), n=0)
    with pytest.raises(ValueError, match="meta device"):
        smoothed.predict(torch.zeros(1, 1, 4, 4, device="meta"))
    with pytest.raises(TypeError, match="callable"):
        SmoothedClassifier(3, sigma=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"must return \(4, num_classes\) logits"):
        SmoothedClassifier(lambda x: x.sum(), sigma=0.5).predict(_images((0.1, 0.1)), n=4)
