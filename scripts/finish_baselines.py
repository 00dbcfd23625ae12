"""Measure the trained baselines once on the test split and bundle them as ``hub/<name>``.

Takes the folders that ``puvae-defense train-baseline`` wrote into ``--work`` (any of
``magnet-mnist``, ``defense-gan-mnist``, ``mnist-adv-classifier-a``, ``mnist-adv-classifier-b``),
copies each to ``--out/<name>`` with the registry's metadata (name, data set, description,
measured metrics, how it was trained) and a model card, then regenerates the registry
(``scripts/build_registry.py``). Measured here, on the test split:

- adversarially trained classifiers: clean accuracy (all 10,000 images);
- MagNet: accuracy of classifiers A and B on its reconstructions (all 10,000 images);
- Defense-GAN: the same on the first ``--gan-images`` images (L = 200, R = 20 costs seconds
  per image on a CPU).

Usage: python scripts/finish_baselines.py [--work runs/baselines] [--out hub] [--gan-images 500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from puvae_defense import PurifiedClassifier
from puvae_defense.baselines import load_purifier
from puvae_defense.classifiers import PaperClassifier, accuracy
from puvae_defense.data import load_dataset
from puvae_defense.evaluation import defended_accuracy
from puvae_defense.model_card import model_card
from puvae_defense.serialization import WEIGHTS_NAME

ROOT = Path(__file__).resolve().parent.parent

DESCRIPTIONS = {
    "magnet-mnist": ("magnet", "MagNet's MNIST reformer (Meng and Chen, 2017): the auto-encoder trained on clean images "
                     "with Gaussian noise 0.1, used as a purifier, a baseline of the PuVAE paper's Table 2. The detectors "
                     "are not included."),
    "defense-gan-mnist": ("defense-gan", "Defense-GAN's MNIST generator (Samangouei et al., 2018), trained with WGAN-GP; "
                          "purifies by L = 200 gradient steps from R = 20 random codes, a baseline of the PuVAE paper's "
                          "Table 2."),
    "mnist-adv-classifier-a": ("classifier", "Classifier A of the PuVAE paper, adversarially trained on its own FGSM "
                               "images (eps 0.3, half clean and half adversarial loss), the adversarial-training baseline of Table 2."),
    "mnist-adv-classifier-b": ("classifier", "Classifier B of the PuVAE paper, adversarially trained on its own FGSM "
                               "images (eps 0.3, half clean and half adversarial loss), the adversarial-training baseline of Table 2."),
}


def measure(name: str, kind: str, folder: Path, test, gan_images: int) -> dict[str, float]:
    """Test-split metrics of one trained baseline (percentages)."""
    if kind == "classifier":
        return {"test_accuracy": accuracy(PaperClassifier.from_pretrained(folder), test)}
    purifier = load_purifier(folder)
    data = test.subset(0, gan_images) if kind == "defense-gan" else test
    suffix = "" if len(data) == len(test) else f"_first{len(data)}"
    return {f"test_accuracy_{net}_through{suffix}": defended_accuracy(
        PurifiedClassifier(PaperClassifier.from_pretrained(f"mnist-classifier-{net.lower()}"), purifier), data,
        batch_size=100) for net in ("A", "B")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/baselines"))
    parser.add_argument("--out", type=Path, default=ROOT / "hub")
    parser.add_argument("--gan-images", type=int, default=500)
    args = parser.parse_args()
    torch.manual_seed(0)
    test = load_dataset("mnist", "test")
    for name, (kind, description) in DESCRIPTIONS.items():
        source = args.work / name
        if not (source / WEIGHTS_NAME).is_file():
            print(f"{name}: not trained ({source} has no weights), skipped")
            continue
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        for item in ("config.json", WEIGHTS_NAME):
            shutil.copyfile(source / item, folder / item)
        config = json.loads((folder / "config.json").read_text())
        trained = config.get("metadata", {})
        metrics = {**trained.get("metrics", {}), **measure(name, kind, folder, test, args.gan_images)}
        training = {**trained.get("training", {}), "measured by": "python scripts/finish_baselines.py"}
        config["metadata"] = {"name": name, "dataset": "mnist", "description": description, "metrics": metrics,
                              "training": training}
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (folder / "README.md").write_text(model_card(name=name, model_type=kind, dataset="mnist", description=description,
                                                     metrics=metrics, training=training))
        print(f"{name}: {json.dumps(metrics)}")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_registry.py")], check=True)


if __name__ == "__main__":
    main()
