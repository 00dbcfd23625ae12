"""Short PuVAE training runs to compare recipes on the validation split (CPU-sized).

Each probe trains the paper-size PuVAE with a named recipe (``--recipe``) plus JSON
overrides on the first ``--n`` training images for ``--epochs`` epochs (bf16 autocast),
against the shipped source classifier ``mnist-source``. It is then measured on the first
``--val-images`` images of the validation split with the **held-out selection classifier**
(architecture ``cw``, seed 1, trained here once if ``--selector`` does not exist; never A,
B or the source):

- ``clean``: its accuracy on purified clean images;
- ``fgsm``: its accuracy on purified targeted-FGSM images (eps 0.3, random wrong targets)
  computed on it, the paper's gray-box threat;
- ``projection``: the purifier's own choice is the true class;
- ``spread``: within-class spread of the mu-decodings over that of the inputs;
- ``kl``: validation KL in nats per image.

One JSON line per probe is appended to ``--out``. The test split is never touched.

Usage (the probe table of docs/training.md):
    python scripts/recipe_probe.py half-fgsm --recipe robust
    python scripts/recipe_probe.py fixed-eps --recipe robust '{"noise_amplitude": "fixed"}'
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
from puvae_defense.training import evaluate_purifier, fit, latent_spread


def selection_metrics(vae: PuVAE, selector: torch.nn.Module, data: ImageDataset) -> dict[str, float]:
    """The held-out classifier's clean and targeted-FGSM (eps 0.3) accuracy through the purifier."""
    defended = PurifiedClassifier(selector, vae)
    attack = lambda x, y, g: fgsm(selector, x, random_targets(y, 10, g), eps=0.3, targeted=True)  # noqa: E731
    spread = latent_spread(vae, data)
    return {"clean": defended_accuracy(defended, data, seed=1),
            "fgsm": defended_accuracy(defended, data, attack=attack, seed=1),
            "projection": evaluate_purifier(vae, selector, data)["val_projection_acc"],
            "kl": evaluate_purifier(vae, selector, data)["val_kl"],
            "spread": spread["reconstruction"] / spread["input"]}


def load_selector(path: Path, train: ImageDataset, val: ImageDataset) -> torch.nn.Module:
    """The held-out selection classifier, trained (cw architecture, seed 1, 3 epochs) if absent."""
    if not (path / "model.safetensors").is_file():
        model = fit_classifier(train, "cw", epochs=3, seed=1, progress=False)
        model.save_pretrained(path, dtype=torch.float16)
        print(f"selector: validation accuracy {accuracy(model, val):.2f}%")
    return PaperClassifier.from_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("options", nargs="?", default="{}", help="TrainConfig fields as JSON, on top of --recipe")
    parser.add_argument("--recipe", default="robust")
    parser.add_argument("--n", type=int, default=20_000, help="training images (the first n of the split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--source", default="mnist-source")
    parser.add_argument("--selector", type=Path, default=Path("runs/selection/heldout-cw"))
    parser.add_argument("--work", type=Path, default=Path("runs/probes"))
    parser.add_argument("--out", type=Path, default=Path("runs/probes.jsonl"))
    parser.add_argument("--val-images", type=int, default=1000)
    args = parser.parse_args()
    train, val = load_dataset("mnist", "train"), load_dataset("mnist", "val")
    selector = load_selector(args.selector, train, val)
    source = PaperClassifier.from_pretrained(args.source)
    options = json.loads(args.options)
    folder = args.work / args.name
    if (folder / "model.safetensors").is_file():
        vae, seconds = PuVAE.from_pretrained(folder), None
    else:
        start = time.perf_counter()
        vae = fit(train.subset(0, args.n), source, recipe=args.recipe, val_dataset=val, val_size=args.val_images,
                  epochs=args.epochs, amp="bf16", progress=False, checkpoint_dir=folder / "checkpoints", **options)
        seconds = time.perf_counter() - start
        vae.save_pretrained(folder)
    record = {"name": args.name, "recipe": args.recipe, "options": options, "n": args.n, "epochs": args.epochs,
              "seconds": seconds, "threads": torch.get_num_threads(),
              **selection_metrics(vae, selector, val.subset(0, args.val_images))}
    with open(args.out, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
