"""Our attacks against torchattacks 3.5.1 and CleverHans 4.0.0 on the undefended classifiers A and B.

For each classifier, on the first N test images (default 1,000), with identical settings:
the largest pixel difference between our adversarial images and each library's, and each
one's success rate (share of images misclassified). Writes docs/results/crosscheck_attacks.json.

    python scripts/crosscheck.py [--images 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchattacks
from cleverhans.torch.attacks.carlini_wagner_l2 import carlini_wagner_l2
from cleverhans.torch.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.torch.attacks.projected_gradient_descent import projected_gradient_descent

from puvae_defense import attacks
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset


#: CW-L2 with CleverHans' default settings (initial c 0.01, lr 0.005, 5 binary-search steps), not
#: our Table 2 harness (c 10, lr 0.2, one search step of 100 iterations: docs/evaluation.md).
CW_DEFAULTS = "CW-L2, 5 x 100 steps, CleverHans' defaults (c 0.01, lr 0.005)"


def targeted(attack):
    attack.set_mode_targeted_by_label(quiet=True)
    return attack


def cases(model, x, y, t, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Attack name -> {implementation: adversarial images}; settings as in docs/evaluation.md."""
    inf = np.inf
    out = {
        "FGSM eps 0.3 (untargeted)": {
            "ours": attacks.fgsm(model, x, y, eps=0.3),
            "torchattacks": torchattacks.FGSM(model, eps=0.3)(x, y),
            "cleverhans": fast_gradient_method(model, x, 0.3, inf, clip_min=0.0, clip_max=1.0, y=y)},
        "FGSM eps 0.3 (targeted, the paper's)": {
            "ours": attacks.fgsm(model, x, t, eps=0.3, targeted=True),
            "torchattacks": targeted(torchattacks.FGSM(model, eps=0.3))(x, t),
            "cleverhans": fast_gradient_method(model, x, 0.3, inf, clip_min=0.0, clip_max=1.0, y=t, targeted=True)},
        "iFGSM eps 0.3, 10 x 0.05 (targeted)": {
            "ours": attacks.ifgsm(model, x, t, eps=0.3, step_size=0.05, steps=10, targeted=True),
            "torchattacks": targeted(torchattacks.BIM(model, eps=0.3, alpha=0.05, steps=10))(x, t),
            "cleverhans": projected_gradient_descent(model, x, 0.3, 0.05, 10, inf, clip_min=0.0, clip_max=1.0, y=t,
                                                     targeted=True, rand_init=False)},
        "PGD eps 0.3, 40 x 0.01, no random start": {
            "ours": attacks.pgd(model, x, y, random_start=False),
            "torchattacks": torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=False)(x, y),
            "cleverhans": projected_gradient_descent(model, x, 0.3, 0.01, 40, inf, clip_min=0.0, clip_max=1.0, y=y,
                                                     rand_init=False)},
        "PGD eps 0.3, 40 x 0.01, random start": {
            "ours": attacks.pgd(model, x, y, generator=torch.Generator().manual_seed(seed)),
            "torchattacks": torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=True)(x, y)},
        "CW-L2, 1 x 100 steps, c 10, lr 0.05": {
            "ours": attacks.cw_l2(model, x, y, steps=100, binary_search_steps=1, initial_const=10.0, lr=0.05),
            "cleverhans": carlini_wagner_l2(model, x, 10, y=y, max_iterations=100, binary_search_steps=1,
                                            initial_const=10.0, lr=0.05)},
        CW_DEFAULTS: {
            "ours": attacks.cw_l2(model, x, y, steps=100, binary_search_steps=5),
            "cleverhans": carlini_wagner_l2(model, x, 10, y=y, max_iterations=100, binary_search_steps=5)},
    }
    torch.manual_seed(seed)  # torchattacks' RFGSM draws from the global generator
    rf = torchattacks.RFGSM(model, eps=0.1, alpha=0.05, steps=1)(x, y)
    out["RAND+FGSM eps 0.1, alpha 0.05 (untargeted)"] = {
        "ours": attacks.rand_fgsm(model, x, y, eps=0.1, alpha=0.05, generator=torch.Generator().manual_seed(seed)),
        "torchattacks": rf}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("docs/results/crosscheck_attacks.json"))
    args = parser.parse_args()
    test = load_dataset("mnist", "test")
    report: dict[str, object] = {"command": "python " + " ".join(sys.argv), "images": args.images,
                                 "torchattacks": torchattacks.__version__, "cleverhans": "4.0.0", "classifiers": {}}
    started = time.perf_counter()
    for name in ("A", "B"):
        model = PaperClassifier.from_pretrained(f"mnist-classifier-{name.lower()}").eval()
        sums: dict[str, dict[str, dict[str, float]]] = {}
        for batch, start in enumerate(range(0, args.images, args.batch_size)):
            x, y = test.images[start:start + args.batch_size], test.labels[start:start + args.batch_size]
            t = attacks.random_targets(y, 10, torch.Generator().manual_seed(batch))
            for attack, results in cases(model, x, y, t, seed=batch).items():
                cell = sums.setdefault(attack, {})
                with torch.no_grad():
                    for impl, adv in results.items():
                        entry = cell.setdefault(impl, {"fooled": 0.0, "max_abs_diff_vs_ours": 0.0})
                        entry["fooled"] += float((model(adv).argmax(1) != y).sum())
                        entry["max_abs_diff_vs_ours"] = max(entry["max_abs_diff_vs_ours"],
                                                            float((adv - results["ours"]).abs().max()))
        report["classifiers"][name] = {  # type: ignore[index]
            attack: {impl: {"success_percent": 100 * e["fooled"] / args.images,
                            "max_abs_diff_vs_ours": e["max_abs_diff_vs_ours"]} for impl, e in cell.items()}
            for attack, cell in sums.items()
        }
    report["wall_seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
