"""How much of an attack's perturbation each purifier hands on to the classifier.

For the first ``--n`` validation images ``x`` and a perturbation ``d`` (the actual change after
clipping to [0, 1]), each purifier ``P`` is run on ``x`` and on ``x + d`` with the same random
draws (PuVAE's latent noise, Defense-GAN's random starts), and its output's move is measured
along ``d``:

    kept = <P(x + d) - P(x), d> / <d, d>        (per image, then averaged)

0 means the purifier removed the perturbation's direction entirely, 1 that it passed it on
as an identity would. Two perturbations of the same size: Table 2's targeted FGSM (eps 0.3,
random wrong targets, made on the classifier, gray-box) and random signs (eps 0.3). Also
reported: the classifier's accuracy on ``P(x)`` and on ``P(x + d)`` and the mean squared
distance of ``P(x + d)`` to ``x + d`` and to ``x``. Defense-GAN is measured at each ``L x R``
of ``--searches``, to show what a longer search does with the perturbation.

Validation split only: a diagnosis of the baselines, not a number of the tables.

Usage:
    python experiments/perturbation_probe.py [--n 100] [--searches 25x2,50x5,200x20] \
        [--out docs/results/perturbation_probe_mnist.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from puvae_defense import PurifiedClassifier
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.baselines import load_purifier, parse_search
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset

EPS = 0.3
CHUNK = 50


def kept_fraction(clean_out: torch.Tensor, attacked_out: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
    """Per image: the output's move along the input's perturbation, as a fraction of it
    (images whose perturbation is zero count as 0)."""
    d = perturbation.flatten(1)
    norm = d.square().sum(1)
    return ((attacked_out - clean_out).flatten(1) * d).sum(1) / norm.clamp_min(1e-12) * (norm > 0)


def random_signs(images: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """``images`` moved by ``eps`` in random sign directions, clipped to [0, 1]."""
    signs = torch.randint(0, 2, images.shape, generator=generator).to(images) * 2 - 1
    return (images + eps * signs).clamp(0, 1)


def measure(model: PurifiedClassifier, clean: torch.Tensor, perturbed: dict[str, torch.Tensor], labels: torch.Tensor,
            seed: int) -> dict:
    """One purifier: its clean accuracy, then ``kept``, accuracy and distances for each
    perturbation; in chunks of ``CHUNK`` images, each chunk's passes with the same random draws."""
    parts: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in ("clean", *perturbed)}
    with torch.no_grad():
        for start in range(0, len(clean), CHUNK):
            chunk = slice(start, start + CHUNK)
            x, y = clean[chunk], labels[chunk]
            out = model.purify(x, generator=torch.Generator().manual_seed(seed + start)).purified
            parts["clean"].setdefault("right", []).append(model.classify_purified(out).argmax(1) == y)
            for name, attacked in perturbed.items():
                x_adv = attacked[chunk]
                out_adv = model.purify(x_adv, generator=torch.Generator().manual_seed(seed + start)).purified
                for key, value in {"kept": kept_fraction(out, out_adv, x_adv - x),
                                   "right": model.classify_purified(out_adv).argmax(1) == y,
                                   "mse_to_attacked_input": (out_adv - x_adv).square().flatten(1).mean(1),
                                   "mse_to_clean_image": (out_adv - x).square().flatten(1).mean(1)}.items():
                    parts[name].setdefault(key, []).append(value)
    mean = {name: {key: float(torch.cat(values).float().mean()) for key, values in found.items()}
            for name, found in parts.items()}
    result = {"accuracy_clean": 100 * mean.pop("clean")["right"]}
    for name, values in mean.items():
        result[name] = {"accuracy": 100 * values.pop("right"), **values}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--n", type=int, default=100, help="validation images (default %(default)s)")
    parser.add_argument("--classifier", default=None, help="default: classifier A of --dataset")
    parser.add_argument("--searches", default="25x2,50x5,200x20", help="Defense-GAN L x R settings, comma-separated")
    parser.add_argument("--purifiers", nargs="+", default=None, metavar="LABEL=SOURCE",
                        help="default: puvae, magnet and defense-gan, the bundled ones of --dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/perturbation_probe_DATASET.json")
    args = parser.parse_args()
    try:
        searches = [parse_search(item) for item in args.searches.split(",")]
    except ValueError as error:
        raise SystemExit(str(error)) from None
    sources = (dict(item.split("=", 1) for item in args.purifiers) if args.purifiers else
               {name: f"{name}-{args.dataset}" for name in ("puvae", "magnet", "defense-gan")})
    classifier = args.classifier or f"{args.dataset}-classifier-a"
    torch.manual_seed(args.seed)
    val = load_dataset(args.dataset, "val").subset(0, args.n)
    net = PaperClassifier.from_pretrained(classifier).eval()
    targets = random_targets(val.labels, 10, torch.Generator().manual_seed(args.seed))
    perturbed = {"FGSM": fgsm(net, val.images, targets, eps=EPS, targeted=True),
                 "random signs": random_signs(val.images, EPS, torch.Generator().manual_seed(args.seed))}
    purifiers = {}
    for label, source in sources.items():
        purifier = load_purifier(source)
        if hasattr(purifier, "with_search"):  # Defense-GAN: one entry per search setting
            purifiers.update({f"{label} L{s} R{r}": purifier.with_search(steps=s, restarts=r) for s, r in searches})
        else:
            purifiers[label] = purifier
    results = {}
    for label, purifier in purifiers.items():
        model = PurifiedClassifier(net, purifier).eval()
        started = time.perf_counter()
        results[label] = {**measure(model, val.images, perturbed, val.labels, args.seed),
                          "seconds": time.perf_counter() - started}
        print(label, json.dumps(results[label]), flush=True)
    out = args.out or Path("docs/results") / f"perturbation_probe_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        undefended = {name: 100 * float((net(x).argmax(1) == val.labels).float().mean())
                      for name, x in {"clean": val.images, **perturbed}.items()}
    out.write_text(json.dumps({
        "command": "python experiments/perturbation_probe.py " + " ".join(sys.argv[1:]),
        "split": "val", "n": args.n, "eps": EPS, "classifier": classifier, "purifiers": sources,
        "undefended_accuracy": undefended,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
