"""Fine-tune the pretrained ``puvae-mnist`` for digits that look different, vs training from scratch.

The data set is scikit-learn's 1,797 handwritten digits (8x8 pixels, 16 grey levels, written
by other people than MNIST's), upsampled to 20x20 and centred in 28x28 like MNIST digits.
Both purifiers get the same steps (so the same time: same model, same data), and the same
target classifier is measured behind each, with and without targeted FGSM (eps 0.3).

    pip install -e ".[examples]"      # scikit-learn, for its bundled digits
    python examples/finetune_digits.py [--epochs 10] [--json docs/results/finetune_digits.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from puvae_defense import PurifiedClassifier, PuVAE, fit, hub
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import accuracy, fit_classifier


def sklearn_digits() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train / validation / test splits (1,200 / 297 / 300) of the digits as MNIST-like 28x28 images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.pad(F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    images, labels = images.clamp(0, 1), torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    parts = order[:1200], order[1200:1497], order[1497:]
    return tuple(TensorDataset(images[i], labels[i]) for i in parts)  # type: ignore[return-value]


def through(purifier: PuVAE, target: torch.nn.Module, data: TensorDataset, eps: float) -> dict[str, float]:
    """Accuracy (%) of ``target`` behind ``purifier`` on clean images and on targeted FGSM made on ``target``."""
    defended = PurifiedClassifier(target, purifier, sigma_eps=0.0).eval()
    images, labels = data.tensors
    adversarial = fgsm(target, images, random_targets(labels, 10, torch.Generator().manual_seed(0)), eps=eps, targeted=True)
    with torch.no_grad():
        clean = (defended(images).argmax(1) == labels).float().mean().item()
        attacked = (defended(adversarial).argmax(1) == labels).float().mean().item()
    return {"clean": round(100 * clean, 2), "fgsm": round(100 * attacked, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of both runs (10 steps each on 1,200 images)")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--json", type=Path, default=None, help="also write the measured numbers here")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, val, test = sklearn_digits()
    source = fit_classifier(train, "source", num_classes=10, epochs=30, progress=False)
    target = fit_classifier(train, "A", num_classes=10, epochs=30, seed=1, progress=False)
    results: dict[str, object] = {"undefended target, clean": round(accuracy(target, test), 2),
                                  "source, clean": round(accuracy(source, test), 2)}
    pretrained = PuVAE.from_pretrained("puvae-mnist")
    results["puvae-mnist as is"] = through(pretrained, target, test, args.eps)
    for name, init in (("fine-tuned from puvae-mnist", "puvae-mnist"), ("from scratch", None)):
        started = time.perf_counter()
        purifier = fit(train, source, init=init, recipe="finetune" if init else "robust", epochs=args.epochs,
                       val_dataset=val, val_size=len(val), progress=False)
        seconds = time.perf_counter() - started
        results[name] = {**through(purifier, target, test, args.eps), "seconds": round(seconds, 1),
                         "val_purified_acc by epoch": [round(h.val_purified_acc, 2) for h in purifier.training_history]}
    results["settings"] = {"epochs": args.epochs, "eps": args.eps, "test images": len(test), "sigma_eps": 0.0,
                           "threads": torch.get_num_threads(), "puvae-mnist sha256": hub.get_entry("puvae-mnist").sha256}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
