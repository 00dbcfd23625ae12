"""Whose perturbations does a PuVAE undo? Targeted FGSM computed on each of several classifiers,
then purified: the purifier's projection accuracy for each.

A PuVAE trained on the source classifier's FGSM images may learn to undo that model's gradient
directions rather than perturbations in general. On the first ``--n`` validation images, for
each classifier named in ``--models`` (default: the held-out selector alone), this computes
targeted FGSM (eps 0.3, random wrong targets, the same targets for every model) on that
classifier and reports its own accuracy on the attacked images (undefended) and how often the
purifier projects them onto the true class (``projection_right``). Validation split only.

Usage (docs/training.md, "Whose perturbations the purifier undoes"):
    python experiments/transfer_fgsm.py hub/puvae-mnist --models selectors/heldout-cw mnist-source \
        runs/attackers/mnist-source-s1 runs/attackers/mnist-C-s1
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from puvae_defense import PuVAE
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.selection import default_selector_path

CHUNK = 500


def transfer(vae: PuVAE, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
             eps: float = 0.3) -> dict[str, float]:
    """Accuracy (%) of ``model`` on its own targeted-FGSM images and of the purifier's projection on them."""
    undefended = projected = 0
    for start in range(0, len(images), CHUNK):
        x, y, t = (tensor[start:start + CHUNK] for tensor in (images, labels, targets))
        attacked = fgsm(model, x, t, eps=eps, targeted=True)
        with torch.no_grad():
            undefended += int((model(attacked).argmax(1) == y).sum())
            projected += int((vae.project(attacked, 0.1, torch.Generator().manual_seed(0)).labels == y).sum())
    return {"undefended": 100 * undefended / len(images), "projection_right": 100 * projected / len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="PuVAE folder or registered name")
    parser.add_argument("--models", nargs="+", default=None,
                        help="classifiers (folders or registered names) to attack; default the held-out selector")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    vae = PuVAE.from_pretrained(args.model, dtype=torch.float32)
    val = load_dataset(args.dataset, "val").subset(0, args.n)
    targets = random_targets(val.labels, vae.num_classes, torch.Generator().manual_seed(1))
    names = args.models or [str(default_selector_path(args.dataset))]
    report = {name: transfer(vae, PaperClassifier.from_pretrained(name, dtype=torch.float32), val.images, val.labels,
                             targets) for name in names}
    print(json.dumps({"model": args.model, "dataset": args.dataset, "n": args.n, "fgsm_on": report}, indent=1))


if __name__ == "__main__":
    main()
