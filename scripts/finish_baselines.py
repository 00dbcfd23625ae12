"""Measure the trained baselines once on the test split and bundle them as ``hub/<name>``.

Takes the folders that ``puvae-defense train-baseline`` wrote into ``--work`` (for ``--dataset
mnist`` any of ``magnet-mnist``, ``defense-gan-mnist``, ``mnist-adv-classifier-a``,
``mnist-adv-classifier-b``; other data sets the same names with theirs),
copies each to ``--out/<name>`` with the registry's metadata (name, data set, description,
measured metrics, how it was trained) and a model card, then regenerates the registry
(``scripts/build_registry.py``). Measured here, on the test split:

- adversarially trained classifiers: clean accuracy (all 10,000 images);
- MagNet: accuracy of classifiers A and B (``--classifiers``) on its reconstructions (all 10,000 images);
- Defense-GAN: the same on the first ``--gan-images`` images (L = 200, R = 20 costs seconds
  per image on a CPU).

``--from-reports`` instead takes the clean accuracy behind an already bundled purifier from
``puvae-defense evaluate`` reports (a Defense-GAN column measured on a lent GPU, say): it checks
that each report measured these very weights (fingerprint) with the folder's own search, then
replaces the folder's accuracy metrics for the report's classifiers, rewrites its model card and
regenerates the registry. The weights are not touched.

Usage: python scripts/finish_baselines.py [--work runs/baselines] [--out hub] [--gan-images 500]
       [--dataset fashion-mnist] [--classifiers A=FOLDER B=FOLDER]
       python scripts/finish_baselines.py --from-reports docs/results/table2_defense_gan_mnist_A.json ...
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
from puvae_defense.data import HUB_DATASET_IDS, load_dataset
from puvae_defense.evaluation import PAPER_DATASETS, defended_accuracy
from puvae_defense.model_card import model_card
from puvae_defense.serialization import WEIGHTS_NAME, read_metadata, weights_fingerprint, write_metadata

ROOT = Path(__file__).resolve().parent.parent

#: The data sets whose baselines this script bundles.
DATASETS = ("mnist", "fashion-mnist")


def descriptions(dataset: str) -> dict[str, tuple[str, str]]:
    """Baseline name -> (model type, description) for a data set (MagNet and Defense-GAN keep
    their MNIST architectures on Fashion-MNIST: the images have the same shape)."""
    prose, number = PAPER_DATASETS[dataset]
    table = f"Table {number}"
    on = "" if dataset == "mnist" else f" on {prose}"
    trained_on = f", trained{on}" if on else ""

    def adversarial(arch: str) -> tuple[str, str]:
        return ("classifier", f"Classifier {arch} of the PuVAE paper, adversarially trained on its own FGSM images (eps 0.3, "
                f"half clean and half adversarial loss){trained_on}, the adversarial-training baseline of {table}.")

    return {
        f"magnet-{dataset}": ("magnet", f"MagNet's MNIST reformer (Meng and Chen, 2017){trained_on}: the auto-encoder "
                              "trained on clean images with Gaussian noise 0.1, used as a purifier, a baseline of the PuVAE "
                              f"paper's {table}. The detectors are not included."),
        f"defense-gan-{dataset}": ("defense-gan", "Defense-GAN's MNIST generator (Samangouei et al., 2018), "
                                   f"trained with WGAN-GP{on}; purifies by L = 200 gradient steps from R = 20 random codes, a "
                                   f"baseline of the PuVAE paper's {table}."),
        f"{dataset}-adv-classifier-a": adversarial("A"),
        f"{dataset}-adv-classifier-b": adversarial("B"),
    }


def measure(kind: str, folder: Path, test, gan_images: int, classifiers: dict[str, str]) -> dict[str, float]:
    """Test-split metrics of one trained baseline (percentages); ``classifiers``: name -> model
    behind a purifier."""
    if kind == "classifier":
        return {"test_accuracy": accuracy(PaperClassifier.from_pretrained(folder), test)}
    purifier = load_purifier(folder)
    data = test.subset(0, gan_images) if kind == "defense-gan" else test
    suffix = "" if len(data) == len(test) else f"_first{len(data)}"
    return {f"test_accuracy_{net}_through{suffix}": defended_accuracy(
        PurifiedClassifier(PaperClassifier.from_pretrained(model), purifier), data,
        batch_size=100) for net, model in classifiers.items()}


def metrics_from_report(folder: Path, report: dict, test_size: int) -> dict[str, float]:
    """``test_accuracy_<net>_through[_first<n>]`` for each classifier of an ``evaluate`` report
    that measured the purifier bundled in ``folder``; refuses a report made on other weights or
    with another search than the folder's, so a card never quotes another model's number."""
    config = json.loads((folder / "config.json").read_text())["config"]
    fingerprint = weights_fingerprint(load_purifier(folder))
    command = report["meta"]["command"]
    found = {}
    for label, source in report["meta"]["defense_sources"].items():
        if Path(source["purifier"]).name != folder.name:
            continue
        if source["fingerprint"] != fingerprint:
            raise SystemExit(f"{command!r} measured other {folder.name} weights (fingerprint {source['fingerprint'][:12]}) "
                             f"than {folder} ({fingerprint[:12]})")
        search = source.get("search", {})
        if any(search.get(key, config.get(key)) != config.get(key) for key in ("steps", "restarts")):
            raise SystemExit(f"{command!r} searched with {search}, not {folder.name}'s own steps / restarts")
        for net, result in report["classifiers"].items():
            suffix = "" if result["n"] == test_size else f"_first{result['n']}"
            found[f"test_accuracy_{net}_through{suffix}"] = result["clean_through"][label]
    return found


def restamp(out: Path, reports: list[Path]) -> None:
    """Replace bundled purifiers' accuracy metrics by the reports' (see the module's docstring)."""
    loaded = [json.loads(path.read_text()) for path in reports]
    test_sizes = [len(load_dataset(report["meta"]["settings"]["dataset"], "test")) for report in loaded]
    names = {Path(source["purifier"]).name for report in loaded for source in report["meta"]["defense_sources"].values()}
    for name in sorted(names):
        folder = out / name
        if not (folder / WEIGHTS_NAME).is_file():
            raise SystemExit(f"{name}: the reports measured it, but {folder} holds no bundled weights")
        measured = {path: metrics_from_report(folder, report, size) for path, report, size in zip(reports, loaded, test_sizes)}
        new = {key: value for metrics in measured.values() for key, value in metrics.items()}
        nets = {net for report, metrics in zip(loaded, measured.values()) if metrics for net in report["classifiers"]}
        meta = read_metadata(folder)
        kept = {key: value for key, value in meta.get("metrics", {}).items()
                if not any(key.startswith(f"test_accuracy_{net}_through") for net in nets)}
        by = "; ".join(f"{report['meta']['command']} ({report['meta']['device']}, {path.name})"
                       for (path, metrics), report in zip(measured.items(), loaded) if metrics)
        meta = {**meta, "metrics": {**kept, **new}, "training": {**meta.get("training", {}), "measured by": by}}
        write_metadata(folder, meta)
        model_type = json.loads((folder / "config.json").read_text())["model_type"]
        (folder / "README.md").write_text(model_card(name=name, model_type=model_type, dataset=meta["dataset"],
                                                     description=meta["description"], metrics=meta["metrics"],
                                                     training=meta["training"]))
        print(f"{name}: {json.dumps(new)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/baselines"))
    parser.add_argument("--out", type=Path, default=ROOT / "hub")
    parser.add_argument("--gan-images", type=int, default=500)
    parser.add_argument("--dataset", default="mnist", choices=DATASETS)
    parser.add_argument("--classifiers", nargs="+", default=None, metavar="NAME=MODEL",
                        help="classifiers measured behind the purifiers (default: A and B of --dataset, registered)")
    parser.add_argument("--from-reports", nargs="+", type=Path, default=None, metavar="REPORT",
                        help="take the bundled purifiers' clean accuracy from these evaluate reports instead of measuring")
    args = parser.parse_args()
    if args.from_reports:
        restamp(args.out, args.from_reports)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_registry.py")], check=True)
        return
    classifiers = dict(item.split("=", 1) for item in args.classifiers) if args.classifiers else {
        net: f"{args.dataset}-classifier-{net.lower()}" for net in ("A", "B")}
    card_dataset = HUB_DATASET_IDS[args.dataset]
    torch.manual_seed(0)
    test = load_dataset(args.dataset, "test")
    for name, (kind, description) in descriptions(args.dataset).items():
        source = args.work / name
        if not (source / WEIGHTS_NAME).is_file():
            print(f"{name}: not trained ({source} has no weights), skipped")
            continue
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        for item in ("config.json", WEIGHTS_NAME):
            shutil.copyfile(source / item, folder / item)
        trained = read_metadata(folder)
        metrics = {**trained.get("metrics", {}), **measure(kind, folder, test, args.gan_images, classifiers)}
        training = {**trained.get("training", {}), "measured by": "python scripts/finish_baselines.py"}
        write_metadata(folder, {"name": name, "dataset": card_dataset, "description": description, "metrics": metrics,
                                "training": training})
        (folder / "README.md").write_text(model_card(name=name, model_type=kind, dataset=card_dataset, description=description,
                                                     metrics=metrics, training=training))
        print(f"{name}: {json.dumps(metrics)}")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_registry.py")], check=True)


if __name__ == "__main__":
    main()
