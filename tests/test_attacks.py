from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from puvae_defense import attacks
from puvae_defense.attacks import bpda, cw_l2, fgsm, ifgsm, pgd, rand_fgsm, random_targets


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 4, 4, generator=gen) * 0.5 + 0.25, torch.randint(0, 3, (8,), generator=gen)


def test_fgsm_closed_form_on_a_linear_model(batch) -> None:
    x, y = batch
    model = _linear()
    weight = model[1].weight.detach()
    # d CE / d x = W^T (softmax - onehot); its sign is the FGSM direction.
    probs = torch.softmax(model(x), 1)
    grad = (probs - torch.nn.functional.one_hot(y, 3).float()) @ weight
    expected = (x + 0.1 * grad.sign().view_as(x)).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, eps=0.1), expected)
    expected_targeted = (x - 0.1 * grad.sign().view_as(x)).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, eps=0.1, targeted=True), expected_targeted)


@pytest.mark.parametrize("attack", ["fgsm", "ifgsm", "rand_fgsm", "pgd"])
def test_linf_attacks_stay_in_budget_and_range(batch, attack: str) -> None:
    x, y = batch
    model = _linear()
    eps = 0.2
    adv = {
        "fgsm": lambda: fgsm(model, x, y, eps=eps),
        "ifgsm": lambda: ifgsm(model, x, y, eps=eps, step_size=0.05, steps=10),
        "rand_fgsm": lambda: rand_fgsm(model, x, y, eps=eps, alpha=0.05, generator=torch.Generator().manual_seed(0)),
        "pgd": lambda: pgd(model, x, y, eps=eps, step_size=0.03, steps=10, generator=torch.Generator().manual_seed(0)),
    }[attack]()
    assert adv.shape == x.shape and not adv.requires_grad
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > eps / 2  # it really moved


def _weak_classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP fitted to separable synthetic data (fast, deterministic)."""
    gen = torch.Generator().manual_seed(1)
    centers = torch.rand(4, 1, 6, 6, generator=gen)
    labels = torch.arange(4).repeat(50)
    images = (centers[labels] + 0.05 * torch.randn(200, 1, 6, 6, generator=gen)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval(), images[:40], labels[:40]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_attacks_fool_an_undefended_model_and_targeted_ones_hit_targets() -> None:
    model, x, y = _weak_classifier()
    assert _accuracy(model, x, y) == 1.0
    targets = random_targets(y, 4, torch.Generator().manual_seed(0))
    assert torch.all(targets != y)
    for adv in (fgsm(model, x, targets, eps=0.5, targeted=True),
                ifgsm(model, x, targets, eps=0.5, step_size=0.05, steps=20, targeted=True),
                rand_fgsm(model, x, targets, eps=0.5, alpha=0.05, targeted=True)):
        assert _accuracy(model, adv, y) < 0.25  # worse than chance (4 classes)
    hit = ifgsm(model, x, targets, eps=0.5, step_size=0.05, steps=20, targeted=True)
    assert _accuracy(model, hit, targets) > 0.9
    assert _accuracy(model, pgd(model, x, y, eps=0.5, step_size=0.05, steps=20), y) < 0.25


def test_cw_l2_finds_small_successful_perturbations() -> None:
    model, x, y = _weak_classifier()
    adv = cw_l2(model, x, y, steps=100, lr=0.05, initial_const=1.0, binary_search_steps=3)
    assert _accuracy(model, adv, y) < 0.1
    assert adv.min() >= 0 and adv.max() <= 1
    targets = random_targets(y, 4, torch.Generator().manual_seed(0))
    adv_t = cw_l2(model, x, targets, targeted=True, steps=100, lr=0.05, initial_const=1.0, binary_search_steps=3)
    assert _accuracy(model, adv_t, targets) > 0.9
    # The binary search keeps the smallest successful distortion: less than a uniform 0.5 shift.
    assert (adv - x).flatten(1).norm(dim=1).max() < 0.5 * 6


def test_cw_returns_input_when_it_cannot_succeed() -> None:
    model, x, y = _weak_classifier()
    adv = cw_l2(model, x, y, steps=2, lr=1e-6, initial_const=1e-6, binary_search_steps=1)
    torch.testing.assert_close(adv, x, atol=1e-5, rtol=0)


def test_bpda_gradient_is_the_classifier_gradient_at_the_purified_point() -> None:
    model = _linear()
    x = torch.rand(4, 1, 4, 4, requires_grad=True)
    purify = lambda images: (images * 0 + 0.5)  # noqa: E731 - a constant purifier has zero true gradient
    logits = bpda(purify, model)(x)
    logits.sum().backward()
    expected = model[1].weight.sum(0).view(1, 1, 4, 4).expand_as(x)
    torch.testing.assert_close(x.grad, expected)


def test_eot_averages_over_samples() -> None:
    calls: list[int] = []

    def model(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        return images.flatten(1)[:, :3] + 0.01 * torch.randn(images.shape[0], 3)

    x = torch.rand(5, 1, 4, 4)
    pgd(model, x, torch.zeros(5, dtype=torch.long), eps=0.1, step_size=0.02, steps=3, eot_samples=4)
    assert calls == [20, 20, 20]


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_bad_budgets(batch, bad) -> None:
    x, y = batch
    with pytest.raises(ValueError, match="eps"):
        fgsm(_linear(), x, y, eps=bad)
    with pytest.raises(ValueError, match="alpha"):
        rand_fgsm(_linear(), x, y, eps=0.1, alpha=0.2)


def test_attacks_work_inside_no_grad(batch) -> None:
    x, y = batch
    with torch.no_grad():
        adv = fgsm(_linear(), x, y, eps=0.1)
    assert (adv - x).abs().max() > 0


# ---------------------------------------------------------------------------- argument checks (hardening)
def _linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


_X = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
_Y = torch.tensor([0, 2])


@pytest.mark.parametrize(("attack", "message"), [
    (lambda m: attacks.ifgsm(m, _X, _Y, eps=0.3, steps=0), "steps must be an integer >= 1"),
    (lambda m: attacks.ifgsm(m, _X, _Y, eps=0.3, steps=-1), "steps must be an integer >= 1"),
    (lambda m: attacks.ifgsm(m, _X, _Y, eps=0.3, step_size=0.0), "step_size must be a finite positive"),
    (lambda m: attacks.pgd(m, _X, _Y, steps=0, random_start=False), "steps must be an integer >= 1"),
    (lambda m: attacks.pgd(m, _X, _Y, step_size=math.nan), "step_size must be a finite positive"),
    (lambda m: attacks.pgd(m, _X, _Y, eps=math.inf), "eps must be a finite non-negative"),
    (lambda m: attacks.rand_fgsm(m, _X, _Y, eps=math.inf, alpha=0.05), "eps must be a finite non-negative"),
    (lambda m: attacks.rand_fgsm(m, _X, _Y, eps=0.3, alpha=math.nan), "alpha must be in"),
    (lambda m: attacks.fgsm(m, _X, _Y, eps=math.nan), "eps must be a finite non-negative"),
    (lambda m: attacks.cw_l2(m, _X, _Y, initial_const=-1.0), "initial_const must be a finite positive"),
    (lambda m: attacks.cw_l2(m, _X, _Y, initial_const=math.nan), "initial_const must be a finite positive"),
    (lambda m: attacks.cw_l2(m, _X, _Y, confidence=math.nan), "confidence must be a finite non-negative"),
    (lambda m: attacks.cw_l2(m, _X, _Y, steps=0), "steps must be an integer >= 1"),
    (lambda m: attacks.fgsm(m, _X, torch.tensor([0, 3]), eps=0.3), r"labels must be in \[0, 2\] \(the model has 3"),
    (lambda m: attacks.pgd(m, _X, torch.tensor([0, 5]), steps=1), r"labels must be in \[0, 2\]"),
    (lambda m: attacks.cw_l2(m, _X, torch.tensor([0, 5]), steps=1), r"labels must be in \[0, 2\]"),
    (lambda m: attacks.fgsm(m, _X, torch.tensor([0, -1]), eps=0.3), "labels must be non-negative"),
    (lambda m: attacks.fgsm(m, _X, torch.tensor([0]), eps=0.3), r"labels must have shape \(2,\)"),
    (lambda m: attacks.fgsm(m, _X * 2, _Y, eps=0.3), r"values in \[0, 1\]"),
    (lambda m: attacks.fgsm(m, _X[0], _Y, eps=0.3), r"\(B, C, H, W\) batch"),
    (lambda m: attacks.fgsm(m, torch.zeros(2, 1, 4, 4, device="meta"), _Y, eps=0.3), "meta device"),
])
def test_bad_attack_arguments_are_value_errors(attack, message: str) -> None:
    """Regression (hardening): these returned the clean images, NaN, or torch's own index errors."""
    with pytest.raises(ValueError, match=message):
        attack(_linear())


@pytest.mark.parametrize(("attack", "message"), [
    (lambda m: attacks.fgsm(m, _X, _Y.float(), eps=0.3), "integer class indices"),
    (lambda m: attacks.fgsm(m, (_X * 255).to(torch.uint8), _Y, eps=0.3), "divide uint8 images by 255"),
    (lambda m: attacks.fgsm(m, _X.numpy(), _Y, eps=0.3), "expected a torch.Tensor for images .* got numpy.ndarray"),
])
def test_bad_attack_input_types_are_type_errors(attack, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        attack(_linear())
