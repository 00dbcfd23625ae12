"""Bad input to the purifier gets a clear error naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from puvae_defense import PuVAE, PurifiedClassifier


@pytest.fixture
def model(tiny_vae: PuVAE) -> PurifiedClassifier:
    return PurifiedClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), tiny_vae)


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        ([[0.0]], TypeError, r"expected a torch.Tensor for images of shape \(B, C, H, W\), got list \(convert with torch.tensor"),
        (np.zeros((2, 1, 28, 28), dtype=np.float32), TypeError, r"expected a torch.Tensor .*, got numpy.ndarray \(convert with torch.from_numpy"),
        (torch.rand(1, 28, 28), ValueError, r"unsqueeze\(0\)"),
        (torch.rand(2, 784), ValueError, r"\(B, 1, 28, 28\)"),
        (torch.rand(2, 3, 28, 28), ValueError, "channels, height, width"),
        (torch.rand(2, 1, 32, 32), ValueError, "channels, height, width"),
        (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8), TypeError, "divide uint8 images by 255"),
        (torch.rand(2, 1, 28, 28) * 255, ValueError, r"values in \[0, 1\].*max 2"),
        ((torch.rand(2, 1, 28, 28) - 0.1307) / 0.3081, ValueError, "preprocess"),
        (torch.full((2, 1, 28, 28), float("nan")), ValueError, "NaN or Inf"),
        (torch.full((2, 1, 28, 28), float("inf")), ValueError, "NaN or Inf"),
        (torch.zeros(2, 1, 28, 28, device="meta"), ValueError, "meta device"),
    ],
)
def test_bad_images(model: PurifiedClassifier, images, error, message) -> None:
    with pytest.raises(error, match=message):
        model(images)
    with pytest.raises(error, match=message):
        model.purify(images)


def test_small_rounding_outside_the_range_is_accepted(model: PurifiedClassifier) -> None:
    x = torch.rand(2, 1, 28, 28)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -1e-4, 1 + 1e-4
    assert model(x).shape == (2, 10)


def test_device_mismatch_is_named(tiny_vae: PuVAE) -> None:
    tiny_vae.to("meta")  # a second device without a GPU
    with pytest.raises(ValueError, match="images are on cpu but the PuVAE is on meta"):
        tiny_vae.project(torch.rand(2, 1, 28, 28))


@pytest.mark.parametrize("sigma_eps", [float("inf"), 1e300, float("nan"), -0.1, 11.0])
def test_sigma_eps_out_of_range_is_refused(tiny_vae: PuVAE, sigma_eps: float) -> None:
    """Regression (hardening): sigma_eps=inf or 1e300 gave NaN purified images and logits."""
    with pytest.raises(ValueError, match=r"sigma_eps must be a number in \[0, 10\]"):
        PurifiedClassifier(torch.nn.Flatten(), tiny_vae, sigma_eps=sigma_eps, check_num_classes=False)
    with pytest.raises(ValueError, match=r"sigma_eps must be a number in \[0, 10\]"):
        tiny_vae.project(torch.rand(1, 1, 28, 28), sigma_eps)
