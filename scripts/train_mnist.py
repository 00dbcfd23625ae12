"""Train the models we ship for a data set: the source classifier, classifiers A and B, and the PuVAE.

``--dataset mnist`` (default) writes ``mnist-source``, ``mnist-classifier-a``/``-b`` and
``puvae-mnist``; ``--dataset fashion-mnist`` the same names with ``fashion-mnist``.

Rerunnable with fixed seeds; every stage is skipped when its output already exists, and
PuVAE runs resume from their checkpoints. Classifiers already shipped in ``--out`` are
reused as they are (their weights and training facts); only their "through the purifier"
metric is measured again. The PuVAE is trained with each named recipe in ``--recipes``
(``puvae_defense.recipes``) and the one to ship is chosen on the validation split with the
held-out selection classifier (``puvae_defense.selection``: never A, B or the source; trained
for ``SELECTOR_EPOCHS[dataset]``, and a finished PuVAE scored by another selector is scored again):

1. candidates whose selector accuracy through the purifier on clean validation images
   reaches the clean target are preferred (MNIST: 98%; other data sets: 3 points below the
   undefended selector's validation accuracy); among them,
2. the highest selector accuracy on purified targeted-FGSM (eps 0.3) validation images wins;
   if none reaches the target, the most accurate on clean images wins.

The test split is used once, at the end, for the numbers in the model cards.

Usage:
    python scripts/train_mnist.py --recipes robust --amp bf16 --out hub --work runs/mnist
    python scripts/train_mnist.py --dataset fashion-mnist --out hub --work runs/fashion-mnist
    python scripts/train_mnist.py --recipes finetune --init hub/puvae-mnist --epochs 4 --amp bf16 \
        --attack-models runs/attackers/mnist-source-s1 runs/attackers/mnist-C-s1 --val-size 1000 --out hub \
        --work runs/mnist-ens                      # fine-tune with ensemble adversarial inputs (docs/training.md)
    python scripts/train_mnist.py --smoke            # minutes on a CPU: tiny subsets, 1 epoch
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from puvae_defense import PuVAE, PurifiedClassifier
from puvae_defense.classifiers import PaperClassifier, accuracy, fit_classifier
from puvae_defense.data import HUB_DATASET_IDS, ImageDataset, load_dataset
from puvae_defense.evaluation import defended_accuracy
from puvae_defense.model_card import model_card
from puvae_defense.recipes import RECIPES, get_recipe
from puvae_defense.selection import (SELECTOR_EPOCHS, choose_recipe, default_selector_path, load_selector,
                                    selection_metrics)
from puvae_defense.serialization import WEIGHTS_NAME, read_metadata, sha256_of, weights_fingerprint, write_metadata
from puvae_defense.training import TrainConfig, evaluate_purifier, fit, latent_spread

#: Data set -> description of the splits.
DATASETS = {
    "mnist": "MNIST, first 50,000 training images (validation: last 10,000; test: official 10,000)",
    "fashion-mnist": "Fashion-MNIST, first 50,000 training images (validation: last 10,000; test: official 10,000)",
}


#: Epochs of classifiers A and B per data set. Five come within half a point of the paper's MNIST
#: test accuracy; on Fashion-MNIST five left A and B 4.0-4.3 points under it, so they train
#: longer (validation accuracies of both lengths in docs/training.md). The source classifier
#: keeps five: the PuVAE is trained against it.
TARGET_EPOCHS = {"mnist": 5, "fashion-mnist": 20}


def classifier_specs(dataset: str) -> dict[str, tuple[str, int]]:
    """Classifier name -> (architecture, epochs) for a data set."""
    epochs = TARGET_EPOCHS[dataset]
    return {f"{dataset}-source": ("source", 5), f"{dataset}-classifier-a": ("A", epochs),
            f"{dataset}-classifier-b": ("B", epochs)}


VAL_SIZE = 2000
SELECTION_IMAGES = 1000


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _environment(device: torch.device) -> dict[str, str]:
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return {"hardware": hardware, "torch": torch.__version__, "python": platform.python_version()}


def _command() -> str:
    return "python scripts/train_mnist.py " + " ".join(sys.argv[1:])


def train_classifiers(args: argparse.Namespace, data: dict[str, ImageDataset], device: torch.device) -> dict[str, Any]:
    """Name -> {"folder", "val_accuracy", "training"}: trained in ``--work`` or reused from ``--out``."""
    results = {}
    for name, (arch, epochs) in classifier_specs(args.dataset).items():
        folder, shipped = args.work / name, args.out / name
        epochs = 1 if args.smoke else epochs
        shipped_meta = read_metadata(shipped)
        if (not args.smoke and not (folder / "model.safetensors").is_file()
                and shipped_meta.get("training", {}).get("epochs") == epochs):
            _log(f"{name}: reusing the shipped weights in {shipped}")
            results[name] = {"folder": shipped, "val_accuracy": shipped_meta["metrics"]["val_accuracy"],
                             "training": shipped_meta["training"]}
            continue
        saved = read_metadata(folder)
        if saved.get("epochs") != epochs:
            if saved:
                _log(f"{name}: {folder} was trained for {saved.get('epochs')} epochs, not {epochs}: training it again")
            _log(f"training {name} ({arch}, {epochs} epochs)")
            start = time.perf_counter()
            model = fit_classifier(data["train"], arch, epochs=epochs, device=device, seed=0, progress=False)
            seconds = time.perf_counter() - start
            saved = {"val_accuracy": accuracy(model, data["val"], device=device), "epochs": epochs, "seconds": seconds,
                     "command": _command(), **_environment(device)}
            model.save_pretrained(folder, metadata=saved)
        _log(f"{name}: validation accuracy {saved['val_accuracy']:.2f}% ({saved['seconds']:.0f} s)")
        training = {"data": DATASETS[args.dataset],
                    "command": f"`{saved.get('command', _command())}`", "epochs": saved["epochs"], "optimizer": "Adam 1e-3, cosine schedule, batch 128",
                    "wall time": f"{saved['seconds']:.0f} s on {saved['hardware']}", "seed": 0}
        results[name] = {"folder": folder, "val_accuracy": saved["val_accuracy"], "training": training}
    return results


#: A PuVAE run folder's record of the source classifier it trains against (sha256 of its weights).
SOURCE_RECORD = "source.sha256"


def check_source(folder: Path, source_digest: str) -> None:
    """Record ``source_digest`` in a PuVAE run folder, or stop if the folder trained against another source.

    A finished or half-finished run (its checkpoints resume) belongs to one source classifier;
    reusing it after the source changed would ship a purifier that never saw that source.
    """
    record = folder / SOURCE_RECORD
    if record.is_file() and record.read_text().strip() != source_digest:
        raise SystemExit(f"{folder} was trained against another source classifier (sha256 {record.read_text().strip()}, "
                         f"now {source_digest}): move it away or pass another --work to train the PuVAE again")
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(source_digest + "\n")


def train_puvae_candidates(args: argparse.Namespace, data: dict[str, ImageDataset], source: torch.nn.Module,
                           source_digest: str, selector: torch.nn.Module, device: torch.device,
                           attackers: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Recipe name -> metadata of its trained PuVAE (recipe, history, validation selection scores).

    ``--init`` and ``attackers`` (name -> classifier, fit's ``attack_models``) apply to every recipe.

    Scores recorded with another selector than ``args.selector`` are measured again.
    """
    selector_digest = sha256_of(args.selector / WEIGHTS_NAME)
    # How the initial model was trained (its card's record), read before --out may replace it.
    initial_training = read_metadata(Path(args.init)).get("training") if args.init and Path(args.init).is_dir() else None
    sweep: dict[str, Any] = {}
    longest = 0.0
    for name in args.recipes:
        folder = args.work / f"puvae-{name}"
        done = (folder / "final" / "model.safetensors").is_file()
        if not done and sweep and args.deadline is not None and time.time() + longest > args.deadline:
            _log(f"skipping recipe {name!r}: it would not finish within --time-budget")
            continue
        check_source(folder, source_digest)
        if not done:
            changes = {"amp": args.amp, "val_size": 200 if args.smoke else args.val_size}
            if args.smoke or args.epochs:
                changes["epochs"] = 1 if args.smoke else args.epochs
            recipe = get_recipe(name).replace(**changes)
            _log(f"training puvae recipe {name!r}: {dataclasses.asdict(recipe)}")
            vae = fit(data["train"], source, recipe=recipe, val_dataset=data["val"], checkpoint_dir=folder,
                      device=device, progress=False, init=args.init, attack_models=list(attackers.values()))
            seconds = sum(epoch.seconds for epoch in vae.training_history)  # every epoch, resumed runs included
            scores = {**selection_metrics(vae, selector, data["val"].subset(0, SELECTION_IMAGES)),
                      "selector_sha256": selector_digest}
            vae.save_pretrained(folder / "final", metadata={
                "recipe": name, "options": dataclasses.asdict(recipe), "seconds": seconds, "init": vae.training_init,
                "init_training": initial_training,
                "attack_models": {n: weights_fingerprint(m) for n, m in attackers.items()},
                "history": [h.to_dict() for h in vae.training_history], "selection": scores, **_environment(device)})
        saved = read_metadata(folder / "final")
        if saved["selection"].get("selector_sha256") != selector_digest:  # scored by another selector: score again
            _log(f"recipe {name!r}: scoring it with the selector in {args.selector}")
            vae = PuVAE.from_pretrained(folder / "final", device=device)
            saved["selection"] = {**selection_metrics(vae, selector, data["val"].subset(0, SELECTION_IMAGES)),
                                  "selector_sha256": selector_digest}
            write_metadata(folder / "final", saved)
        longest = max(longest, saved["seconds"])
        scores = saved["selection"]
        _log(f"recipe {name!r}: selector through the purifier on validation: clean {scores['clean']:.2f}%, "
             f"targeted FGSM {scores['fgsm']:.2f}%, latent spread {scores['spread']:.2f} ({saved['seconds']:.0f} s)")
        sweep[name] = saved
    return sweep


def limitations(metrics: dict[str, float], last: dict[str, float], spread: dict[str, float], clean_target: float) -> str:
    """Measured caveats for the purifier's model card."""
    lines = ["## Limitations (measured)", ""]
    clean = min(metrics["test_accuracy_A_through_purifier"], metrics["test_accuracy_B_through_purifier"])
    if clean < clean_target:
        lines.append(f"- Clean test accuracy through the purifier is {clean:.2f}% for the weaker of classifiers A and B, "
                     f"below our {clean_target:.1f}% aim; see docs/training.md for what was tried.")
    if last["val_kl"] < 0.1 or spread["reconstruction"] < 0.1 * spread["input"]:
        lines.append(f"- The latent code collapsed: validation KL {last['val_kl']:.4f} nats per image; within-class "
                     f"pixel spread {spread['reconstruction']:.4f} for reconstructions against {spread['input']:.4f} "
                     "for inputs. Each class projection is one fixed template.")
    lines.append("- Gray-box robustness (the paper's Tables 2 and 3) is measured in docs/evaluation.md; where it is below "
                 "the paper, it says so.")
    lines.append("- Do not assume white-box robustness: PGD on the purifier's own RMSE distances (eps 0.3) left 0% of "
                 "the 0.1.0 purifier's test images correct (docs/results/0.1.0/). docs/evaluation.md says which "
                 "adaptive attacks have been run on this purifier.")
    return "\n".join(lines)


def through_metric(dataset: str) -> str:
    """Name of a classifier card's metric: test accuracy through the data set's PuVAE."""
    return f"test_accuracy_through_puvae_{dataset.replace('-', '_')}"


def write_classifiers(args: argparse.Namespace, data: dict[str, ImageDataset], device: torch.device,
                      classifiers: dict[str, Any], vae: PuVAE | None = None) -> tuple[dict[str, PaperClassifier], dict[str, Any]]:
    """fp16 Hub folders with model cards for the source and classifiers A and B.

    Test metrics are measured on the fp16 weights users get; with ``vae``, also through it.
    Returns the loaded networks and name -> {"metrics"}.
    """
    test, ds = data["test"], args.dataset
    data_name = DATASETS[ds].split(",")[0]
    nets, models = {}, {}
    for name, (arch, _) in classifier_specs(ds).items():
        info = classifiers[name]
        if info["folder"] != args.out / name:
            PaperClassifier.from_pretrained(info["folder"]).save_pretrained(args.out / name, dtype=torch.float16)
        nets[name] = net = PaperClassifier.from_pretrained(args.out / name, device=device)
        metrics = {"test_accuracy": accuracy(net, test, device=device), "val_accuracy": info["val_accuracy"]}
        if vae is not None:
            metrics[through_metric(ds)] = defended_accuracy(PurifiedClassifier(net, vae), test)
        description = (f"Classifier {arch} of the PuVAE paper's supplement (Defense-GAN family), trained on {data_name} by "
                       "puvae-defense." if arch != "source" else
                       f"The source classifier M_s whose cross-entropy trains puvae-{ds} (eq. 11-12) on {data_name}; "
                       "deliberately not A or B.")
        _finish_folder(args.out / name, name, "classifier", description, metrics, info["training"], ds)
        models[name] = {"metrics": metrics}
    return nets, models


def write_hub(args: argparse.Namespace, data: dict[str, ImageDataset], device: torch.device,
              classifiers: dict[str, Any], sweep: dict[str, Any], chosen: str) -> dict[str, Any]:
    """fp16 Hub folders with model cards for every model; test metrics measured on the fp16 weights users get."""
    test, ds = data["test"], args.dataset
    puvae_name, source_name, specs = f"puvae-{ds}", f"{ds}-source", classifier_specs(ds)
    PuVAE.from_pretrained(args.work / f"puvae-{chosen}" / "final").save_pretrained(args.out / puvae_name, dtype=torch.float16)
    vae = PuVAE.from_pretrained(args.out / puvae_name, device=device)
    nets, models = write_classifiers(args, data, device, classifiers, vae)
    summary: dict[str, Any] = {"chosen_recipe": chosen, "command": _command(), **_environment(device), "models": models}
    meta = sweep[chosen]
    last = meta["history"][-1]
    spread = latent_spread(vae, data["val"])
    metrics = {f"test_accuracy_{arch}_through_purifier": summary["models"][n]["metrics"][through_metric(ds)]
               for n, (arch, _) in specs.items()}
    metrics.update({"test_projection_accuracy": evaluate_purifier(vae, nets[source_name], test)["val_projection_acc"],
                    "val_projection_accuracy": last["val_projection_acc"],
                    "val_selector_clean_through_purifier": meta["selection"]["clean"],
                    "val_selector_fgsm_through_purifier": meta["selection"]["fgsm"],
                    "val_latent_spread_ratio": spread["reconstruction"] / spread["input"]})
    if "ifgsm" in meta["selection"]:  # scores recorded before the iterative metric existed lack it
        metrics["val_selector_ifgsm_through_purifier"] = meta["selection"]["ifgsm"]
    paper = dataclasses.asdict(TrainConfig())
    changed = {k: v for k, v in meta["options"].items() if paper[k] != v}
    training = {"data": DATASETS[ds].split(" (")[0] + "; recipe chosen on the last 10,000",
                "command": f"`{_command()}`",
                "recipe": f"`{chosen}` (`puvae_defense.recipes`): `{json.dumps(changed, sort_keys=True)}` on top of the paper's settings",
                "epochs": len(meta["history"]),
                "training time": f"{meta['seconds']:.0f} s on {meta['hardware']} (training loops of all epochs, resumed runs included)",
                "source classifier": source_name, "selection classifier": "held-out `cw` network, seed 1 (never A, B or the source)",
                "seed": 0}
    if meta.get("init"):
        training["fine-tuned from"] = fine_tuned_from(meta["init"], meta.get("init_training"))
    if meta.get("attack_models"):
        training["attack models"] = ", ".join(f"`{n}` (weights fingerprint `{d}`)" for n, d in meta["attack_models"].items())
    description = (f"PuVAE (Table 1 of the paper, 1x28x28, 10 classes) trained on {DATASETS[ds].split(',')[0]}. It purifies an input by "
                   "projecting it onto every class and keeping the projection closest in RMSE.")
    body = "\n".join([
        "## Latent code (measured)", "",
        f"Within-class pixel spread of the decodings of mu on 1,000 validation images: {spread['reconstruction']:.4f}, "
        f"against {spread['input']:.4f} for the inputs (ratio {metrics['val_latent_spread_ratio']:.2f}); validation KL "
        f"{last['val_kl']:.2f} nats per image. The projections follow the individual input, not a class template.", "",
        limitations(metrics, last, spread, args.clean_target)])
    _finish_folder(args.out / puvae_name, puvae_name, "puvae", description, metrics, training, ds, body)
    summary["models"][puvae_name] = {"metrics": metrics, "recipe": chosen}
    summary["sweep"] = {n: {"options": s["options"], "seconds": s["seconds"], "last_epoch": s["history"][-1],
                            "selection": s["selection"]} for n, s in sweep.items()}
    return summary


def fine_tuned_from(init: dict[str, str], initial_training: dict[str, Any] | None) -> str:
    """The model card's line for the initial model: its name, weights sha256 and, when known, how it was
    trained, every earlier stage of a chain of fine-tunings included."""
    line = f"`{init['name']}` at weights sha256 `{init['sha256']}`"
    if initial_training:
        line += (f", itself trained with {initial_training['command']} ({initial_training['epochs']} epochs, "
                 f"{initial_training['training time'].split(' (')[0]})")
        if initial_training.get("fine-tuned from"):  # a chain of fine-tunings: keep every earlier stage
            line += f" and fine-tuned from {initial_training['fine-tuned from']}"
    return line


def _finish_folder(folder: Path, name: str, model_type: str, description: str,
                   metrics: dict[str, float], training: dict[str, Any], dataset: str, body: str = "") -> None:
    write_metadata(folder, {"name": name, "dataset": HUB_DATASET_IDS[dataset], "description": description,
                            "metrics": metrics, "training": training})
    (folder / "README.md").write_text(model_card(name=name, model_type=model_type, dataset=HUB_DATASET_IDS[dataset],
                                                 description=description, metrics=metrics, training=training, body=body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("hub"))
    parser.add_argument("--work", type=Path, default=None, help="default runs/DATASET")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--recipes", nargs="+", default=["robust"], choices=sorted(RECIPES), help="candidate recipes")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' epoch counts")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast for PuVAE training")
    parser.add_argument("--selector", type=Path, default=None,
                        help="held-out selection classifier, trained here if absent (default selectors/heldout-cw, "
                             "with -DATASET for other data sets than MNIST)")
    parser.add_argument("--clean-target", type=float, default=None,
                        help="selector accuracy (%%) through the purifier a recipe must reach (default: 98 on MNIST, "
                             "3 points below the undefended selector elsewhere)")
    parser.add_argument("--classifiers-only", action="store_true",
                        help="train (or reuse) the source and classifiers A and B, write their folders in --out, and stop")
    parser.add_argument("--init", default=None,
                        help="fine-tune this PuVAE (folder or registered name) instead of training from random weights")
    parser.add_argument("--attack-models", nargs="+", default=[],
                        help="classifiers (folders or registered names) whose FGSM images the encoder also sees "
                             "(fit's attack_models; never A, B or the selector)")
    parser.add_argument("--val-size", type=int, default=VAL_SIZE,
                        help="validation images evaluated after every epoch")
    parser.add_argument("--smoke", action="store_true", help="tiny subsets and 1 epoch, to test the script")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; recipe candidates that would not finish in time are skipped")
    args = parser.parse_args()
    args.deadline = time.time() + args.time_budget if args.time_budget else None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    args.work = args.work or Path("runs") / args.dataset
    if args.selector is None:
        args.selector = default_selector_path(args.dataset)
    data = {split: load_dataset(args.dataset, split, root=args.data_root) for split in ("train", "val", "test")}
    if args.smoke:
        data = {"train": data["train"].subset(0, 512), "val": data["val"].subset(0, 200), "test": data["test"].subset(0, 200)}
        args.selector = args.work / "selector"
    classifiers = train_classifiers(args, data, device)
    if args.classifiers_only:
        _, models = write_classifiers(args, data, device, classifiers)
        _log(json.dumps({n: m["metrics"] for n, m in models.items()}, indent=1))
        return
    source_folder = classifiers[f"{args.dataset}-source"]["folder"]
    source = PaperClassifier.from_pretrained(source_folder, device=device)
    selector = load_selector(args.selector, data["train"], epochs=1 if args.smoke else SELECTOR_EPOCHS[args.dataset],
                             device=device)
    if args.clean_target is None:
        args.clean_target = 98.0 if args.dataset == "mnist" else accuracy(selector, data["val"], device=device) - 3.0
    _log(f"clean target for the recipe choice: {args.clean_target:.2f}%")
    attackers = {name: PaperClassifier.from_pretrained(name, device=device) for name in args.attack_models}
    sweep = train_puvae_candidates(args, data, source, sha256_of(source_folder / WEIGHTS_NAME), selector, device,
                                   attackers)
    chosen = choose_recipe({name: saved["selection"] for name, saved in sweep.items()}, clean_target=args.clean_target)
    _log(f"chosen recipe: {chosen!r}")
    summary = write_hub(args, data, device, classifiers, sweep, chosen)
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log(json.dumps({n: m["metrics"] for n, m in summary["models"].items()}, indent=1))


if __name__ == "__main__":
    main()
