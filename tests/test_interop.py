"""PurifiedClassifier inside torchattacks and ART, and the purifier as an ART preprocessing defence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from puvae_defense import PurifiedClassifier, PuVAE, attacks


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()


@pytest.fixture
def defended(tiny_vae: PuVAE) -> PurifiedClassifier:
    return PurifiedClassifier(_net(), tiny_vae, sigma_eps=0.0).eval()


LABELS = torch.tensor([0, 1, 2, 3, 4, 5])


def test_torchattacks_attacks_the_defended_model(defended: PurifiedClassifier, images: torch.Tensor) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    theirs = torchattacks.FGSM(defended, eps=0.3)(images, LABELS)
    torch.testing.assert_close(theirs, attacks.fgsm(defended, images, LABELS, eps=0.3), rtol=0, atol=1e-6)
    adversarial = torchattacks.PGD(defended, eps=0.3, alpha=0.05, steps=3)(images, LABELS)
    assert (adversarial - images).abs().max() <= 0.3 + 1e-6 and not defended.training


def _art_classifier(model: torch.nn.Module, **kwargs):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                             clip_values=(0.0, 1.0), device_type="cpu", **kwargs)


def test_art_wraps_the_defended_model(defended: PurifiedClassifier, images: torch.Tensor) -> None:
    pytest.importorskip("art")
    from art.attacks.evasion import FastGradientMethod

    classifier = _art_classifier(defended)
    with torch.no_grad():
        np.testing.assert_allclose(classifier.predict(images.numpy()), defended(images).numpy(), rtol=1e-5, atol=1e-5)
    theirs = FastGradientMethod(classifier, eps=0.3).generate(images.numpy(), y=np.eye(10)[LABELS.numpy()])
    ours = attacks.fgsm(defended, images, LABELS, eps=0.3)
    np.testing.assert_allclose(theirs, ours.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bpda", [False, True], ids=["full-gradient", "bpda"])
def test_art_preprocessor_matches_the_wrapper(tiny_vae: PuVAE, defended: PurifiedClassifier, images: torch.Tensor,
                                              bpda: bool) -> None:
    pytest.importorskip("art")
    from puvae_defense.art import PuVAEPreprocessor

    classifier = _art_classifier(_net(), preprocessing_defences=[PuVAEPreprocessor(tiny_vae, sigma_eps=0.0, bpda=bpda)])
    with torch.no_grad():
        np.testing.assert_allclose(classifier.predict(images.numpy()), defended(images).numpy(), rtol=1e-5, atol=1e-5)
    gradient = classifier.loss_gradient(images.numpy(), np.eye(10)[LABELS.numpy()])
    purify = lambda x: tiny_vae.project(x, 0.0).purified  # noqa: E731
    model = attacks.bpda(purify, defended.classify_purified) if bpda else defended
    x = images.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), LABELS).backward()
    np.testing.assert_allclose(gradient, x.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_art_preprocessor_rejects_bad_arguments(tiny_vae: PuVAE) -> None:
    pytest.importorskip("art")
    from puvae_defense.art import PuVAEPreprocessor

    with pytest.raises(ValueError, match="sigma_eps"):
        PuVAEPreprocessor(tiny_vae, sigma_eps=-1)
    with pytest.raises(TypeError, match="purifier must be"):
        PuVAEPreprocessor(3)  # type: ignore[arg-type]
