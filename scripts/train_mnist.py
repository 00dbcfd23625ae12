"""Train the MNIST models we ship: the source classifier, classifiers A and B, and puvae-mnist.

Rerunnable with fixed seeds; every stage is skipped when its output already exists, and
PuVAE runs resume from their checkpoints. The PuVAE recipe is chosen on the validation
split (the last 10,000 training images) among the candidates in ``RECIPES``:

1. candidates whose purified validation accuracy (source classifier on ``project(x)``,
   sigma_eps 0.1) reaches 97% are preferred; among them,
2. the highest defended validation accuracy under targeted FGSM (eps 0.3) computed on the
   source classifier wins (the defender's own model, not A or B); if none reaches 97%,
   the best purified validation accuracy wins.

The test split is used once, at the end, for the numbers in the model cards.

Usage:
    python scripts/train_mnist.py --device cuda --out hub --work runs/mnist
    python scripts/train_mnist.py --smoke            # minutes on a CPU: tiny subsets, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from puvae_defense import PuVAE, PurifiedClassifier
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import PaperClassifier, accuracy, fit_classifier
from puvae_defense.data import ImageDataset, load_dataset
from puvae_defense.evaluation import defended_accuracy
from puvae_defense.model_card import model_card
from puvae_defense.training import TrainConfig, evaluate_purifier, fit, latent_spread

#: Classifier name -> (architecture, epochs).
CLASSIFIERS = {"mnist-source": ("source", 5), "mnist-classifier-a": ("A", 5), "mnist-classifier-b": ("B", 5)}

#: Candidate PuVAE recipes, in the order they are tried: TrainConfig fields on top of the
#: paper's defaults (lambda_rc 0.01, lambda_kl 0.1, lambda_ce 10, BCE and KL summed per
#: image, Adam 1e-3, batch 128). docs/training.md explains each and how the shipped one
#: was chosen; on a 2-core CPU one full-length run takes about 1.5 hours.
_OURS = {"epochs": 12, "lr_schedule": "cosine", "lambda_proj": 1.0, "amp": "bf16"}
RECIPES: dict[str, dict[str, Any]] = {
    "proj-wrong-noise": {**_OURS, "lambda_wrong_ce": 10.0, "input_noise": 0.3, "noise_kind": "sign"},
    "proj": _OURS,
    "klmean-proj-wrong": {**_OURS, "lambda_wrong_ce": 10.0, "kl_reduction": "mean"},
    "paper": {"epochs": 12},
}
VAL_SIZE = 2000


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _environment(device: torch.device) -> dict[str, str]:
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return {"hardware": hardware, "torch": torch.__version__, "python": platform.python_version()}


def _fgsm_defended_accuracy(vae: PuVAE, source: torch.nn.Module, data: ImageDataset) -> float:
    """Gray-box check on validation: targeted FGSM (eps 0.3) on the source classifier, then purify."""
    attack = lambda x, y, g: fgsm(source, x, random_targets(y, 10, g), eps=0.3, targeted=True)  # noqa: E731
    return defended_accuracy(PurifiedClassifier(source, vae), data, attack=attack, seed=1)


def train_classifiers(args: argparse.Namespace, data: dict[str, ImageDataset], device: torch.device) -> dict[str, Any]:
    results = {}
    for name, (arch, epochs) in CLASSIFIERS.items():
        folder = args.work / name
        epochs = 1 if args.smoke else epochs
        if not (folder / "model.safetensors").is_file():
            _log(f"training {name} ({arch}, {epochs} epochs)")
            start = time.perf_counter()
            model = fit_classifier(data["train"], arch, epochs=epochs, device=device, seed=0, progress=False)
            seconds = time.perf_counter() - start
            metrics = {"val_accuracy": accuracy(model, data["val"], device=device)}
            model.save_pretrained(folder, metadata={"metrics": metrics, "epochs": epochs, "seconds": seconds,
                                                    **_environment(device)})
        saved = json.loads((folder / "config.json").read_text())["metadata"]
        _log(f"{name}: validation accuracy {saved['metrics']['val_accuracy']:.2f}% ({saved['seconds']:.0f} s)")
        results[name] = saved
    return results


def train_puvae_candidates(
    args: argparse.Namespace, data: dict[str, ImageDataset], source: torch.nn.Module, device: torch.device
) -> dict[str, Any]:
    sweep: dict[str, Any] = {}
    longest = 0.0
    for name, options in RECIPES.items():
        folder = args.work / f"puvae-{name}"
        if args.only_recipes and name not in args.only_recipes:
            continue
        done = (folder / "final" / "model.safetensors").is_file()
        if not done and sweep and args.deadline is not None and time.time() + longest > args.deadline:
            _log(f"skipping recipe {name!r}: it would not finish within --time-budget")
            continue
        if not done:
            recipe = TrainConfig(**{**options, **({"epochs": 1} if args.smoke else {})}, val_size=VAL_SIZE if not args.smoke else 200)
            _log(f"training puvae recipe {name!r}: {options}")
            start = time.perf_counter()
            vae = fit(data["train"], source, recipe=recipe, val_dataset=data["val"], checkpoint_dir=folder,
                      device=device, progress=False)
            seconds = time.perf_counter() - start
            history = [h.to_dict() for h in vae.training_history]
            val_fgsm = _fgsm_defended_accuracy(vae, source, data["val"].subset(0, 1000))
            vae.save_pretrained(folder / "final", metadata={"recipe": options, "seconds": seconds, "history": history,
                                                            "val_fgsm_defended_source": val_fgsm, **_environment(device)})
        saved = json.loads((folder / "final" / "config.json").read_text())["metadata"]
        longest = max(longest, saved["seconds"])
        last = saved["history"][-1]
        _log(f"recipe {name!r}: val purified {last['val_purified_acc']:.2f}%, projection {last['val_projection_acc']:.2f}%, "
             f"FGSM-defended {saved['val_fgsm_defended_source']:.2f}% ({saved['seconds']:.0f} s)")
        sweep[name] = saved
    return sweep


def choose(sweep: dict[str, Any]) -> str:
    def purified(name: str) -> float:
        return sweep[name]["history"][-1]["val_purified_acc"]

    good = [n for n in sweep if purified(n) >= 97.0]
    if good:
        return max(good, key=lambda n: sweep[n]["val_fgsm_defended_source"])
    return max(sweep, key=purified)


def limitations(metrics: dict[str, float], last: dict[str, float], spread: dict[str, float]) -> str:
    """Measured caveats for the purifier's model card."""
    lines = ["## Limitations (measured)", ""]
    clean = metrics["test_projection_accuracy"]
    if clean < 97.0:
        lines.append(f"- Clean test accuracy through the purifier is {clean:.2f}%, below our 97% aim and far below "
                     "what the paper's Table 2 implies; see docs/training.md for what was tried.")
    if last["val_kl"] < 0.1 or spread["reconstruction"] < 0.1 * spread["input"]:
        lines.append(f"- The latent code collapsed: validation KL {last['val_kl']:.4f} nats per image; within-class "
                     f"pixel spread {spread['reconstruction']:.4f} for reconstructions against {spread['input']:.4f} "
                     "for inputs. The decoder ignores z, so each class projection is one fixed template and the "
                     "purifier acts as a nearest-template classifier: the target classifier only ever sees those "
                     "ten images, which is why every classifier scores the same through it.")
    lines.append("- Robustness numbers, including white-box attacks that know the purifier, are in docs/evaluation.md.")
    return "\n".join(lines)


def write_hub(args: argparse.Namespace, data: dict[str, ImageDataset], device: torch.device,
              classifiers: dict[str, Any], sweep: dict[str, Any], chosen: str) -> dict[str, Any]:
    """fp16 Hub folders with model cards; test metrics measured on the fp16 weights users get."""
    test = data["test"]
    command = "python scripts/train_mnist.py " + " ".join(sys.argv[1:])
    nets = {}
    summary: dict[str, Any] = {"chosen_recipe": chosen, "command": command, **_environment(device), "models": {}}
    for name in CLASSIFIERS:
        PaperClassifier.from_pretrained(args.work / name).save_pretrained(args.out / name, dtype=torch.float16)
        nets[name] = PaperClassifier.from_pretrained(args.out / name, device=device)
    PuVAE.from_pretrained(args.work / f"puvae-{chosen}" / "final").save_pretrained(args.out / "puvae-mnist", dtype=torch.float16)
    vae = PuVAE.from_pretrained(args.out / "puvae-mnist", device=device)
    for name, (arch, _) in CLASSIFIERS.items():
        meta = classifiers[name]
        metrics = {"test_accuracy": accuracy(nets[name], test, device=device),
                   "test_accuracy_through_puvae_mnist": defended_accuracy(PurifiedClassifier(nets[name], vae), test),
                   "val_accuracy": meta["metrics"]["val_accuracy"]}
        training = {"data": "MNIST, first 50,000 training images (validation: last 10,000; test: official 10,000)",
                    "command": f"`{command}`", "epochs": meta["epochs"], "optimizer": "Adam 1e-3, cosine schedule, batch 128",
                    "wall time": f"{meta['seconds']:.0f} s on {meta['hardware']}", "seed": 0}
        description = (f"Classifier {arch} of the PuVAE paper's supplement (Defense-GAN family), trained by puvae-defense."
                       if arch != "source" else
                       "The source classifier M_s whose cross-entropy trains puvae-mnist (eq. 11-12); deliberately not A or B.")
        _finish_folder(args.out / name, name, "classifier", description, metrics, training)
        summary["models"][name] = {"metrics": metrics, "training": meta}
    meta = sweep[chosen]
    last = meta["history"][-1]
    metrics = {f"test_accuracy_{arch}_through_purifier": summary["models"][n]["metrics"]["test_accuracy_through_puvae_mnist"]
               for n, (arch, _) in CLASSIFIERS.items()}
    metrics.update({"test_projection_accuracy": evaluate_purifier(vae, nets["mnist-source"], test)["val_projection_acc"],
                    "val_purified_accuracy_source": last["val_purified_acc"],
                    "val_projection_accuracy": last["val_projection_acc"],
                    "val_fgsm_defended_source": meta["val_fgsm_defended_source"]})
    training = {"data": "MNIST, first 50,000 training images; recipe chosen on the last 10,000",
                "command": f"`{command}`", "recipe": f"`{json.dumps(meta['recipe'])}` on top of the paper's defaults",
                "epochs": len(meta["history"]), "wall time": f"{meta['seconds']:.0f} s on {meta['hardware']}",
                "source classifier": "mnist-source", "seed": 0}
    description = ("PuVAE (Table 1 of the paper, 1x28x28, 10 classes) trained on MNIST. It purifies an input by "
                   "projecting it onto every class and keeping the projection closest in RMSE.")
    body = limitations(metrics, last, latent_spread(vae, data["val"]))
    _finish_folder(args.out / "puvae-mnist", "puvae-mnist", "puvae", description, metrics, training, body)
    summary["models"]["puvae-mnist"] = {"metrics": metrics, "recipe": chosen}
    summary["sweep"] = {n: {"recipe": s["recipe"], "seconds": s["seconds"], "last_epoch": s["history"][-1],
                            "val_fgsm_defended_source": s["val_fgsm_defended_source"]} for n, s in sweep.items()}
    return summary


def _finish_folder(folder: Path, name: str, model_type: str, description: str,
                   metrics: dict[str, float], training: dict[str, Any], body: str = "") -> None:
    config = json.loads((folder / "config.json").read_text())
    config["metadata"] = {"name": name, "dataset": "mnist", "description": description, "metrics": metrics}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").write_text(model_card(name=name, model_type=model_type, dataset="mnist",
                                                 description=description, metrics=metrics, training=training, body=body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("hub"))
    parser.add_argument("--work", type=Path, default=Path("runs/mnist"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--only-recipes", nargs="*", default=None, help="train only these candidates")
    parser.add_argument("--smoke", action="store_true", help="tiny subsets and 1 epoch, to test the script")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; recipe candidates that would not finish in time are skipped")
    args = parser.parse_args()
    args.deadline = time.time() + args.time_budget if args.time_budget else None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    data = {split: load_dataset("mnist", split, root=args.data_root) for split in ("train", "val", "test")}
    if args.smoke:
        data = {"train": data["train"].subset(0, 512), "val": data["val"].subset(0, 200), "test": data["test"].subset(0, 200)}
    classifiers = train_classifiers(args, data, device)
    source = PaperClassifier.from_pretrained(args.work / "mnist-source", device=device)
    sweep = train_puvae_candidates(args, data, source, device)
    chosen = choose(sweep)
    _log(f"chosen recipe: {chosen!r}")
    summary = write_hub(args, data, device, classifiers, sweep, chosen)
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log(json.dumps({n: m["metrics"] for n, m in summary["models"].items()}, indent=1))


if __name__ == "__main__":
    main()
