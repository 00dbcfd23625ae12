"""A torchvision ResNet-18 behind ``puvae-mnist``: the path a torchvision user takes.

The network expects 3-channel, normalized 32x32 images; PuVAE works on the 1x28x28 MNIST
images in [0, 1]. Ordinary torchvision transforms bridge the two as ``preprocess``, applied
to the purified images (resize, channel repeat, Normalize). The ResNet is trained here from
random weights on MNIST through the same transforms (no download: the Hub is not needed).

A ResNet that saw few images misreads the purifier's smooth decodings. ``--adapt`` then runs the
fix the library offers: ``diagnose`` on 1,000 validation images (the purifier's own class choice
against the ResNet's), ``adapt`` (a copy of the ResNet fine-tuned on purified and clean copies of
its own training images) and the same measurements again, the FGSM now made on the adapted ResNet.

    python examples/torchvision_resnet.py [--train-images 10000] [--test-images 500] [--adapt] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from puvae_defense import PurifiedClassifier, PuVAE, adapt, diagnose, hub
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.data import load_dataset

PREPROCESS = v2.Compose([
    v2.Resize(32, antialias=True),
    v2.Grayscale(num_output_channels=3),
    v2.Normalize([0.1307] * 3, [0.3081] * 3),
])


def train_resnet(images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int = 128) -> torch.nn.Module:
    """ResNet-18 with 10 outputs, trained on ``PREPROCESS(images)`` with Adam and a cosine schedule."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = epochs * -(-len(labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(net(PREPROCESS(images[batch])), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def measure(net: torch.nn.Module, purifier: PuVAE, images: torch.Tensor, labels: torch.Tensor,
            eps: float) -> dict[str, float]:
    """Clean and gray-box targeted FGSM accuracy (%) of ``net`` alone and behind ``purifier``."""
    undefended = torch.nn.Sequential(PREPROCESS, net).eval()  # the user's model as they deploy it
    defended = PurifiedClassifier(net, purifier, preprocess=PREPROCESS).eval()
    targets = random_targets(labels, 10, torch.Generator().manual_seed(0))
    adversarial = fgsm(undefended, images, targets, eps=eps, targeted=True)  # gray-box: made on the ResNet
    with torch.no_grad():
        results = {
            "undefended, clean": (undefended(images).argmax(1) == labels).float().mean().item(),
            "undefended, targeted FGSM": (undefended(adversarial).argmax(1) == labels).float().mean().item(),
            "behind puvae-mnist, clean": (defended(images).argmax(1) == labels).float().mean().item(),
            "behind puvae-mnist, targeted FGSM": (defended(adversarial).argmax(1) == labels).float().mean().item(),
        }
    return {key: round(100 * value, 2) for key, value in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--adapt", action="store_true", help="diagnose, adapt the ResNet to the purifier, measure again")
    parser.add_argument("--adapt-epochs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the measured numbers here")
    args = parser.parse_args()
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    net = train_resnet(train.images[:args.train_images], train.labels[:args.train_images], epochs=args.epochs)
    images, labels = test.images[:args.test_images], test.labels[:args.test_images]
    purifier = PuVAE.from_pretrained("puvae-mnist")  # loaded once, shared by every measurement below
    report: dict[str, object] = measure(net, purifier, images, labels, args.eps)
    if args.adapt:
        own = TensorDataset(train.images[:args.train_images], train.labels[:args.train_images])
        val = load_dataset("mnist", "val")  # held out from every training run, and not the test split
        held_out = TensorDataset(val.images[:1000], val.labels[:1000])
        before = diagnose(net, purifier, held_out, preprocess=PREPROCESS, warn=False)
        adapted = adapt(net, purifier, own, epochs=args.adapt_epochs, preprocess=PREPROCESS, progress=False)
        after = diagnose(adapted, purifier, held_out, preprocess=PREPROCESS, warn=False)
        report["diagnosis before adapt"] = {"verdict": before.verdict, "drop": round(before.drop, 2),
                                            "projection accuracy": before.projection_accuracy,
                                            "disagreement": before.disagreement}
        report["adapted"] = measure(adapted, purifier, images, labels, args.eps)
        report["diagnosis after adapt"] = {"verdict": after.verdict, "drop": round(after.drop, 2)}
        report["adapt epochs"] = args.adapt_epochs
    text = json.dumps(report | {"train images": args.train_images, "epochs": args.epochs, "test images": len(labels),
                                "eps": args.eps, "sigma_eps": PurifiedClassifier(net, purifier).sigma_eps,
                                "puvae-mnist sha256": hub.get_entry("puvae-mnist").sha256}, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
