"""Where does a smoothing denoiser lose the noisy images: its class choice, or the classifier's reading?

On Gaussian-noisy validation images (``clip(x + sigma * N(0, I))``, one draw, seed 0) this runs
:func:`puvae_defense.diagnose` with the held-out selector (never classifiers A or B) behind each
purifier: the selector's accuracy alone and through the purifier, the purifier's own class choice
(the nearest projection) and how often the selector disagrees with that choice. When the
projection's accuracy is about the selector's through the purifier, the images are lost in the
class choice (a wrong-class decoding reads as that class); when it is higher, the classifier
misreads right-class decodings (and ``adapt`` is the fix).

It also scores a noise-aware class choice on the same candidates: the class whose projection
makes the noisy image most likely under the clipped Gaussian that made it (a pixel at 0 or 1 counts
``Phi`` of its distance to the threshold, one inside ``N(x; r, sigma^2)``) against the nearest in
RMSE (eq. 15, what PuVAE does): if the class choice fails because RMSE is the wrong distance for
clipped noise, the likelihood recovers it. A third rule adds what the likelihood leaves out of
a generative classifier's score: the evidence lower bound per class, that likelihood minus the KL
of the class's posterior ``q(z | x, c)`` from the prior, so a class that needs an unusual latent to
come close to the noisy image is charged for it. For scale, the classifier A retrained with noise at
that sigma (``anchors/``, row (e) of docs/smoothing.md, where it exists) reads the same noisy images.

    python experiments/denoiser_diagnosis.py [--purifiers puvae-mnist-smooth puvae-mnist] [--images 1000]
        [--json docs/results/denoiser_diagnosis_mnist.json]
    python experiments/denoiser_diagnosis.py --dataset fashion-mnist --sigmas 0.25 0.5
        --json docs/results/denoiser_diagnosis_fashion-mnist.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from puvae_defense import PuVAE, diagnose
from puvae_defense.baselines import load_purifier
from puvae_defense.classifiers import PaperClassifier, accuracy
from puvae_defense.data import load_dataset
from puvae_defense.kernels import select_closest
from puvae_defense.losses import gaussian_kl
from puvae_defense.selection import SELECTOR_EPOCHS, default_selector_path, load_selector


def clipped_gaussian_loglik(noisy: torch.Tensor, candidates: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B, C)`` log-likelihood of ``noisy`` ``(B, ...)`` given each clean candidate ``(B, C, ...)`` under
    ``clip(r + sigma * N(0, 1), 0, 1)`` per pixel."""
    x = noisy.unsqueeze(1).expand_as(candidates)
    standard = torch.distributions.Normal(0.0, 1.0)
    inside = -((x - candidates) ** 2) / (2 * sigma**2)
    at_zero = standard.cdf(-candidates / sigma).clamp_min(1e-12).log()
    at_one = standard.cdf((candidates - 1) / sigma).clamp_min(1e-12).log()
    return torch.where(x <= 0, at_zero, torch.where(x >= 1, at_one, inside)).flatten(2).sum(-1)


def posterior_kl(vae: PuVAE, images: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` KL of ``q(z | x, c)`` from ``N(0, I)`` for every image and class, in nats."""
    columns = []
    for c in range(vae.num_classes):
        mu, sd = vae.encode(images, torch.full((len(images),), c, dtype=torch.long))
        columns.append(gaussian_kl(mu, sd, "sum"))
    return torch.stack(columns, 1)


def selection_rules(vae: PuVAE, noisy: torch.Tensor, labels: torch.Tensor, sigma: float) -> dict[str, float]:
    """Accuracy (%) of the nearest-RMSE, the most-likely and the highest-ELBO class on the same candidates
    (sigma_eps 0.1, seed 0)."""
    generator, chosen = torch.Generator().manual_seed(0), {"nearest (RMSE)": [], "most likely": [], "ELBO": []}
    with torch.no_grad():
        for start in range(0, len(noisy), 100):
            batch = noisy[start:start + 100]
            candidates = vae.candidates(batch, sigma_eps=0.1, generator=generator)
            loglik = clipped_gaussian_loglik(batch, candidates, sigma)
            chosen["nearest (RMSE)"].append(select_closest(batch.flatten(1), candidates.flatten(2)).indices)  # PuVAE's rule
            chosen["most likely"].append(loglik.argmax(1))
            chosen["ELBO"].append((loglik - posterior_kl(vae, batch)).argmax(1))
    return {rule: round((torch.cat(picks) == labels).float().mean().item() * 100, 2) for rule, picks in chosen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--purifiers", nargs="+", default=None,
                        help="default: puvae-DATASET-smooth and puvae-DATASET")
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--images", type=int, default=1000, help="first N validation images")
    parser.add_argument("--anchors", default="anchors/{dataset}-classifier-a-noise{sigma}",
                        help="the noise-retrained classifier per sigma, where the folder exists")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dataset = args.dataset
    val = load_dataset(dataset, "val")
    images, labels = val.images[:args.images], val.labels[:args.images]
    selector = load_selector(default_selector_path(dataset), load_dataset(dataset, "train"), epochs=SELECTOR_EPOCHS[dataset])
    names = args.purifiers or [f"puvae-{dataset}-smooth", f"puvae-{dataset}"]
    purifiers = {name: load_purifier(name) for name in names}
    rows = []
    for sigma in args.sigmas:
        noisy = (images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        anchor = Path(args.anchors.format(dataset=dataset, sigma=sigma))
        retrained = (round(accuracy(PaperClassifier.from_pretrained(anchor), TensorDataset(noisy, labels)), 2)
                     if anchor.is_dir() else None)
        for purifier, vae in purifiers.items():
            result = diagnose(selector, vae, TensorDataset(noisy, labels), limit=None, warn=False)
            rows.append({"sigma": sigma, "purifier": purifier, "selector alone": result.clean_accuracy,
                         "selector through the purifier": result.purified_accuracy,
                         "projection's class": result.projection_accuracy, "disagreement": result.disagreement,
                         **selection_rules(vae, noisy, labels, sigma), "retrained alone": retrained})
            print(json.dumps(rows[-1]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"dataset": dataset, "images": args.images, "split": "val", "sigma_eps": 0.1, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
