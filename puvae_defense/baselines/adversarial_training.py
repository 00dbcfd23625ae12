"""Adversarial training (Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015), the first baseline of the PuVAE paper's Table 2.

The target classifier is trained on ``alpha * CE(x, y) + (1 - alpha) * CE(x_adv, y)`` where
``x_adv`` is FGSM computed on the classifier being trained, at every step, with the paper's
budget (eps 0.3 on MNIST). ``alpha = 0.5`` is Goodfellow et al.'s mix: half of the signal
keeps clean accuracy, half teaches the FGSM direction. The defence is the classifier itself:
no purifier runs at test time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..attacks import fgsm
from ..classifiers import Arch, PaperClassifier, fit_classifier

__all__ = ["fgsm_objective", "fit_adversarial_classifier"]


def fgsm_objective(eps: float = 0.3, clean_weight: float = 0.5) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``clean_weight * CE(x) + (1 - clean_weight) * CE(FGSM_eps(x))`` for :func:`fit_classifier`.

    The FGSM images are made on the model in its training mode, from the current weights,
    and not differentiated through (they are inputs, as in Goodfellow et al.).
    """
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps!r}")
    if not 0 <= clean_weight <= 1:
        raise ValueError(f"clean_weight must be in [0, 1], got {clean_weight!r}")

    def objective(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adversarial = fgsm(model, images, labels, eps=eps)
        logits = model(torch.cat([images, adversarial]))
        clean, attacked = logits.split(len(images))
        return clean_weight * F.cross_entropy(clean, labels) + (1 - clean_weight) * F.cross_entropy(attacked, labels)

    return objective


def fit_adversarial_classifier(
    dataset: Dataset[Any], arch: Arch = "A", *, eps: float = 0.3, clean_weight: float = 0.5, **options: Any
) -> PaperClassifier:
    """One of the paper's classifiers trained adversarially (``options`` go to :func:`fit_classifier`)."""
    return fit_classifier(dataset, arch, objective=fgsm_objective(eps, clean_weight), **options)
