"""Attack the defended model with torchattacks and ART, and use the purifier as an ART defence.

    pip install -e ".[interop]" && pip install --no-deps torchattacks==3.5.1
    python examples/interop_attacks.py [--images 100] [--json docs/results/interop_attacks.json]

Three ways a user of those libraries plugs PuVAE in, on the first test images, classifier A:
1. ``PurifiedClassifier`` is an ``nn.Module``: torchattacks' PGD attacks it directly (full gradient).
2. ART's ``PyTorchClassifier`` wraps it like any PyTorch model.
3. ``puvae_defense.art.PuVAEPreprocessor`` is an ART preprocessing defence in front of the bare
   classifier; ``bpda=True`` gives ART's attacks the BPDA gradient.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torchattacks
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier

from puvae_defense import PurifiedClassifier, PuVAE, hub
from puvae_defense.art import PuVAEPreprocessor
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset


def accuracy(logits: np.ndarray | torch.Tensor, labels: torch.Tensor) -> float:
    predicted = torch.as_tensor(logits).argmax(1)
    return round(100 * float((predicted == labels).float().mean()), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    test = load_dataset("mnist", "test")
    images, labels = test.images[:args.images], test.labels[:args.images]
    net = PaperClassifier.from_pretrained("mnist-classifier-a")
    purifier = PuVAE.from_pretrained("puvae-mnist")
    defended = PurifiedClassifier(net, purifier, sigma_eps=0.0).eval()
    pgd = {"eps": 0.3, "alpha": 0.01, "steps": 40}
    results = {}

    adversarial = torchattacks.PGD(defended, random_start=True, **pgd)(images, labels)  # 1. torchattacks
    with torch.no_grad():
        results["torchattacks PGD through PurifiedClassifier (full gradient)"] = accuracy(defended(adversarial), labels)

    def art_classifier(model: torch.nn.Module, **kwargs) -> PyTorchClassifier:
        return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                 clip_values=(0.0, 1.0), device_type="cpu", **kwargs)

    onehot = np.eye(10)[labels.numpy()]
    art_pgd = {"eps": 0.3, "eps_step": 0.01, "max_iter": 40, "verbose": False}
    wrapped = art_classifier(defended)  # 2. ART around the whole defended model
    x_adv = ProjectedGradientDescent(wrapped, **art_pgd).generate(images.numpy(), y=onehot)
    results["ART PGD on PyTorchClassifier(PurifiedClassifier) (full gradient)"] = accuracy(wrapped.predict(x_adv), labels)
    for bpda in (False, True):  # 3. the purifier as an ART preprocessing defence
        classifier = art_classifier(net, preprocessing_defences=[PuVAEPreprocessor(purifier, sigma_eps=0.0, bpda=bpda)])
        results[f"ART clean, PuVAEPreprocessor(bpda={bpda})"] = accuracy(classifier.predict(images.numpy()), labels)
        x_adv = ProjectedGradientDescent(classifier, **art_pgd).generate(images.numpy(), y=onehot)
        results[f"ART PGD, PuVAEPreprocessor(bpda={bpda})"] = accuracy(classifier.predict(x_adv), labels)
    text = json.dumps({"images": args.images, "pgd": pgd, "accuracy_percent": results,
                       "puvae-mnist sha256": hub.get_entry("puvae-mnist").sha256}, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
