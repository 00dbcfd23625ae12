"""Where a PuVAE goes wrong: which classes it confuses on clean images, and under targeted
FGSM whether it picks the attacker's target or another class.

On the first ``--n`` validation images, computes targeted FGSM (eps 0.3, random wrong
targets) on the held-out selection classifier, purifies clean and attacked images, and
prints for each: how often the purifier's choice is the true class and how often it is the
attacker's target, the mean RMSE to the true class's projection and to the nearest wrong
one, the projection accuracy of every class and the most frequent confusions (true ->
chosen). With the selector it also splits the accuracy lost through the purifier in two: the
selector on the chosen projection (what the defense gives), on the true class's projection
(what a perfect choice among the same candidates would give) and with a consistency rule
(the nearest of the ``--top`` closest candidates that the selector reads as its own class), and
with a likelihood rule (the class of the smallest negative ELBO, Bernoulli cross-entropy of the
mu-decoding plus KL, read on that mu-decoding).
Validation split only.

Usage:
    python experiments/diagnose_fgsm.py runs/probes/robust
    python experiments/diagnose_fgsm.py hub/puvae-fashion-mnist --dataset fashion-mnist --n 2000
"""

from __future__ import annotations

import argparse
import json

import torch

from puvae_defense import PuVAE
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.losses import gaussian_kl, reconstruction_bce
from puvae_defense.selection import default_selector_path

CONFUSIONS = 5
CHUNK = 250


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


def elbo_choice(vae: PuVAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The class of the smallest negative ELBO (mu-decoding) for each image, and that decoding."""
    scores, decodings = [], []
    for c in range(vae.num_classes):
        labels = torch.full((len(images),), c)
        mu, sigma = vae.encode(images, labels)
        logits = vae.decode_logits(mu, labels)
        scores.append(reconstruction_bce(logits, images, "sum") + gaussian_kl(mu, sigma, "sum"))
        decodings.append(torch.sigmoid(logits))
    chosen = torch.stack(scores, 1).argmin(1)
    return chosen, torch.stack(decodings, 1)[torch.arange(len(images)), chosen]


def selector_reading(vae: PuVAE, selector: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     top: int) -> dict[str, float]:
    """The selector's accuracy (%) on the candidate each rule picks (see the module docstring)."""
    generator = torch.Generator().manual_seed(0)
    right = {"chosen": 0, "true_class": 0, f"consistent_top{top}": 0, "elbo": 0}
    for start in range(0, len(images), CHUNK):
        x, y = images[start:start + CHUNK], labels[start:start + CHUNK]
        candidates = vae.candidates(x, 0.1, generator)
        b, c = candidates.shape[:2]
        rmse = (candidates.reshape(b, c, -1) - x.reshape(b, 1, -1)).pow(2).mean(-1).sqrt()
        read = selector(candidates.reshape(b * c, *x.shape[1:])).argmax(-1).view(b, c)  # label of each candidate
        order = rmse.argsort(1)
        consistent = read.gather(1, order[:, :top]) == order[:, :top]
        first = torch.where(consistent.any(1), consistent.float().argmax(1), 0)  # else the nearest
        rows = torch.arange(b)
        right["chosen"] += int((read[rows, order[:, 0]] == y).sum())
        right["true_class"] += int((read[rows, y] == y).sum())
        right[f"consistent_top{top}"] += int((read[rows, order[rows, first]] == y).sum())
        right["elbo"] += int((selector(elbo_choice(vae, x)[1]).argmax(-1) == y).sum())
    return {rule: 100 * count / len(images) for rule, count in right.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="PuVAE folder or registered name")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--selector", default=None,
                        help="held-out selection classifier (default selectors/heldout-cw, with -<dataset> "
                             "for data sets other than MNIST)")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--top", type=int, default=3, help="candidates the consistency rule considers")
    args = parser.parse_args()
    vae = PuVAE.from_pretrained(args.model)
    if not 1 <= args.top <= vae.num_classes:
        parser.error(f"--top must be between 1 and {vae.num_classes}, got {args.top}")
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
            report[name]["selector_reading"] = selector_reading(vae, selector, images, y, args.top)
    with torch.no_grad():
        report["selector_undefended"] = {"clean": 100 * float((selector(x).argmax(1) == y).float().mean()),
                                         "fgsm": 100 * float((selector(attacked).argmax(1) == y).float().mean())}
    print(json.dumps({"model": args.model, "dataset": args.dataset, "n": args.n, **report}, indent=1))


if __name__ == "__main__":
    main()
