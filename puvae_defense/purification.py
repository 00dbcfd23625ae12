"""Purify a whole data set in batches and store the result (``puvae-defense purify``).

The output is one safetensors file (no pickle) with the purified images, the projection's
labels and distances, and the data set's own labels, so a purified copy of a data set can
be made once and reused (training a classifier on purified images, offline evaluation).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from .model import PuVAE, check_sigma_eps

__all__ = ["PurifiedData", "purify_dataset"]


@dataclass(frozen=True)
class PurifiedData:
    """A purified data set.

    Attributes:
        images: ``(N, C, H, W)`` float32 purified images.
        projection_labels: ``(N,)`` the class each image was projected onto.
        distances: ``(N, num_classes)`` float32 RMSE to every class's projection.
        labels: ``(N,)`` the data set's labels.
        seconds: wall time of the purification (data loading included).
    """

    images: torch.Tensor
    projection_labels: torch.Tensor
    distances: torch.Tensor
    labels: torch.Tensor
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Throughput of the run."""
        return len(self.labels) / self.seconds if self.seconds > 0 else float("inf")

    def save(self, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
        """Write the tensors to a safetensors file (written to a temporary name, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {"images": self.images, "projection_labels": self.projection_labels,
                   "distances": self.distances, "labels": self.labels}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        return path


def purify_dataset(
    purifier: PuVAE,
    dataset: Dataset[Any],
    *,
    batch_size: int = 500,
    sigma_eps: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> PurifiedData:
    """Project every image of a labelled data set (see :meth:`PuVAE.project`).

    Args:
        purifier: the PuVAE; runs on its own device and dtype, without gradients.
        dataset: map-style data set of ``(image (C, H, W) in [0, 1], int label)``.
        batch_size: images per projection call.
        sigma_eps: projection noise (paper 0.1; 0 is deterministic).
        seed: seeds the noise, so the same call gives the same output.
        progress: show a tqdm bar with images/s.

    Returns:
        :class:`PurifiedData` (tensors on the CPU).
    """
    from tqdm.auto import tqdm

    if not isinstance(purifier, PuVAE):
        raise TypeError(f"purifier must be a PuVAE, got {type(purifier).__name__}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_sigma_eps(sigma_eps)  # before any work
    device = purifier.encoder_in.weight.device
    generator = torch.Generator().manual_seed(seed)
    images, chosen, distances, labels = [], [], [], []
    started = time.perf_counter()
    with torch.no_grad(), tqdm(total=len(dataset), unit="img", disable=not progress) as bar:  # type: ignore[arg-type]
        for batch, targets in DataLoader(dataset, batch_size=batch_size):
            out = purifier.project(batch.to(device), sigma_eps, generator)
            images.append(out.purified.float().cpu())
            chosen.append(out.labels.cpu())
            distances.append(out.distances.cpu())
            labels.append(torch.as_tensor(targets).long())
            bar.update(len(batch))
    if not labels:
        raise ValueError("dataset is empty")
    return PurifiedData(torch.cat(images), torch.cat(chosen), torch.cat(distances), torch.cat(labels),
                        time.perf_counter() - started)
