"""Adversarial attacks used to evaluate the defense (section 4 of the paper, and beyond).

Every attack takes ``model`` (a callable returning logits for images in [0, 1]), a batch
``images (B, C, H, W)`` and returns adversarial images of the same shape in [0, 1]. All are
written for this project (torchattacks' R+FGSM differs from Tramer et al.'s, it has no
binary-search CW-L2, and CleverHans 4 pulls TensorFlow dependencies) and tested against
closed forms and budgets in ``tests/test_attacks.py``.

- :func:`fgsm` - Goodfellow et al., 2015 (arXiv:1412.6572), L-inf, one step.
- :func:`ifgsm` - Kurakin et al., 2016 (arXiv:1607.02533), iterative FGSM.
- :func:`rand_fgsm` - Tramer et al., 2018 (arXiv:1705.07204), random sign step then FGSM.
- :func:`cw_l2` - Carlini & Wagner, 2017 (arXiv:1608.04644), L2, Adam in tanh space with a
  binary search over the constant, as CleverHans' ``CarliniWagnerL2``.
- :func:`pgd` - Madry et al., 2018 (arXiv:1706.06083), L-inf with random start, with
  expectation over transformation (Athalye et al., 2018) for randomised models.
- :func:`bpda` - Athalye et al., 2018 (arXiv:1802.00420): a model whose backward pass
  treats the purifier as the identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_images, check_labels, not_a_tensor

__all__ = ["BPDA", "bpda", "cw_l2", "fgsm", "ifgsm", "pgd", "rand_fgsm", "random_targets"]

Model = Callable[[torch.Tensor], torch.Tensor]


def random_targets(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A target drawn uniformly among the wrong classes for each label (as in the paper)."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, device="cpu").to(labels.device)
    return (labels + shift) % num_classes


def _check_attack_inputs(images: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Images a finite floating ``(B, C, H, W)`` batch in [0, 1], labels ``(B,)`` non-negative
    integers (their upper bound is checked against the model's logits, :func:`_logits`)."""
    if not isinstance(images, torch.Tensor):
        raise not_a_tensor("images", images)
    if images.device.type == "meta":
        raise ValueError("images are on the meta device: they have no values to attack")
    if images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    images = check_images(images, tuple(images.shape[1:]))
    if isinstance(labels, torch.Tensor) and labels.numel() and not labels.dtype.is_floating_point \
            and labels.dtype != torch.bool and int(labels.min()) < 0:
        raise ValueError(f"labels must be non-negative class indices, got {int(labels.min())}")
    return images, check_labels(labels, images.shape[0], torch.iinfo(torch.int64).max)


def _logits(model: Model, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's logits; labels beyond their width are an error, not torch's index error."""
    try:
        logits = model(images)
    except RuntimeError as err:  # e.g. float64 images for a float32 model: say what the attack passed
        raise ValueError(f"the model failed on the attack's images ({images.dtype}, shape {tuple(images.shape)}, "
                         f"{images.device}): {err}") from err
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return ({images.shape[0]}, num_classes) logits, got {got}")
    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1] - 1}] (the model has {logits.shape[1]} logits), "
                         f"got {int(labels.max())}")
    return logits


def _gradient_sign(model: Model, images: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Sign of the gradient of the loss to increase (untargeted) or of -loss (targeted)."""
    with torch.enable_grad():  # attacks work inside torch.no_grad() blocks too
        x = images.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(_logits(model, x, labels), labels)
        (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad.sign()


def _check_budget(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def _check_steps(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (fewer steps would return the clean images), got {value!r}")


def fgsm(model: Model, images: torch.Tensor, labels: torch.Tensor, *, eps: float, targeted: bool = False) -> torch.Tensor:
    """Fast gradient sign method, ``x + eps * sign(grad)`` clipped to [0, 1].

    Args:
        model: returns logits.
        images: ``(B, C, H, W)`` in [0, 1].
        labels: true labels (untargeted) or target labels (``targeted=True``), ``(B,)``.
        eps: L-inf budget (paper: 0.3 on MNIST, 0.06 on CIFAR-10).
        targeted: step down the target's loss instead of up the true label's.
    """
    _check_budget("eps", eps)
    images, labels = _check_attack_inputs(images, labels)
    return (images + eps * _gradient_sign(model, images, labels, targeted)).clamp(0, 1).detach()


def ifgsm(
    model: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    step_size: float = 0.05,
    steps: int = 10,
    targeted: bool = False,
) -> torch.Tensor:
    """Iterative FGSM (basic iterative method): ``steps`` FGSM steps, each projected on the eps ball.

    Defaults are CleverHans' ``BasicIterativeMethod`` (step 0.05, 10 steps).
    """
    _check_budget("eps", eps)
    _check_positive("step_size", step_size)
    _check_steps("steps", steps)
    images, labels = _check_attack_inputs(images, labels)
    x = images.detach()
    for _ in range(steps):
        x = x + step_size * _gradient_sign(model, x, labels, targeted)
        x = torch.min(torch.max(x, images - eps), images + eps).clamp(0, 1).detach()
    return x


def rand_fgsm(
    model: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RAND+FGSM: ``x' = x + alpha * sign(N(0, I))``, then FGSM from ``x'`` with ``eps - alpha``.

    The total L-inf perturbation is at most ``eps`` (paper: alpha 0.05, eps 0.3 on MNIST).
    """
    _check_budget("eps", eps)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= eps:
        raise ValueError(f"alpha must be in [0, eps={eps}], got {alpha!r}")
    images, labels = _check_attack_inputs(images, labels)
    noise = torch.randn(images.shape, generator=generator, device="cpu").to(images.device, images.dtype)
    start = (images + alpha * noise.sign()).clamp(0, 1)
    return (start + (eps - alpha) * _gradient_sign(model, start, labels, targeted)).clamp(0, 1).detach()


#: CW-L2's upper bound on the constant before any success (CleverHans' 1e10): "no bound yet".
_CW_NO_BOUND = 1e10


def cw_l2(
    model: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    targeted: bool = False,
    steps: int = 100,
    lr: float = 5e-3,
    initial_const: float = 1e-2,
    binary_search_steps: int = 5,
    confidence: float = 0.0,
) -> torch.Tensor:
    """Carlini-Wagner L2 attack (CleverHans' formulation and defaults, ``steps`` iterations).

    Minimises ``||x' - x||_2^2 + c * f(x')`` over ``x' = (tanh(w) + 1) / 2`` with Adam, where
    ``f`` is the margin ``max(Z_y - max_{i != y} Z_i, -confidence)`` (untargeted) or
    ``max(max_{i != t} Z_i - Z_t, -confidence)`` (targeted), for ``binary_search_steps``
    values of ``c`` per image (x10 until the first success, then bisection). Returns the
    successful example with the smallest L2 distortion, or the input where none succeeded.
    """
    _check_steps("steps", steps)
    _check_steps("binary_search_steps", binary_search_steps)
    _check_positive("lr", lr)
    _check_positive("initial_const", initial_const)
    if initial_const >= _CW_NO_BOUND:
        raise ValueError(f"initial_const must be below {_CW_NO_BOUND:g}, got {initial_const!r}")
    _check_budget("confidence", confidence)
    images, labels = _check_attack_inputs(images, labels)
    x0 = images.detach().clamp(0, 1)
    batch = x0.shape[0]
    device = x0.device
    w0 = torch.atanh((x0 * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    lower = torch.zeros(batch, device=device)
    upper = torch.full((batch,), _CW_NO_BOUND, device=device)
    const = torch.full((batch,), initial_const, device=device)
    best_l2 = torch.full((batch,), float("inf"), device=device)
    best = x0.clone()

    def succeeded(logits: torch.Tensor) -> torch.Tensor:
        if targeted:
            shifted = logits.clone()
            shifted[torch.arange(batch), labels] -= confidence
            return shifted.argmax(1) == labels
        shifted = logits.clone()
        shifted[torch.arange(batch), labels] += confidence
        return shifted.argmax(1) != labels

    for _ in range(binary_search_steps):
        w = w0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=lr)
        found = torch.zeros(batch, dtype=torch.bool, device=device)
        for _ in range(steps):
            with torch.enable_grad():
                adv = (torch.tanh(w) + 1) / 2
                logits = _logits(model, adv, labels)
                one_hot = F.one_hot(labels, logits.shape[1]).bool()
                real = logits[one_hot]
                other = logits.masked_fill(one_hot, float("-inf")).amax(1)
                margin = (other - real) if targeted else (real - other)
                l2 = (adv - x0).flatten(1).square().sum(1)
                loss = (l2 + const * (margin + confidence).clamp_min(0)).sum()
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            with torch.no_grad():
                ok = succeeded(logits.detach())
                improved = ok & (l2.detach() < best_l2)
                best_l2 = torch.where(improved, l2.detach(), best_l2)
                best[improved] = adv.detach()[improved]
                found |= ok
        with torch.no_grad():
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
    return best.detach()


def pgd(
    model: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = 0.3,
    step_size: float = 0.01,
    steps: int = 40,
    random_start: bool = True,
    eot_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L-inf projected gradient descent with an optional expectation over randomness.

    With ``eot_samples > 1`` every step averages the gradient of ``eot_samples`` forward
    passes of a randomised ``model`` (one batched call on the repeated input). Defaults are
    Madry et al.'s MNIST settings (eps 0.3, 40 steps of 0.01, random start).
    """
    _check_budget("eps", eps)
    _check_positive("step_size", step_size)
    _check_steps("steps", steps)
    _check_steps("eot_samples", eot_samples)
    images, labels = _check_attack_inputs(images, labels)
    x0 = images.detach()
    x = x0
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
        x = (x0 + (noise * 2 - 1) * eps).clamp(0, 1)
    repeated_labels = labels.repeat(eot_samples)
    for _ in range(steps):
        with torch.enable_grad():
            x_var = x.detach().requires_grad_(True)
            logits = _logits(model, x_var.repeat(eot_samples, 1, 1, 1), repeated_labels)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, repeated_labels), x_var)
        x = x + step_size * grad.sign()
        x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1).detach()
    return x


class _StraightThrough(torch.autograd.Function):
    """Forward: the purified images; backward: the gradient passes to the input unchanged."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return purified

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class BPDA(nn.Module):
    """BPDA model: ``classify(purify(x))`` forward, identity through ``purify`` backward.

    An ``nn.Module``, so attack libraries that expect one (torchattacks, ART) take it as the
    model; ``purify`` and ``classify`` are registered as submodules when they are modules.

    Args:
        purify: ``images -> purified images`` (e.g. ``lambda x: vae.project(x).purified``).
        classify: ``purified images -> logits`` (preprocess and classifier).
    """

    def __init__(self, purify: Callable[[torch.Tensor], torch.Tensor], classify: Model) -> None:
        super().__init__()
        self.purify = purify
        self.classify = classify

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the purified images; the gradient skips the purifier."""
        with torch.no_grad():
            purified = self.purify(images)
        return self.classify(_StraightThrough.apply(images, purified.to(images.dtype)))


def bpda(purify: Callable[[torch.Tensor], torch.Tensor], classify: Model) -> BPDA:
    """The :class:`BPDA` model of ``purify`` then ``classify`` (Athalye et al., 2018)."""
    return BPDA(purify, classify)
