"""Bundle a trained smoothing denoiser as hub/puvae-DATASET-smooth (stage `bundle` of scripts/smoothing.sh).

Copies the fp16 weights and config written by `puvae-defense train --recipe smooth`, adds the
registry's description and the measured metrics (the held-out selector through it on clean and
Gaussian-noisy validation images, `selection.smoothing_metrics`; classifiers A and B through it
on the whole clean test set), writes the model card and regenerates the registry.

    python scripts/bundle_smooth.py runs/smoothing/puvae-mnist-smooth
    python scripts/bundle_smooth.py runs/smoothing/puvae-fashion-mnist-smooth --dataset fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from puvae_defense import PurifiedClassifier, PuVAE
from puvae_defense.classifiers import PaperClassifier, accuracy
from puvae_defense.data import HUB_DATASET_IDS, load_dataset
from puvae_defense.evaluation import PAPER_DATASETS
from puvae_defense.model_card import model_card
from puvae_defense.selection import SELECTOR_EPOCHS, default_selector_path, load_selector, smoothing_metrics
from puvae_defense.serialization import CONFIG_NAME, WEIGHTS_NAME, read_metadata, write_metadata

ROOT = Path(__file__).resolve().parent.parent
#: How the recipe was chosen, per data set (on the validation split, the last 10,000 training images).
CHOSEN = {"mnist": "recipe chosen on the last 10,000",
          "fashion-mnist": "MNIST's recipe, preferred on the last 10,000 to puvae-fashion-mnist at every sigma"}


def description(dataset: str) -> str:
    """The registry's and model card's description of puvae-DATASET-smooth."""
    return (f"PuVAE (Table 1 of the paper, 1x28x28, 10 classes) fine-tuned from puvae-{dataset} as a denoiser for "
            "randomized smoothing: every training input Gaussian-noisy with a standard deviation drawn in [0, 1]. "
            "Put it in front of an unmodified classifier inside SmoothedClassifier to certify an L2 radius "
            "(docs/smoothing.md); it is not meant for purifying clean or L-inf-attacked inputs.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trained", type=Path, help="the folder `puvae-defense train --recipe smooth` wrote")
    parser.add_argument("--dataset", default="mnist", choices=sorted(CHOSEN))
    args = parser.parse_args()
    model_name, text = f"puvae-{args.dataset}-smooth", description(args.dataset)
    vae = PuVAE.from_pretrained(args.trained)
    train, val, test = (load_dataset(args.dataset, split) for split in ("train", "val", "test"))
    selector = load_selector(default_selector_path(args.dataset), train, epochs=SELECTOR_EPOCHS[args.dataset])
    val_metrics = smoothing_metrics(vae, selector, val.subset(0, 1000))
    metrics = {f"val_selector_{key.replace('noisy_', 'sigma')}_through_purifier": value for key, value in val_metrics.items()}
    for who in ("a", "b"):
        net = PaperClassifier.from_pretrained(f"{args.dataset}-classifier-{who}")
        torch.manual_seed(0)
        metrics[f"test_accuracy_{who.upper()}_through_purifier"] = round(accuracy(PurifiedClassifier(net, vae), test), 2)
    folder = ROOT / "hub" / model_name
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copyfile(args.trained / name, folder / name)
    metadata = read_metadata(folder)
    training = {**metadata["training"], "data": f"{PAPER_DATASETS[args.dataset][0]}, first 50,000 training images; {CHOSEN[args.dataset]}"}
    hub_dataset = HUB_DATASET_IDS[args.dataset]
    write_metadata(folder, {**metadata, "name": model_name, "dataset": hub_dataset, "description": text, "metrics": metrics,
                            "training": training})
    (folder / "README.md").write_text(model_card(
        name=model_name, model_type="puvae", dataset=hub_dataset, description=text, metrics=metrics,
        training={k: json.dumps(v) if isinstance(v, dict) else v for k, v in training.items()},
        body="Certified accuracy of classifiers A and B smoothed behind it: docs/smoothing.md."))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_registry.py")], check=True)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
