"""Purifiers for a data set of your own: scikit-learn's digits, fine-tuned, from scratch, at 28x28 and at 8x8.

The data set is scikit-learn's 1,797 handwritten digits (8x8 pixels, 16 grey levels, written
by other people than MNIST's), split 1,200 / 297 / 300. Two ways to use them:

- upsampled to 20x20 and centred in 28x28 like MNIST digits, where ``puvae-mnist`` can be used
  as it is or fine-tuned (``init="puvae-mnist"``), or a paper-size PuVAE trained from scratch
  for the same number of steps;
- at their native 8x8, where ``fit`` picks the small-image layer sizes
  (``PuVAEConfig.for_images``) and trains from scratch.

Each resolution has its own target classifier (never seen by ``fit``), measured alone and behind
each purifier, on clean test digits and on targeted FGSM made on the target (gray-box).

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
from puvae_defense.recipes import DEFAULT_RECIPE, FINETUNE_RECIPE


def sklearn_digits(side: int = 28) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train / validation / test splits (1,200 / 297 / 300) of the digits, native 8x8 or MNIST-like 28x28."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if side == 28:
        images = F.pad(F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    elif side != 8:
        raise ValueError(f"side must be 8 (native) or 28 (MNIST-like), got {side}")
    images, labels = images.clamp(0, 1), torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    parts = order[:1200], order[1200:1497], order[1497:]
    return tuple(TensorDataset(images[i], labels[i]) for i in parts)  # type: ignore[return-value]


def attacked(target: torch.nn.Module, data: TensorDataset, eps: float) -> torch.Tensor:
    """Targeted FGSM (random wrong targets, seed 0) made on ``target``: the gray-box attack."""
    images, labels = data.tensors
    return fgsm(target, images, random_targets(labels, 10, torch.Generator().manual_seed(0)), eps=eps, targeted=True)


def through(purifier: PuVAE | None, target: torch.nn.Module, data: TensorDataset, adversarial: torch.Tensor) -> dict[str, float]:
    """Accuracy (%) of ``target`` (behind ``purifier``, when given) on clean and on attacked images."""
    model = target if purifier is None else PurifiedClassifier(target, purifier, sigma_eps=0.0)
    images, labels = data.tensors
    with torch.no_grad():
        clean = (model.eval()(images).argmax(1) == labels).float().mean().item()
        fooled = (model(adversarial).argmax(1) == labels).float().mean().item()
    return {"clean": round(100 * clean, 2), "fgsm": round(100 * fooled, 2)}


def trained(train: TensorDataset, val: TensorDataset, source: torch.nn.Module, init: str | None, epochs: int,
            target: torch.nn.Module, test: TensorDataset, adversarial: torch.Tensor) -> dict[str, object]:
    """Train a purifier (``fit``'s default recipe for ``init``) and measure ``target`` behind it."""
    started = time.perf_counter()
    purifier = fit(train, source, init=init, epochs=epochs, val_dataset=val, val_size=len(val), progress=False)
    seconds = time.perf_counter() - started
    return {**through(purifier, target, test, adversarial), "seconds": round(seconds, 1),
            "recipe": FINETUNE_RECIPE if init else DEFAULT_RECIPE, "parameters": sum(p.numel() for p in purifier.parameters()),
            "val_purified_acc by epoch": [round(h.val_purified_acc, 2) for h in purifier.training_history]}


def resolution(splits: tuple[TensorDataset, TensorDataset, TensorDataset], source_arch: str, target_arch: str,
               epochs: int, eps: float) -> dict[str, object]:
    """Every purifier of one resolution, with its own source and target classifiers (30 epochs each)."""
    train, val, test = splits
    side = train.tensors[0].shape[-1]
    source = fit_classifier(train, source_arch, num_classes=10, epochs=30, progress=False)
    target = fit_classifier(train, target_arch, num_classes=10, epochs=30, seed=1, progress=False)
    adversarial = attacked(target, test, eps)
    rows: dict[str, object] = {"source, clean": round(accuracy(source, test), 2),
                               "undefended target": through(None, target, test, adversarial)}
    if side == 28:  # puvae-mnist takes MNIST-like 28x28 images only
        rows["puvae-mnist as is"] = through(PuVAE.from_pretrained("puvae-mnist"), target, test, adversarial)
        rows["fine-tuned from puvae-mnist"] = trained(train, val, source, "puvae-mnist", epochs, target, test, adversarial)
    rows["from scratch"] = trained(train, val, source, None, epochs, target, test, adversarial)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every run (10 steps each on 1,200 images)")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--json", type=Path, default=None, help="also write the measured numbers here")
    args = parser.parse_args()
    torch.manual_seed(0)
    # 28x28: the paper's classifiers A (target) and "source"; puvae-mnist as is, fine-tuned, or trained anew.
    # 8x8: classifiers whose convolutions fit 8x8 images (B target, D source); the small-image PuVAE.
    native = sklearn_digits(8)
    results: dict[str, object] = {"28x28": resolution(sklearn_digits(28), "source", "A", args.epochs, args.eps),
                                  "8x8": resolution(native, "D", "B", args.epochs, args.eps)}
    results["settings"] = {"epochs": args.epochs, "eps": args.eps, "test images": len(native[2]), "sigma_eps": 0.0,
                           "threads": torch.get_num_threads(), "puvae-mnist sha256": hub.get_entry("puvae-mnist").sha256}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
