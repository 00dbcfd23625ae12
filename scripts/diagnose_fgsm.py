"""Where a PuVAE goes wrong: which classes it confuses on clean images, and under targeted
FGSM whether it picks the attacker's target or another class.

On the first ``--n`` validation images, computes targeted FGSM (eps 0.3, random wrong
targets) on the held-out selection classifier, purifies clean and attacked images, and
prints for each: how often the purifier's choice is the true class and how often it is the
attacker's target, the mean RMSE to the true class's projection and to the nearest wrong
one, the projection accuracy of every class and the most frequent confusions (true ->
chosen). Validation split only.

Usage:
    python scripts/diagnose_fgsm.py runs/probes/robust
    python scripts/diagnose_fgsm.py hub/puvae-fashion-mnist --dataset fashion-mnist --n 2000
"""

from __future__ import annotations

import argparse
import json

import torch

from puvae_defense import PuVAE
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.selection import default_selector_path

CONFUSIONS = 5


def choices(labels: torch.Tensor, chosen: torch.Tensor, targets: torch.Tensor, distances: torch.Tensor,
            classes: tuple[str, ...]) -> dict:
    """What the purifier chose against the truth: rates, margins, per-class accuracy, top confusions."""
    wrong = distances.scatter(1, labels[:, None], float("inf")).min(1).values
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((labels, chosen), torch.ones_like(labels), accumulate=True)
    per_class = 100 * confusion.diag() / confusion.sum(1).clamp_min(1)
    off = confusion - torch.diag(confusion.diag())
    top = off.flatten().topk(CONFUSIONS)
    return {"right": 100 * float((chosen == labels).float().mean()),
            "attacker_target": 100 * float((chosen == targets).float().mean()),
            "rmse_true": float(distances.gather(1, labels[:, None]).mean()),
            "rmse_nearest_wrong": float(wrong.mean()),
            "per_class_right": {classes[i]: round(float(per_class[i]), 2) for i in range(len(classes))},
            "top_confusions": [{"true": classes[int(i) // len(classes)], "chosen": classes[int(i) % len(classes)],
                                "count": int(count)} for count, i in zip(top.values, top.indices) if count > 0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="PuVAE folder or registered name")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--selector", default=None,
                        help="held-out selection classifier (default selectors/heldout-cw, with -<dataset> "
                             "for data sets other than MNIST)")
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    vae = PuVAE.from_pretrained(args.model)
    selector = PaperClassifier.from_pretrained(args.selector or default_selector_path(args.dataset))
    val = load_dataset(args.dataset, "val").subset(0, args.n)
    x, y = val.images, val.labels
    targets = random_targets(y, vae.num_classes, torch.Generator().manual_seed(1))
    attacked = fgsm(selector, x, targets, eps=0.3, targeted=True)
    report = {}
    with torch.no_grad():
        for name, images in (("clean", x), ("fgsm", attacked)):
            projection = vae.project(images, 0.1, torch.Generator().manual_seed(0))
            report[name] = choices(y, projection.labels, targets, projection.distances, val.classes)
    print(json.dumps({"model": args.model, "dataset": args.dataset, "n": args.n, **report}, indent=1))


if __name__ == "__main__":
    main()
