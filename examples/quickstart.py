"""Defend a classifier with the pretrained purifier, by name, in a few lines.

    python examples/quickstart.py
"""

from __future__ import annotations

import time

import torch

from puvae_defense import PurifiedClassifier
from puvae_defense.attacks import fgsm
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset

net = PaperClassifier.from_pretrained("mnist-classifier-a")   # any classifier taking images in [0, 1]
model = PurifiedClassifier(net, "puvae-mnist")                # Hub, HF cache, or the bundled copy

test = load_dataset("mnist", "test")
images, labels = test.images[:256], test.labels[:256]
adversarial = fgsm(net, images, labels, eps=0.3)              # computed on the undefended classifier

with torch.no_grad():
    for name, batch in [("clean", images), ("FGSM eps 0.3", adversarial)]:
        start = time.perf_counter()
        defended = (model(batch).argmax(1) == labels).float().mean().item()
        seconds = time.perf_counter() - start
        undefended = (net(batch).argmax(1) == labels).float().mean().item()
        print(f"{name:>13}: undefended {100 * undefended:5.1f}%  purified {100 * defended:5.1f}%  "
              f"({seconds:.2f} s for {len(batch)} images)")
