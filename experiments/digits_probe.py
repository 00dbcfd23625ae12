"""Does ``fit`` need more attacked networks on a small custom data set? A probe on validation.

The digits of ``examples/finetune_digits.py`` at their native 8x8, trained from scratch with
``fit``'s default recipe, with and without ``--ensemble K`` further classifiers whose targeted
FGSM images the encoder also sees (``attack_models``, what made ``puvae-mnist`` robust). Scored on
the 297 validation digits through a held-out classifier trained only for this probe (never the
example's target classifier, never the test digits): clean accuracy and targeted FGSM (eps 0.3)
made on that classifier.

    python experiments/digits_probe.py --ensemble 0
    python experiments/digits_probe.py --ensemble 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from puvae_defense import PurifiedClassifier, fit
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import fit_classifier

ROOT = Path(__file__).resolve().parents[1]


def _digits(side: int):  # the example's own splits, so the probe sees exactly its data
    spec = importlib.util.spec_from_file_location("finetune_digits", ROOT / "examples" / "finetune_digits.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.sklearn_digits(side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensemble", type=int, default=0, help="further attacked classifiers (B and D, other seeds)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.3)
    args = parser.parse_args()
    torch.manual_seed(0)
    train, val, _ = _digits(8)
    source = fit_classifier(train, "D", num_classes=10, epochs=30, progress=False)  # the example's source
    selector = fit_classifier(train, "B", num_classes=10, epochs=30, seed=7, progress=False)  # held out, for this probe
    others = [fit_classifier(train, arch, num_classes=10, epochs=30, seed=10 + i, progress=False)
              for i, arch in enumerate(["B", "D", "B", "D"][:args.ensemble])]
    started = time.perf_counter()
    purifier = fit(train, source, epochs=args.epochs, val_dataset=val, val_size=len(val), attack_models=others,
                   progress=False)
    seconds = time.perf_counter() - started
    images, labels = val.tensors
    adversarial = fgsm(selector, images, random_targets(labels, 10, torch.Generator().manual_seed(0)), eps=args.eps,
                       targeted=True)
    defended = PurifiedClassifier(selector, purifier, sigma_eps=0.0).eval()
    with torch.no_grad():
        row = {"ensemble": args.ensemble, "seconds": round(seconds, 1),
               "selector alone, clean": 100 * (selector(images).argmax(1) == labels).float().mean().item(),
               "selector alone, fgsm": 100 * (selector(adversarial).argmax(1) == labels).float().mean().item(),
               "through purifier, clean": 100 * (defended(images).argmax(1) == labels).float().mean().item(),
               "through purifier, fgsm": 100 * (defended(adversarial).argmax(1) == labels).float().mean().item()}
    print(json.dumps({key: round(value, 2) if isinstance(value, float) else value for key, value in row.items()}))


if __name__ == "__main__":
    main()
