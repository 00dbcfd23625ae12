"""Where a PuVAE goes wrong under targeted FGSM: the attacker's target, or another class?

On the first ``--n`` validation images, computes targeted FGSM (eps 0.3, random wrong
targets) on the held-out selection classifier, purifies clean and attacked images, and
prints for each: how often the purifier's choice is the true class and how often it is the
attacker's target, and the mean RMSE to the true class's projection and to the nearest
wrong one. Validation split only.

Usage: python scripts/diagnose_fgsm.py runs/probes/robust
"""

from __future__ import annotations

import argparse
import json

import torch

from puvae_defense import PuVAE
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="PuVAE folder or registered name")
    parser.add_argument("--selector", default="runs/selection/heldout-cw")
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    vae = PuVAE.from_pretrained(args.model)
    selector = PaperClassifier.from_pretrained(args.selector)
    val = load_dataset("mnist", "val").subset(0, args.n)
    x, y = val.images, val.labels
    targets = random_targets(y, vae.num_classes, torch.Generator().manual_seed(1))
    attacked = fgsm(selector, x, targets, eps=0.3, targeted=True)
    report = {}
    with torch.no_grad():
        for name, images in (("clean", x), ("fgsm", attacked)):
            projection = vae.project(images, 0.1, torch.Generator().manual_seed(0))
            distances = projection.distances
            wrong = distances.scatter(1, y[:, None], float("inf")).min(1).values
            report[name] = {"right": 100 * float((projection.labels == y).float().mean()),
                            "attacker_target": 100 * float((projection.labels == targets).float().mean()),
                            "rmse_true": float(distances.gather(1, y[:, None]).mean()),
                            "rmse_nearest_wrong": float(wrong.mean())}
    print(json.dumps({"model": args.model, "n": args.n, **report}))


if __name__ == "__main__":
    main()
