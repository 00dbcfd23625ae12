"""Figure of the purification (like Figures 3-4 of the paper); needs matplotlib (``eval`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import fgsm, random_targets
from .data import ImageDataset
from .kernels import rmse
from .model import PuVAE

__all__ = ["certified_figure", "projection_figure"]


@torch.no_grad()
def projection_figure(
    vae: PuVAE,
    classifier: nn.Module,
    dataset: ImageDataset,
    path: Path,
    *,
    count: int = 4,
    eps: float = 0.3,
    sigma_eps: float = 0.1,
    seed: int = 0,
) -> Path:
    """Plot clean image, targeted-FGSM image, the projections onto every class with their
    RMSE to the attacked input, and the chosen candidate, for the first ``count`` images.

    Returns:
        ``path`` (a PNG).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = vae.encoder_in.weight.device
    images = dataset.images[:count].to(device)
    labels = dataset.labels[:count].to(device)
    generator = torch.Generator().manual_seed(seed)
    targets = random_targets(labels, vae.num_classes, generator)
    adversarial = fgsm(classifier, images, targets, eps=eps, targeted=True)
    candidates = vae.candidates(adversarial, sigma_eps, generator)
    distances = rmse(adversarial.flatten(1), candidates.flatten(2))
    chosen = distances.argmin(1)
    before = classifier(adversarial).argmax(1)
    after = classifier(candidates[torch.arange(count), chosen]).argmax(1)
    columns = vae.num_classes + 3
    fig, axes = plt.subplots(count, columns, figsize=(1.1 * columns, 1.35 * count + 0.4))
    axes = axes.reshape(count, columns)

    def show(ax, image: torch.Tensor, title: str, color: str = "black") -> None:
        picture = image.detach().float().cpu().permute(1, 2, 0).squeeze(-1)
        ax.imshow(picture.numpy(), cmap="gray" if picture.dim() == 2 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7, color=color)
        ax.set_xticks([])
        ax.set_yticks([])

    for row in range(count):
        show(axes[row, 0], images[row], f"clean: {int(labels[row])}")
        show(axes[row, 1], adversarial[row], f"FGSM->{int(targets[row])}\npred {int(before[row])}", "red")
        for c in range(vae.num_classes):
            winner = c == int(chosen[row])
            show(axes[row, 2 + c], candidates[row, c], f"y={c}\n{float(distances[row, c]):.3f}", "blue" if winner else "black")
        show(axes[row, -1], candidates[row, int(chosen[row])], f"purified\npred {int(after[row])}",
             "green" if int(after[row]) == int(labels[row]) else "red")
    fig.suptitle(f"PuVAE projections of targeted-FGSM images (eps={eps}); numbers: RMSE to the attacked input", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def certified_figure(
    rows: Mapping[str, Mapping[str, Any]] | Sequence[tuple[str, Mapping[str, Any]]],
    path: Path,
    *,
    title: str = "",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Certified accuracy against L2 radius, one curve per labelled certification report
    (:func:`puvae_defense.certification.certify_dataset`), as in Cohen et al.'s figures.

    Each curve is the share of images certified with the right label at radius ``r`` or more,
    drawn up to the largest radius the report's ``n`` can certify. Reports of different noise
    levels go to separate panels, one per sigma, side by side, so a label may repeat across them.

    Args:
        rows: label -> report, or ``(label, report)`` pairs.
        path: where to write the PNG.
        title: the figure's title.
        styles: label -> matplotlib line options (``color``, ``linestyle``...), the same in every panel.

    Returns:
        ``path`` (a PNG).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(rows.items()) if isinstance(rows, Mapping) else list(rows)
    sigmas = sorted({float(report["meta"]["settings"]["sigma"]) for _, report in pairs})
    panels = max(len(sigmas), 1)
    fig, axes = plt.subplots(1, panels, figsize=(4.0 * panels + 0.6, 4.2), sharey=True, squeeze=False)
    for label, report in pairs:
        ax = axes[0][sigmas.index(float(report["meta"]["settings"]["sigma"]))]
        images = report["images"]
        right = torch.tensor([c == y for c, y in zip(images["certified"], images["labels"], strict=True)])
        radii = torch.tensor(images["radii"], dtype=torch.float64)
        grid = torch.linspace(0, report["meta"]["largest_radius"], 200, dtype=torch.float64)
        accuracy = [100.0 * float((right & (radii >= r)).double().mean()) for r in grid]
        ax.plot(grid.numpy(), accuracy, label=label, **dict((styles or {}).get(label, {})))
    for ax, sigma in zip(axes[0], sigmas, strict=False):
        ax.set_title(f"sigma = {sigma:g}", fontsize=9)
        ax.set_xlabel("L2 radius")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    axes[0][0].set_ylabel("certified accuracy (%)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
