"""A torchvision network behind the purifier, with ordinary torchvision transforms as ``preprocess``."""

from __future__ import annotations

import pytest
import torch

from puvae_defense import PurifiedClassifier, PuVAE

torchvision = pytest.importorskip("torchvision")
from torchvision.transforms import v2  # noqa: E402


def _resnet_and_transforms() -> tuple[torch.nn.Module, v2.Compose]:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()  # random weights are enough to test the plumbing
    preprocess = v2.Compose([v2.Resize(32, antialias=True), v2.Grayscale(num_output_channels=3),
                             v2.Normalize([0.1307] * 3, [0.3081] * 3)])
    return net, preprocess


def test_resnet_behind_the_purifier_sees_the_transformed_purified_images(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    net, preprocess = _resnet_and_transforms()
    model = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0, preprocess=preprocess).eval()
    with torch.no_grad():
        logits = model(images)
        purified = tiny_vae.project(images, 0.0).purified
        expected = net(preprocess(purified))
    assert logits.shape == (len(images), 10)
    torch.testing.assert_close(logits, expected)


def test_resnet_wrapper_follows_modes_memory_format_and_gradients(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    net, preprocess = _resnet_and_transforms()
    model = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0, preprocess=preprocess)
    model.train()
    assert net.training and tiny_vae.training
    model.eval()
    assert not net.training and not tiny_vae.training
    with torch.no_grad():
        reference = model(images)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        channels_last = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)
    attacked = images.clone().requires_grad_(True)
    model(attacked).logsumexp(1).sum().backward()
    assert attacked.grad is not None and attacked.grad.abs().sum() > 0


def test_resnet_wrapper_rejects_images_of_the_torchvision_shape(tiny_vae: PuVAE) -> None:
    net, preprocess = _resnet_and_transforms()
    model = PurifiedClassifier(net, tiny_vae, preprocess=preprocess).eval()
    with pytest.raises(ValueError, match=r"expects \(B, 1, 28, 28\)"):
        model(torch.rand(2, 3, 32, 32))  # the transforms run after purification, not before
