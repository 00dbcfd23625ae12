"""Does the purifier fit your classifier and your data? Measure it, and adapt the classifier.

:func:`diagnose` measures, on labelled images you provide, your classifier's accuracy alone and
behind the purifier, the purifier's own class choice (PuVAE's projection) and how often your
classifier disagrees with it, and says what to do next. It warns when the purifier costs more
than ``tolerance`` points, so a drop is never silent.

:func:`adapt` fine-tunes a copy of your classifier on purified images (mixed with clean ones):
the fix when the purifier finds the right class but your classifier misreads its decodings.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .baselines.base import ImagePurifier
from .model import PuVAE, check_sigma_eps

__all__ = ["Diagnosis", "adapt", "diagnose"]

Verdict = Literal["ok", "adapt the classifier", "fine-tune the purifier"]


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` measured (accuracies in percent).

    Attributes:
        images: how many labelled images were used.
        clean_accuracy: the classifier alone.
        purified_accuracy: the classifier behind the purifier.
        projection_accuracy: PuVAE's own class choice (the nearest projection) is right; ``None``
            for a purifier that does not classify.
        disagreement: share of images where the classifier's class on the purified image is not
            the projection's class (``None`` likewise).
        tolerance: the largest drop (points) called acceptable.
    """

    images: int
    clean_accuracy: float
    purified_accuracy: float
    projection_accuracy: float | None
    disagreement: float | None
    tolerance: float

    @property
    def drop(self) -> float:
        """Points of accuracy the purifier costs (negative: it helps)."""
        return self.clean_accuracy - self.purified_accuracy

    @property
    def verdict(self) -> Verdict:
        """``"ok"``; ``"adapt the classifier"`` when the purifier finds the class but the classifier
        misreads its decodings; ``"fine-tune the purifier"`` when the purifier itself is wrong."""
        if self.drop <= self.tolerance:
            return "ok"
        if self.projection_accuracy is not None and self.projection_accuracy >= self.clean_accuracy - self.tolerance:
            return "adapt the classifier"
        return "fine-tune the purifier"

    @property
    def advice(self) -> str:
        """The next step, in a sentence."""
        verdict = self.verdict
        if verdict == "ok":
            return f"the purifier costs {self.drop:.2f} points (at most {self.tolerance:g} asked): use it as it is."
        if verdict == "adapt the classifier":
            return (f"the purifier costs {self.drop:.2f} points, but its own class choice is right on "
                    f"{self.projection_accuracy:.2f}% of the images: your classifier misreads its decodings. Fine-tune "
                    "the classifier on purified images: puvae_defense.diagnosis.adapt(classifier, purifier, data) or "
                    "`puvae-defense adapt`.")
        right = f"{self.projection_accuracy:.2f}%" if self.projection_accuracy is not None else "an unknown share"
        return (f"the purifier costs {self.drop:.2f} points and its own class choice is right on {right} of the "
                "images: it does not fit these images. Fine-tune it on your data: fit(data, source_classifier, "
                "init=purifier) or `puvae-defense train --init ...`.")

    def __str__(self) -> str:
        rows = [("images", f"{self.images:,}"), ("classifier alone", f"{self.clean_accuracy:.2f}%"),
                ("behind the purifier", f"{self.purified_accuracy:.2f}%")]
        if self.projection_accuracy is not None:
            rows += [("purifier's own class right", f"{self.projection_accuracy:.2f}%"),
                     ("classifier disagrees with it", f"{self.disagreement:.2f}%")]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join([*lines, f"verdict: {self.verdict}: {self.advice}"])


def _batches(dataset: Dataset[Any], limit: int | None, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    size = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if size == 0:
        raise ValueError("the data set is empty")
    indices = list(range(size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size)
    batches = []
    for images, labels in loader:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"data set images must be torch tensors, got {type(images).__module__}.{type(images).__name__}")
        batches.append((images, torch.as_tensor(labels).long()))
    return batches


def _purify(purifier: PuVAE | ImagePurifier, images: torch.Tensor, sigma_eps: float,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(purifier, PuVAE):
        out = purifier.project(images, sigma_eps, generator)
        return out.purified, out.labels
    return purifier.purify(images, generator), None


def _resolve(purifier: PuVAE | ImagePurifier | str) -> PuVAE | ImagePurifier:
    if isinstance(purifier, str):
        from .baselines import load_purifier

        purifier = load_purifier(purifier)
    if not isinstance(purifier, (PuVAE, ImagePurifier)):
        raise TypeError(f"purifier must be a PuVAE, a baseline ImagePurifier or a registered name / folder, "
                        f"got {type(purifier).__name__}")
    return purifier


@torch.no_grad()
def diagnose(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    purifier: PuVAE | ImagePurifier | str,
    dataset: Dataset[Any],
    *,
    limit: int | None = 1000,
    batch_size: int = 250,
    sigma_eps: float = 0.1,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tolerance: float = 1.0,
    seed: int = 0,
    warn: bool = True,
) -> Diagnosis:
    """Measure whether a purifier fits a classifier on labelled images, and say what to do next.

    Args:
        classifier: your network (logits), in eval mode; inputs in [0, 1] after ``preprocess``.
        purifier: a PuVAE, a baseline purifier, or a registered name / folder.
        dataset: ``(image (C, H, W) in [0, 1], label)`` pairs, e.g. your validation split.
        limit: use the first ``limit`` images (None: all).
        preprocess: applied before the classifier, as in :class:`~puvae_defense.PurifiedClassifier`.
        tolerance: the largest accuracy drop (points) that is acceptable.
        warn: emit a ``UserWarning`` when the drop exceeds ``tolerance``.

    Returns:
        :class:`Diagnosis` (print it for a report with the verdict and the next step).
    """
    if not callable(classifier):
        raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")
    if not isinstance(tolerance, (int, float)) or not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number of points >= 0, got {tolerance!r}")
    check_sigma_eps(sigma_eps)
    purifier = _resolve(purifier)
    device = next((t.device for t in [*purifier.parameters(), *purifier.buffers()]), torch.device("cpu"))
    classify = (lambda x: classifier(preprocess(x))) if preprocess is not None else classifier
    generator = torch.Generator().manual_seed(seed)
    counts = {"clean": 0, "purified": 0, "projection": 0, "disagree": 0, "n": 0}
    for images, labels in _batches(dataset, limit, batch_size):
        images, labels = images.to(device), labels.to(device)
        purified, projected = _purify(purifier, images, sigma_eps, generator)
        predicted = classify(purified).argmax(1)
        counts["clean"] += int((classify(images).argmax(1) == labels).sum())
        counts["purified"] += int((predicted == labels).sum())
        if projected is not None:
            counts["projection"] += int((projected == labels).sum())
            counts["disagree"] += int((predicted != projected).sum())
        counts["n"] += len(labels)
    n = counts["n"]
    result = Diagnosis(n, 100 * counts["clean"] / n, 100 * counts["purified"] / n,
                       100 * counts["projection"] / n if isinstance(purifier, PuVAE) else None,
                       100 * counts["disagree"] / n if isinstance(purifier, PuVAE) else None, float(tolerance))
    if warn and result.verdict != "ok":
        warnings.warn(f"the purifier costs your classifier {result.drop:.2f} points of accuracy on these {n} images "
                      f"({result.clean_accuracy:.2f}% -> {result.purified_accuracy:.2f}%): {result.advice}",
                      UserWarning, stacklevel=2)
    return result


def adapt(
    classifier: nn.Module,
    purifier: PuVAE | ImagePurifier | str,
    dataset: Dataset[Any],
    *,
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 128,
    clean_fraction: float = 0.5,
    sigma_eps: float = 0.1,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """A copy of ``classifier`` fine-tuned to read the purifier's outputs (the caller's model is untouched).

    Every image of ``dataset`` is purified once (with ``sigma_eps``); each step then trains on a
    batch of purified images whose ``clean_fraction`` share is replaced by the clean originals, so
    the classifier keeps reading clean images too. Adam at ``lr``, cross-entropy, ``epochs`` passes.

    Args:
        classifier: any ``nn.Module`` returning logits.
        purifier: a PuVAE, a baseline purifier, or a registered name / folder.
        dataset: labelled images ``(C, H, W)`` in [0, 1] (e.g. your training split).

    Returns:
        The adapted copy, in eval mode, on the classifier's device.
    """
    from tqdm.auto import tqdm

    if not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be an nn.Module (its copy is trained), got {type(classifier).__name__}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    if not isinstance(clean_fraction, (int, float)) or not 0 <= clean_fraction <= 1:
        raise ValueError(f"clean_fraction must be in [0, 1], got {clean_fraction!r}")
    check_sigma_eps(sigma_eps)
    purifier = _resolve(purifier)
    device = next((t.device for t in [*purifier.parameters(), *purifier.buffers()]), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    clean, purified, labels = [], [], []
    with torch.no_grad():
        for images, targets in _batches(dataset, None, 250):
            clean.append(images)
            purified.append(_purify(purifier, images.to(device), sigma_eps, generator)[0].float().cpu())
            labels.append(targets)
    data = TensorDataset(torch.cat(clean), torch.cat(purified), torch.cat(labels))
    model = copy.deepcopy(classifier).train()
    model_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=order)
        for x_clean, x_purified, y in tqdm(loader, desc=f"adapt {epoch + 1}/{epochs}", disable=not progress, leave=False):
            keep_clean = torch.rand(len(y), generator=order) < clean_fraction
            x = torch.where(keep_clean[:, None, None, None], x_clean, x_purified).to(model_device)
            logits = model(preprocess(x) if preprocess is not None else x)
            loss = F.cross_entropy(logits, y.to(model_device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()
