"""Where does a smoothing denoiser lose the noisy images: its class choice, or the classifier's reading?

On Gaussian-noisy validation images (``clip(x + sigma * N(0, I))``, one draw, seed 0) this runs
:func:`puvae_defense.diagnose` with the held-out selector (never classifiers A or B) behind each
purifier: the selector's accuracy alone and through the purifier, the purifier's own class choice
(the nearest projection) and how often the selector disagrees with that choice. When the
projection's accuracy is about the selector's through the purifier, the images are lost in the
class choice (a wrong-class decoding reads as that class); when it is higher, the classifier
misreads right-class decodings (and ``adapt`` is the fix).

    python experiments/denoiser_diagnosis.py [--purifiers puvae-mnist-smooth puvae-mnist] [--images 1000]
        [--json docs/results/denoiser_diagnosis_mnist.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from puvae_defense import diagnose
from puvae_defense.data import load_dataset
from puvae_defense.selection import SELECTOR_EPOCHS, default_selector_path, load_selector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--purifiers", nargs="+", default=["puvae-mnist-smooth", "puvae-mnist"])
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--images", type=int, default=1000, help="first N validation images")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    val = load_dataset("mnist", "val")
    images, labels = val.images[:args.images], val.labels[:args.images]
    selector = load_selector(default_selector_path("mnist"), load_dataset("mnist", "train"), epochs=SELECTOR_EPOCHS["mnist"])
    rows = []
    for sigma in args.sigmas:
        noisy = (images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        for purifier in args.purifiers:
            result = diagnose(selector, purifier, TensorDataset(noisy, labels), limit=None, warn=False)
            rows.append({"sigma": sigma, "purifier": purifier, "selector alone": result.clean_accuracy,
                         "selector through the purifier": result.purified_accuracy,
                         "projection's class": result.projection_accuracy, "disagreement": result.disagreement})
            print(json.dumps(rows[-1]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"images": args.images, "split": "val", "sigma_eps": 0.1, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
