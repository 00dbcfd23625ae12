"""Train a PuVAE for a custom labelled data set, then defend a classifier with it.

The "custom" task here is MNIST digits 0-4 (5 classes) as a plain ``TensorDataset``;
swap in your own map-style data set of ``(image (C, H, W) in [0, 1], int label)``.
A reduced PuVAE keeps the run to a few minutes on a laptop CPU; drop ``config=`` to get
the paper's layer sizes for your image shape.

    python examples/train_custom.py
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from puvae_defense import PurifiedClassifier, PuVAE, PuVAEConfig, fit
from puvae_defense.classifiers import accuracy, fit_classifier
from puvae_defense.data import load_dataset


def digits_0_to_4(split: str, limit: int) -> TensorDataset:
    data = load_dataset("mnist", split)  # any source of images in [0, 1] works
    keep = data.labels < 5
    return TensorDataset(data.images[keep][:limit], data.labels[keep][:limit])


train, val = digits_0_to_4("train", 6000), digits_0_to_4("val", 1000)
source = fit_classifier(train, "source", num_classes=5, epochs=2, progress=False)
print(f"source classifier: {accuracy(source, val):.1f}% on validation")

config = PuVAEConfig(image_shape=(1, 28, 28), num_classes=5, encoder_hidden=(256, 256), decoder_hidden=256)
puvae = fit(train, source, config=config, recipe="robust", val_dataset=val, epochs=3,
            checkpoint_dir="runs/example-custom", val_size=500)
for stats in puvae.training_history:
    print(f"epoch {stats.epoch}: purified validation accuracy {stats.val_purified_acc:.1f}%")

puvae.save_pretrained("runs/example-custom/model")
defended = PurifiedClassifier(source, PuVAE.from_pretrained("runs/example-custom/model"), sigma_eps=0.1)
images, labels = val.tensors
with torch.no_grad():
    clean = (defended(images[:500]).argmax(1) == labels[:500]).float().mean()
print(f"source classifier behind the purifier: {100 * clean:.1f}% on 500 validation images")
