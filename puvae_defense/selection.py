"""Choosing a training recipe on the validation split with a held-out classifier.

A recipe must never be chosen with the classifiers we report (A and B) or on the test
split, and not with the source classifier either: the PuVAE trains against it, so its
numbers flatter the purifier. The **selector** is a classifier trained only for choosing:
Carlini & Wagner's MNIST architecture (``"cw"``), seed 1, 2 epochs. A candidate is scored
by the selector's accuracy through the purifier on clean validation images and on
targeted-FGSM validation images computed on the selector (the paper's gray-box threat).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .attacks import fgsm, random_targets
from .classifier import PurifiedClassifier
from .classifiers import PaperClassifier, fit_classifier
from .data import ImageDataset
from .evaluation import defended_accuracy
from .model import PuVAE
from .training import evaluate_purifier, latent_spread

logger = logging.getLogger(__name__)

__all__ = ["SELECTOR_SETTINGS", "choose_recipe", "default_selector_path", "load_selector", "selection_metrics",
           "train_selector"]

#: How the held-out selection classifier is trained (``fit_classifier`` arguments).
SELECTOR_SETTINGS: Mapping[str, object] = {"arch": "cw", "epochs": 2, "seed": 1}


def default_selector_path(dataset: str) -> Path:
    """Where the training scripts keep a data set's selector: ``runs/selection/heldout-cw``,
    with ``-<dataset>`` for data sets other than MNIST."""
    return Path("runs/selection/heldout-cw" + ("" if dataset == "mnist" else f"-{dataset}"))


def train_selector(train: ImageDataset, *, device: torch.device | str | None = None) -> PaperClassifier:
    """The held-out selection classifier, trained on ``train`` with :data:`SELECTOR_SETTINGS`."""
    return fit_classifier(train, **SELECTOR_SETTINGS, device=device, progress=False)  # type: ignore[arg-type]


def load_selector(path: str | os.PathLike[str], train: ImageDataset, *,
                  device: torch.device | str | None = None) -> PaperClassifier:
    """The selector saved (fp16) in ``path``, trained there first from ``train`` if absent."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        logger.info("training the held-out selection classifier into %s", path)
        train_selector(train, device=device).save_pretrained(path, dtype=torch.float16)
    return PaperClassifier.from_pretrained(path, device=device)


def selection_metrics(vae: PuVAE, selector: nn.Module, data: ImageDataset, *, eps: float = 0.3, seed: int = 1) -> dict[str, float]:
    """How a trained PuVAE serves the selector on validation images.

    Returns:
        ``clean`` and ``fgsm``: the selector's accuracy (%) through the purifier on clean
        images and on targeted-FGSM images (``eps``, random wrong targets) computed on the
        selector; ``projection``: the purifier's own choice is right (%); ``kl``: nats per
        image; ``spread``: within-class spread of the mu-decodings over that of the inputs.
    """
    defended = PurifiedClassifier(selector, vae)
    classes = vae.num_classes
    attack = lambda x, y, g: fgsm(selector, x, random_targets(y, classes, g), eps=eps, targeted=True)  # noqa: E731
    purifier = evaluate_purifier(vae, selector, data, seed=seed)
    spread = latent_spread(vae, data)
    return {"clean": defended_accuracy(defended, data, seed=seed),
            "fgsm": defended_accuracy(defended, data, attack=attack, seed=seed),
            "projection": purifier["val_projection_acc"], "kl": purifier["val_kl"],
            "spread": spread["reconstruction"] / spread["input"]}


def choose_recipe(scores: Mapping[str, Mapping[str, float]], *, clean_target: float = 98.0) -> str:
    """The candidate to ship: the most robust (``fgsm``) among those whose ``clean`` accuracy
    reaches ``clean_target``; if none does, the most accurate on clean images."""
    if not scores:
        raise ValueError("no candidates to choose from")
    good = [name for name, s in scores.items() if s["clean"] >= clean_target]
    if good:
        return max(good, key=lambda name: scores[name]["fgsm"])
    return max(scores, key=lambda name: scores[name]["clean"])
