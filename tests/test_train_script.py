"""scripts/train_mnist.py: which classifiers it trains again and which it reuses."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_script, synthetic_dataset

from puvae_defense.classifiers import ClassifierConfig, PaperClassifier

script = load_script("train_mnist")


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Replace the trainer by an untrained network; record (arch, epochs) of every call."""
    calls: list[tuple[str, int]] = []

    def fake_fit(dataset, arch, *, epochs, **_):
        calls.append((arch, epochs))
        return PaperClassifier(ClassifierConfig(arch))

    monkeypatch.setattr(script, "fit_classifier", fake_fit)
    return calls


def _save(folder: Path, arch: str, metadata: dict) -> None:
    PaperClassifier(ClassifierConfig(arch)).save_pretrained(folder, metadata=metadata)


def _args(tmp_path: Path, dataset: str = "fashion-mnist") -> argparse.Namespace:
    return argparse.Namespace(dataset=dataset, work=tmp_path / "work", out=tmp_path / "out", smoke=False)


def _data() -> dict:
    return {"train": synthetic_dataset(20), "val": synthetic_dataset(20, seed=1)}


def test_specs_follow_the_data_set():
    assert script.classifier_specs("mnist")["mnist-classifier-a"] == ("A", 5)
    fashion = script.classifier_specs("fashion-mnist")
    assert fashion["fashion-mnist-classifier-b"] == ("B", script.TARGET_EPOCHS["fashion-mnist"])
    assert fashion["fashion-mnist-source"] == ("source", 5)  # the PuVAE is trained against it


def test_a_run_with_other_epochs_is_trained_again(tmp_path, trained):
    args = _args(tmp_path)
    epochs = script.TARGET_EPOCHS["fashion-mnist"]
    _save(args.work / "fashion-mnist-source", "source", {"val_accuracy": 90.0, "epochs": 5, "seconds": 1.0,
                                                         "hardware": "cpu"})
    for arch in "ab":
        _save(args.work / f"fashion-mnist-classifier-{arch}", arch.upper(),
              {"val_accuracy": 90.0, "epochs": 5, "seconds": 1.0, "hardware": "cpu"})
    results = script.train_classifiers(args, _data(), torch.device("cpu"))
    assert trained == [("A", epochs), ("B", epochs)]  # the source (5 epochs, as specified) is kept
    meta = json.loads((args.work / "fashion-mnist-classifier-a" / "config.json").read_text())["metadata"]
    assert meta["epochs"] == epochs and results["fashion-mnist-classifier-a"]["training"]["epochs"] == epochs


def test_shipped_weights_are_reused_only_when_their_epochs_match(tmp_path, trained):
    args = _args(tmp_path, "mnist")
    for name, arch, epochs in [("mnist-source", "source", 5), ("mnist-classifier-a", "A", 5), ("mnist-classifier-b", "B", 3)]:
        _save(args.out / name, arch, {"metrics": {"val_accuracy": 99.0}, "training": {"epochs": epochs}})
    results = script.train_classifiers(args, _data(), torch.device("cpu"))
    assert trained == [("B", 5)]
    assert results["mnist-classifier-a"]["folder"] == args.out / "mnist-classifier-a"
    assert results["mnist-classifier-b"]["folder"] == args.work / "mnist-classifier-b"


def test_puvae_run_folder_is_tied_to_its_source_classifier(tmp_path: Path) -> None:
    folder = tmp_path / "puvae-robust"
    script.check_source(folder, "a" * 64)
    script.check_source(folder, "a" * 64)  # the same source resumes or reuses the run
    assert (folder / script.SOURCE_RECORD).read_text().strip() == "a" * 64
    with pytest.raises(SystemExit, match="another source classifier"):
        script.check_source(folder, "b" * 64)


def test_a_finished_run_is_scored_again_when_the_selector_changed(tmp_path: Path, tiny_vae, monkeypatch) -> None:
    selector_folder = tmp_path / "selector"
    PaperClassifier(ClassifierConfig("cw")).save_pretrained(selector_folder)
    digest = script.sha256_of(selector_folder / script.WEIGHTS_NAME)
    final = tmp_path / "work" / "puvae-robust" / "final"
    scores = {"clean": 50.0, "fgsm": 10.0, "projection": 60.0, "kl": 1.0, "spread": 0.5}
    tiny_vae.save_pretrained(final, metadata={"seconds": 1.0, "selection": {**scores, "selector_sha256": "older"}})
    calls: list[int] = []
    monkeypatch.setattr(script, "selection_metrics", lambda vae, selector, data: calls.append(len(data)) or
                        {**scores, "clean": 70.0})
    args = argparse.Namespace(**vars(_args(tmp_path)), recipes=["robust"], selector=selector_folder, deadline=None,
                              init=None)
    data = {"train": synthetic_dataset(20), "val": synthetic_dataset(20, seed=1)}

    sweep = script.train_puvae_candidates(args, data, torch.nn.Identity(), "s" * 64, torch.nn.Identity(),
                                          torch.device("cpu"), {})
    assert calls == [20] and sweep["robust"]["selection"] == {**scores, "clean": 70.0, "selector_sha256": digest}
    stored = json.loads((final / "config.json").read_text())["metadata"]["selection"]
    assert stored["selector_sha256"] == digest and stored["clean"] == 70.0
    script.train_puvae_candidates(args, data, torch.nn.Identity(), "s" * 64, torch.nn.Identity(), torch.device("cpu"), {})
    assert calls == [20]  # the same selector again: the stored scores are used


def test_classifier_folders_are_written_without_and_with_a_purifier(tmp_path: Path, trained, tiny_vae,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(tmp_path)
    data = {**_data(), "test": synthetic_dataset(20, seed=2)}
    classifiers = script.train_classifiers(args, data, torch.device("cpu"))
    nets, models = script.write_classifiers(args, data, torch.device("cpu"), classifiers)
    through = "test_accuracy_through_puvae_fashion_mnist"
    assert script.through_metric("fashion-mnist") == through
    for name in script.classifier_specs("fashion-mnist"):
        config = json.loads((args.out / name / "config.json").read_text())
        assert config["metadata"]["name"] == name and through not in config["metadata"]["metrics"]
        assert set(models[name]["metrics"]) == {"test_accuracy", "val_accuracy"}
        assert next(nets[name].parameters()).dtype == torch.float32  # loaded for use; stored in fp16
        assert name in (args.out / name / "README.md").read_text()
    # A later run with another command reuses the trained folders and keeps the command that trained them.
    monkeypatch.setattr(script, "_command", lambda: "python scripts/train_mnist.py --recipes robust")
    again = script.train_classifiers(args, data, torch.device("cpu"))
    assert all(info["training"] == classifiers[name]["training"] for name, info in again.items())
    # A later full run on a fresh machine (no work folder) reuses the shipped folders, as their epochs match,
    # and adds the accuracy through the purifier.
    shutil.rmtree(args.work)
    reused = script.train_classifiers(args, data, torch.device("cpu"))
    assert len(trained) == 3 and all(info["folder"] == args.out / name for name, info in reused.items())
    _, models = script.write_classifiers(args, data, torch.device("cpu"), reused, tiny_vae)
    assert all(through in m["metrics"] for m in models.values())


def test_a_fine_tuned_candidate_records_its_initial_model_and_attack_models(tmp_path: Path, tiny_vae, monkeypatch) -> None:
    from puvae_defense.training import EpochStats

    seen = {}

    def fake_fit(dataset, source, **kwargs):
        seen.update(kwargs)
        tiny_vae.training_history = (EpochStats(1, 1.0, {"total": 1.0}),)
        tiny_vae.training_init = {"name": kwargs["init"], "sha256": "i" * 64}
        return tiny_vae

    monkeypatch.setattr(script, "fit", fake_fit)
    monkeypatch.setattr(script, "selection_metrics", lambda vae, selector, data: {"clean": 99.0, "fgsm": 80.0, "spread": 0.7})
    selector_folder = tmp_path / "selector"
    PaperClassifier(ClassifierConfig("cw")).save_pretrained(selector_folder)
    torch.manual_seed(3)
    attacker = PaperClassifier(ClassifierConfig("C"))
    args = argparse.Namespace(**vars(_args(tmp_path, "mnist")), recipes=["finetune"], selector=selector_folder,
                              deadline=None, amp="bf16", epochs=4, val_size=1000, init="puvae-mnist")
    sweep = script.train_puvae_candidates(args, _data(), torch.nn.Identity(), "s" * 64, torch.nn.Identity(),
                                          torch.device("cpu"), {"runs/attackers/c": attacker})
    assert seen["init"] == "puvae-mnist" and seen["attack_models"] == [attacker]
    assert seen["recipe"].epochs == 4 and seen["recipe"].val_size == 1000 and seen["recipe"].amp == "bf16"
    saved = sweep["finetune"]
    assert saved["init"] == {"name": "puvae-mnist", "sha256": "i" * 64}
    assert saved["attack_models"] == {"runs/attackers/c": script.weights_fingerprint(attacker)}
    assert saved["init_training"] is None  # a registered name, not a folder: no card to read


def test_the_card_names_how_the_initial_model_was_trained() -> None:
    init = {"name": "hub/puvae-mnist", "sha256": "b" * 64}
    assert script.fine_tuned_from(init, None) == f"`hub/puvae-mnist` at weights sha256 `{'b' * 64}`"
    line = script.fine_tuned_from(init, {"command": "`python scripts/train_mnist.py --epochs 8`", "epochs": 8,
                                         "training time": "8320 s on CPU (2 threads) (training loops of all epochs)"})
    assert line.endswith("itself trained with `python scripts/train_mnist.py --epochs 8` (8 epochs, 8320 s on CPU)")
    chained = script.fine_tuned_from({"name": "hub/puvae-mnist", "sha256": "c" * 64}, {
        "command": "`python scripts/train_mnist.py --recipes finetune`", "epochs": 4,
        "training time": "1848 s on CPU (2 threads) (training loops of all epochs)", "fine-tuned from": line})
    assert chained.endswith(f"(4 epochs, 1848 s on CPU) and fine-tuned from {line}")
