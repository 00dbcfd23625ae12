"""AutoAttack (RobustBench's standard suite, torchattacks' implementation) and Square alone on PuVAE.

The attacked model is the whole deterministic ``PurifiedClassifier`` (sigma_eps 0, so the
defence is not randomised and the gradient attacks need no EOT): APGD-CE, APGD-T, FAB-T with
100 iterations each as in RobustBench (torchattacks' own ``AutoAttack`` uses its default of
10), then Square with 5,000 queries, each attack on the images still classified correctly.
``--gradients bpda`` gives the gradient attacks BPDA gradients instead of the full ones.
Square uses only the model's outputs (gradient-free), so it is also run on its own.

    python scripts/autoattack.py --images 200 [--classifier A] [--gradients full|bpda]

Writes docs/results/autoattack_mnist_<classifier>.json with robust accuracies and Wilson 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torchattacks

from puvae_defense import PurifiedClassifier, PuVAE
from puvae_defense.attacks import BPDA
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.serialization import weights_fingerprint


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, in percent."""
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (100 * (centre - half), 100 * (centre + half))


def suite(gradient_model: torch.nn.Module, eps: float, steps: int, queries: int, seed: int) -> list:
    """RobustBench's standard Linf suite, in its order."""
    return [
        ("APGD-CE", torchattacks.APGD(gradient_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed)),
        ("APGD-T", torchattacks.APGDT(gradient_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, n_classes=10, seed=seed)),
        ("FAB-T", torchattacks.FAB(gradient_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, multi_targeted=True,
                                   n_classes=10, seed=seed)),
    ], ("Square", queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--classifier", default="A", choices=["A", "B"])
    parser.add_argument("--gradients", default="full", choices=["full", "bpda"])
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=100, help="iterations of APGD-CE, APGD-T and FAB-T")
    parser.add_argument("--queries", type=int, default=5000, help="Square's query budget")
    parser.add_argument("--square-images", type=int, default=None,
                        help="images for Square on its own (default --images; each can cost all the queries)")
    parser.add_argument("--square-only", action="store_true",
                        help="run only Square on its own (gradient-free), not the AutoAttack suite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    test = load_dataset("mnist", "test")
    images, labels = test.images[:args.images], test.labels[:args.images]
    net = PaperClassifier.from_pretrained(f"mnist-classifier-{args.classifier.lower()}")
    defended = PurifiedClassifier(net, PuVAE.from_pretrained("puvae-mnist"), sigma_eps=0.0).eval()
    gradient_model = defended if args.gradients == "full" else BPDA(lambda x: defended.purify(x).purified,
                                                                      defended.classify_purified).eval()

    def correct(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return defended(x).argmax(1) == labels

    started = time.perf_counter()
    robust = correct(images)
    results: dict[str, object] = {"clean": int(robust.sum())}
    adversarial = images.clone()
    gradient_attacks, (_, queries) = suite(gradient_model, args.eps, args.steps, args.queries, args.seed)
    square = torchattacks.Square(defended, norm="Linf", eps=args.eps, n_queries=queries, n_restarts=1, seed=args.seed)
    for name, attack in [] if args.square_only else [*gradient_attacks, ("Square", square)]:
        todo = robust.nonzero().flatten()
        if len(todo):
            adversarial[todo] = attack(images[todo], labels[todo])
            robust = correct(adversarial)
        results[f"after {name}"] = int(robust.sum())
    m = args.square_images or len(labels)
    with torch.no_grad():
        square_alone = defended(square(images[:m], labels[:m])).argmax(1) == labels[:m]
    n = len(labels)
    report = {
        "command": "python " + " ".join(sys.argv),
        "classifier": args.classifier, "images": n, "eps": args.eps, "gradients": args.gradients,
        "sigma_eps": 0.0, "steps": args.steps, "square_queries": queries, "torchattacks": torchattacks.__version__,
        "robust_accuracy_percent": {k: 100 * v / n for k, v in results.items()},
        "autoattack_percent": None if args.square_only else 100 * int(robust.sum()) / n,
        "autoattack_wilson95": None if args.square_only else wilson(int(robust.sum()), n),
        "square_alone_images": m, "square_alone_percent": 100 * int(square_alone.sum()) / m,
        "square_alone_wilson95": wilson(int(square_alone.sum()), m),
        "max_linf": float((adversarial - images).abs().max()),
        "wall_seconds": time.perf_counter() - started,
        "purifier_fingerprint": weights_fingerprint(defended.purifier),
    }
    out = args.out or Path(f"docs/results/autoattack_mnist_{args.classifier}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
