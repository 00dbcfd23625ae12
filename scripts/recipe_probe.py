"""Short PuVAE training runs to compare recipes on the validation split (CPU-sized).

Each probe trains the paper-size PuVAE on the first ``--n`` training images for
``--epochs`` epochs against a small source classifier (trained here, 2 epochs, seed 0, if
``--source`` does not exist), then measures on validation images: projection accuracy,
purified accuracy of the source classifier, and its accuracy on purified targeted-FGSM
images (eps 0.3, computed on the source classifier). One JSON line per probe is appended
to ``--out``. The test split is never touched.

Usage (the probes of docs/training.md):
    python scripts/recipe_probe.py paper '{}'
    python scripts/recipe_probe.py proj '{"lambda_proj": 1.0}'
    python scripts/recipe_probe.py klmean_proj_wrong '{"lambda_proj": 1.0, "lambda_wrong_ce": 10.0, "kl_reduction": "mean"}'
    python scripts/recipe_probe.py proj_wrong_noise '{"lambda_proj": 1.0, "lambda_wrong_ce": 10.0, "input_noise": 0.3, "noise_kind": "uniform"}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from puvae_defense import PuVAE, PurifiedClassifier
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import PaperClassifier, accuracy, fit_classifier
from puvae_defense.data import ImageDataset, load_dataset
from puvae_defense.evaluation import defended_accuracy
from puvae_defense.training import fit


def fgsm_defended_accuracy(vae: PuVAE, source: torch.nn.Module, data: ImageDataset, *, eps: float = 0.3) -> float:
    """Source classifier's accuracy on purified targeted-FGSM images (attack computed on it)."""
    attack = lambda x, y, g: fgsm(source, x, random_targets(y, 10, g), eps=eps, targeted=True)  # noqa: E731
    return defended_accuracy(PurifiedClassifier(source, vae), data, attack=attack, seed=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("options", help="TrainConfig fields as JSON")
    parser.add_argument("--n", type=int, default=20_000, help="training images (the first n of the split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--source", type=Path, default=Path("runs/source_cpu"))
    parser.add_argument("--work", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("runs/probes.jsonl"))
    parser.add_argument("--fgsm-images", type=int, default=1000)
    args = parser.parse_args()
    train, val = load_dataset("mnist", "train"), load_dataset("mnist", "val")
    if not (args.source / "model.safetensors").is_file():
        source = fit_classifier(train, "source", epochs=2, progress=False)
        source.save_pretrained(args.source)
        print(f"source classifier: validation accuracy {accuracy(source, val):.2f}%")
    source = PaperClassifier.from_pretrained(args.source)
    folder = args.work / f"probe_{args.name}"
    options = json.loads(args.options)
    if (folder / "model.safetensors").is_file():
        vae, history, seconds = PuVAE.from_pretrained(folder), None, None
    else:
        start = time.perf_counter()
        vae = fit(train.subset(0, args.n), source, val_dataset=val, val_size=1000, epochs=args.epochs,
                  progress=False, **options)
        seconds = time.perf_counter() - start
        history = [h.to_dict() for h in vae.training_history]
        vae.save_pretrained(folder)
    record = {"name": args.name, "opts": options, "n": args.n, "epochs": args.epochs, "seconds": seconds,
              "history": history, "val_fgsm_defended_source": fgsm_defended_accuracy(vae, source, val.subset(0, args.fgsm_images)),
              "fgsm_images": args.fgsm_images}
    with open(args.out, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "history"}))


if __name__ == "__main__":
    main()
