"""Our attacks against torchattacks 3.5.1 and CleverHans 4.0.0 on the shipped classifier A.

Deterministic algorithms must give the same images (to float rounding); randomised ones the
same images from the same random numbers where the libraries draw them alike; CW-L2 the
same success and distortion within one binary-search step, where the two implementations
coincide up to float rounding (which can change the iteration whose image is kept).
The libraries are optional: these tests run where they are installed (scripts/setup.sh
installs them). The full comparison on 1,000 images per classifier is scripts/crosscheck.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from puvae_defense import attacks
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset

torchattacks = pytest.importorskip("torchattacks")
pytest.importorskip("cleverhans")
from cleverhans.torch.attacks.carlini_wagner_l2 import carlini_wagner_l2  # noqa: E402
from cleverhans.torch.attacks.fast_gradient_method import fast_gradient_method  # noqa: E402
from cleverhans.torch.attacks.projected_gradient_descent import projected_gradient_descent  # noqa: E402

HUB = Path(__file__).resolve().parents[1] / "hub"
ATOL = 1e-6


@pytest.fixture(scope="module")
def setting(mnist_root):
    model = PaperClassifier.from_pretrained(HUB / "mnist-classifier-a").eval()
    test = load_dataset("mnist", "test", root=mnist_root)
    images, labels = test.images[:32], test.labels[:32]
    targets = attacks.random_targets(labels, 10, torch.Generator().manual_seed(0))
    return model, images, labels, targets


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_fgsm_is_identical(setting, targeted: bool) -> None:
    model, images, labels, targets = setting
    y = targets if targeted else labels
    ours = attacks.fgsm(model, images, y, eps=0.3, targeted=targeted)
    attack = torchattacks.FGSM(model, eps=0.3)
    if targeted:
        attack.set_mode_targeted_by_label(quiet=True)
    _same(ours, attack(images, y))
    _same(ours, fast_gradient_method(model, images, 0.3, np.inf, clip_min=0.0, clip_max=1.0, y=y, targeted=targeted))


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_ifgsm_is_identical(setting, targeted: bool) -> None:
    model, images, labels, targets = setting
    y = targets if targeted else labels
    ours = attacks.ifgsm(model, images, y, eps=0.3, step_size=0.05, steps=10, targeted=targeted)
    attack = torchattacks.BIM(model, eps=0.3, alpha=0.05, steps=10)
    if targeted:
        attack.set_mode_targeted_by_label(quiet=True)
    _same(ours, attack(images, y))
    theirs = projected_gradient_descent(model, images, 0.3, 0.05, 10, np.inf, clip_min=0.0, clip_max=1.0, y=y,
                                        targeted=targeted, rand_init=False)
    _same(ours, theirs)


def test_rand_fgsm_is_identical_from_the_same_noise(setting) -> None:
    # torchattacks' RFGSM takes its gradient step with alpha (Tramer et al. use eps - alpha):
    # with eps = 2 alpha and one step the two formulas coincide.
    model, images, labels, _ = setting
    ours = attacks.rand_fgsm(model, images, labels, eps=0.1, alpha=0.05, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    _same(ours, torchattacks.RFGSM(model, eps=0.1, alpha=0.05, steps=1)(images, labels))


def test_pgd_is_identical_without_random_start(setting) -> None:
    model, images, labels, _ = setting
    ours = attacks.pgd(model, images, labels, eps=0.3, step_size=0.01, steps=40, random_start=False)
    _same(ours, torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=False)(images, labels))
    theirs = projected_gradient_descent(model, images, 0.3, 0.01, 40, np.inf, clip_min=0.0, clip_max=1.0, y=labels,
                                        rand_init=False)
    _same(ours, theirs)


def _fooled(model, adversarial: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(adversarial).argmax(1) != labels).float().mean())


def test_pgd_with_random_start_succeeds_alike(setting) -> None:
    model, images, labels, _ = setting
    ours = attacks.pgd(model, images, labels, eps=0.3, step_size=0.01, steps=40, generator=torch.Generator().manual_seed(0))
    theirs = torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=True)(images, labels)
    assert (ours - images).abs().max() <= 0.3 + ATOL and (theirs - images).abs().max() <= 0.3 + ATOL
    assert abs(_fooled(model, ours, labels) - _fooled(model, theirs, labels)) <= 0.1


def test_cw_l2_follows_cleverhans_within_one_binary_search_step(setting) -> None:
    # CleverHans 4's PyTorch CW keeps the modifier and Adam's state from one binary-search step to
    # the next; Carlini and Wagner's reference code (and ours) restarts each step from the input.
    # Within one step the algorithms coincide up to the tanh-space mapping (0.999999 factor).
    model, images, labels, _ = setting
    images, labels = images[:16], labels[:16]
    ours = attacks.cw_l2(model, images, labels, steps=100, binary_search_steps=1, initial_const=10.0, lr=0.05)
    theirs = carlini_wagner_l2(model, images, 10, y=labels, max_iterations=100, binary_search_steps=1, initial_const=10.0,
                               lr=0.05)
    ours_fooled, theirs_fooled = _fooled(model, ours, labels), _fooled(model, theirs, labels)
    assert ours_fooled >= 0.5 and abs(ours_fooled - theirs_fooled) <= 1 / 16, (ours_fooled, theirs_fooled)
    both = (model(ours).argmax(1) != labels) & (model(theirs).argmax(1) != labels)
    l2_ours, l2_theirs = ((x - images).flatten(1).norm(dim=1)[both] for x in (ours, theirs))
    assert 0.95 <= float(l2_ours.mean() / l2_theirs.mean()) <= 1.05  # the same distortion where both succeed
