from __future__ import annotations

import pytest
import torch

from puvae_defense.classifiers import ClassifierConfig, PaperClassifier, accuracy, fit_classifier

from conftest import synthetic_dataset


@pytest.mark.parametrize(
    ("arch", "shape", "params"),
    [
        # A: 1*64*25+64 + 64*64*25+64 + 6400*128+128 + 128*10+10
        ("A", (1, 28, 28), 1_664 + 102_464 + 819_328 + 1_290),
        # B: 1*128*9+128 + 128*64*9+64 + 9216*128+128 + 1290
        ("B", (1, 28, 28), 1_280 + 73_792 + 1_179_776 + 1_290),
        ("C", (3, 32, 32), None),
        ("D", (3, 32, 32), None),
        ("source", (1, 28, 28), 832 + 51_264 + 262_400 + 2_570),
        # cw: 28 -> 26 -> 24 -> pool 12 -> 10 -> 8 -> pool 4; 64*4*4 = 1024 features
        ("cw", (1, 28, 28), 320 + 9_248 + 18_496 + 36_928 + 205_000 + 40_200 + 2_010),
    ],
)
def test_architectures(arch, shape, params) -> None:
    model = PaperClassifier(ClassifierConfig(arch, shape, 10))
    assert model(torch.rand(2, *shape)).shape == (2, 10)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params
    dropouts = [m.p for m in model if isinstance(m, torch.nn.Dropout)]
    assert dropouts == ([] if arch in ("source", "cw") else [0.25, 0.5])


def test_save_and_load_round_trip(tmp_path) -> None:
    model = PaperClassifier(ClassifierConfig("B"))
    model.save_pretrained(tmp_path / "b")
    loaded = PaperClassifier.from_pretrained(tmp_path / "b")
    assert loaded.config == model.config and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_fit_classifier_learns_synthetic_data() -> None:
    data = synthetic_dataset(200, classes=4)
    model = fit_classifier(data, "source", epochs=3, batch_size=32, progress=False)
    assert accuracy(model, data) > 90
    assert model.config.num_classes == 4


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="unknown classifier architecture"):
        ClassifierConfig("E")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        PaperClassifier(ClassifierConfig("C", (3, 8, 8)))


def test_too_small_images_say_which_sizes_work() -> None:
    from puvae_defense.classifiers import ClassifierConfig, PaperClassifier

    with pytest.raises(ValueError, match="too small for classifier A: it needs at least 9x9 pixels"):
        PaperClassifier(ClassifierConfig("A", (1, 8, 8)))
    assert PaperClassifier(ClassifierConfig("A", (1, 9, 9)))(torch.rand(1, 1, 9, 9)).shape == (1, 10)
