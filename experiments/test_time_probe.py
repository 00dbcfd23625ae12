"""Can the projection's choice be improved at test time, without training? (validation only)

The purifier picks the class whose projection is nearest in RMSE (the paper's eq. 15). This
probe scores, on the first ``--n`` validation images, how often three test-time variants
pick the true class, against that rule:

- **averaged draws**: the ten distances averaged over ``--draws`` noise draws of ``z``;
- **averaged views**: the distances of the image averaged with those of its horizontal flip,
  of its four one-pixel shifts, or both (test-time augmentation);
- **latent refinement**: each class's ``z`` refined from ``mu`` by Adam steps on the squared
  error of its decoding, plus ``prior`` times the Mahalanobis distance to the posterior
  (``((z - mu) / sigma)^2``), the analysis-by-synthesis idea of fitting every class model to
  the image before comparing them.

Usage (the table of docs/training.md, "Test-time variants"):
    python experiments/test_time_probe.py hub/puvae-fashion-mnist --dataset fashion-mnist --n 2000 \
        --out docs/results/test_time_probe_fashion-mnist.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from puvae_defense import PuVAE
from puvae_defense.data import load_dataset

CHUNK = 250
SHIFTS = ((-1, -1), (1, -1), (-1, -2), (1, -2))  # (pixels, dimension)


def nearest_accuracy(distances: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of images whose smallest distance is their own class's."""
    return round(100 * float((distances.argmin(1) == labels).float().mean()), 2)


def distances(vae: PuVAE, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The ten RMSEs of ``project`` (sigma_eps 0.1, seeded), chunked."""
    out = []
    for start in range(0, images.shape[0], CHUNK):
        generator = torch.Generator().manual_seed(seed + start)
        out.append(vae.project(images[start:start + CHUNK], sigma_eps=0.1, generator=generator).distances)
    return torch.cat(out)


def refined_distances(vae: PuVAE, images: torch.Tensor, steps: int, prior: float, lr: float = 0.05) -> torch.Tensor:
    """The ten RMSEs after ``steps`` Adam steps on each class's ``z`` (from ``mu``)."""
    num_classes, out = vae.num_classes, []
    for start in range(0, images.shape[0], CHUNK):
        x = images[start:start + CHUNK]
        b = x.shape[0]
        labels = torch.arange(num_classes).repeat(b)
        repeated = x.repeat_interleave(num_classes, 0)
        with torch.no_grad():
            mu, sigma = vae.encode(repeated, labels)
        target = repeated.flatten(1)
        z = mu.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            error = (vae.decode(z, labels).flatten(1) - target).pow(2).sum(1)
            loss = error + prior * ((z - mu) / sigma).pow(2).sum(1)
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
        with torch.no_grad():
            out.append((vae.decode(z, labels).flatten(1) - target).pow(2).mean(1).sqrt().view(b, num_classes))
    return torch.cat(out)


def probe(vae: PuVAE, images: torch.Tensor, labels: torch.Tensor, draws: int) -> dict[str, float]:
    """Projection accuracy of the paper's rule and of every variant."""
    base = distances(vae, images)
    flip = distances(vae, images.flip(-1))
    shifted = sum(distances(vae, torch.roll(images, pixels, dims=dim)) for pixels, dim in SHIFTS)
    redrawn = sum((distances(vae, images, seed=10_000 * k) for k in range(1, draws)), base)
    rows: dict[str, Callable[[], torch.Tensor]] = {
        "nearest RMSE (the paper's rule)": lambda: base,
        f"averaged over {draws} noise draws": lambda: redrawn,
        "averaged with the horizontal flip": lambda: base + flip,
        "the horizontal flip alone": lambda: flip,
        "averaged with four one-pixel shifts": lambda: base + shifted,
        "averaged with the flip and the shifts": lambda: base + flip + shifted,
    }
    for steps, prior in ((5, 0.0), (20, 0.0), (50, 0.0), (5, 1.0), (20, 1.0), (20, 10.0)):
        rows[f"refined z, {steps} steps, prior {prior:g}"] = (
            lambda steps=steps, prior=prior: refined_distances(vae, images, steps, prior))
    return {name: nearest_accuracy(make(), labels) for name, make in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="PuVAE folder or registered name")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--n", type=int, default=2000, help="first n validation images")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = PuVAE.from_pretrained(args.model).float().eval().requires_grad_(False)
    val = load_dataset(args.dataset, "val").subset(0, args.n)
    start = time.time()
    accuracy = probe(vae, val.images, val.labels, args.draws)
    report = {"command": shlex.join(["python", "experiments/test_time_probe.py", *sys.argv[1:]]),
              "model": args.model, "dataset": args.dataset, "split": "val", "images": args.n,
              "seconds": round(time.time() - start, 1), "projection_accuracy": accuracy}
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
