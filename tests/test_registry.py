"""The registry of pretrained models: schema, bundled files, generated docs, offline use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from puvae_defense import PurifiedClassifier, hub
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.serialization import sha256_of

ROOT = Path(__file__).resolve().parent.parent


def _build(entry: hub.PretrainedEntry) -> torch.nn.Module:
    return hub.model_class(entry.model_type)._from_config_dict(dict(entry.config))


def test_the_shipped_models_are_registered() -> None:
    for dataset in ("mnist", "fashion-mnist"):
        names = {f"puvae-{dataset}", f"{dataset}-classifier-a", f"{dataset}-classifier-b", f"{dataset}-source"}
        assert names <= set(hub.list_models())
    assert hub.list_models("puvae") == ["puvae-fashion-mnist", "puvae-fashion-mnist-smooth", "puvae-mnist", "puvae-mnist-smooth"]


@pytest.mark.parametrize("name", hub.list_models())
def test_entry_matches_its_model_and_bundled_files(name: str) -> None:
    entry = hub.get_entry(name)
    assert entry.repo_id == f"{hub.ORGANIZATION}/{name}"
    assert sum(p.numel() for p in _build(entry).parameters()) == entry.num_params
    assert entry.metrics and all(isinstance(v, float) for v in entry.metrics.values())
    folder = ROOT / "hub" / name
    assert sha256_of(folder / entry.filename) == entry.sha256
    config = json.loads((folder / "config.json").read_text())
    assert config["config"] == dict(entry.config) and config["torch_dtype"] == "float16"
    assert (folder / "README.md").read_text().startswith("---\nlibrary_name: puvae-defense")


def test_weights_doc_is_generated_from_the_registry() -> None:
    assert (ROOT / "docs" / "weights.md").read_text() == hub.registry_markdown()


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="Did you mean 'puvae-mnist'"):
        hub.get_entry("puvae-mnst")


def test_fresh_machine_uses_the_bundled_copy(tmp_path, monkeypatch) -> None:
    """No cache and no Hub: PurifiedClassifier(net, "puvae-mnist") still works, with a warning."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    net = PaperClassifier.from_pretrained(ROOT / "hub" / "mnist-classifier-a")
    with pytest.warns(UserWarning, match="bundled in this source checkout"):
        model = PurifiedClassifier(net, "puvae-mnist")
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_the_bundled_copy_warning_is_said_once_at_the_callers_line(tmp_path, monkeypatch) -> None:
    import warnings

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PaperClassifier.from_pretrained("mnist-classifier-a")
        PaperClassifier.from_pretrained("mnist-classifier-b")
        PurifiedClassifier(torch.nn.Flatten(), "puvae-mnist", check_num_classes=False)
    hub_warnings = [w for w in caught if "could not be reached" in str(w.message)]
    assert len(hub_warnings) == 1 and hub_warnings[0].filename == __file__  # the user's line, not the library's


@pytest.mark.parametrize("name", hub.list_models())
def test_every_model_exposes_its_metadata_and_input_transform(name: str) -> None:
    """As torchvision's Weights: meta (data set, classes, input shape and range, metrics, sha256) and transforms()."""
    entry = hub.get_entry(name)
    meta = entry.meta
    assert len(meta["categories"]) == entry.config.get("num_classes", 10) == 10
    assert meta["image_shape"] == (1, 28, 28) and meta["value_range"] == (0.0, 1.0) and meta["sha256"] == entry.sha256
    image = entry.transforms()(torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8))  # any size, RGB, uint8
    assert image.shape == meta["image_shape"] and image.dtype == torch.float32 and 0 <= float(image.min()) <= float(image.max()) <= 1
