from __future__ import annotations

from pathlib import Path

import pytest
import torch

from puvae_defense import PuVAE
from puvae_defense.baselines import NoPurifier
from puvae_defense.selection import (
    SELECTOR_SETTINGS,
    choose_recipe,
    default_selector_path,
    selection_metrics,
    smoothing_metrics,
)

from conftest import synthetic_dataset, tiny_source


def test_choose_prefers_the_most_robust_of_the_accurate() -> None:
    scores = {"accurate": {"clean": 99.0, "fgsm": 50.0}, "robust": {"clean": 98.2, "fgsm": 70.0},
              "fragile-but-robust": {"clean": 90.0, "fgsm": 90.0}}
    assert choose_recipe(scores) == "robust"
    assert choose_recipe(scores, clean_target=98.5) == "accurate"
    assert choose_recipe({"a": {"clean": 90.0, "fgsm": 10.0}, "b": {"clean": 92.0, "fgsm": 5.0}}) == "b"
    with pytest.raises(ValueError, match="no candidates"):
        choose_recipe({})


def test_selector_is_held_out() -> None:
    assert SELECTOR_SETTINGS["arch"] not in ("A", "B", "source")


def test_selection_metrics_are_percentages_and_ratios(tiny_vae: PuVAE) -> None:
    data = synthetic_dataset(20)
    torch.manual_seed(0)
    scores = selection_metrics(tiny_vae, tiny_source().eval(), data)
    assert set(scores) == {"clean", "fgsm", "ifgsm", "projection", "kl", "spread"}
    assert all(0 <= scores[k] <= 100 for k in ("clean", "fgsm", "ifgsm", "projection"))
    assert scores["kl"] >= 0 and scores["spread"] >= 0


def test_selection_metrics_score_the_given_inference_noise(tiny_vae: PuVAE, monkeypatch) -> None:
    seen: list[float] = []
    real = PuVAE.project
    monkeypatch.setattr(PuVAE, "project", lambda self, images, sigma_eps=0.1, *a, **k: seen.append(sigma_eps) or real(
        self, images, sigma_eps, *a, **k))
    selection_metrics(tiny_vae, tiny_source().eval(), synthetic_dataset(20), sigma_eps=0.3)
    assert seen and set(seen) == {0.3}  # every projection it scores, clean, attacked and the purifier's own
    with pytest.raises(ValueError, match="sigma_eps"):
        selection_metrics(tiny_vae, tiny_source().eval(), synthetic_dataset(20), sigma_eps=-0.1)


def test_smoothing_metrics_score_clipped_gaussian_copies_averaged_over_draws(tiny_vae: PuVAE, monkeypatch) -> None:
    data, selector = synthetic_dataset(20), tiny_source().eval()
    seen: list[torch.Tensor] = []
    real = PuVAE.project
    monkeypatch.setattr(PuVAE, "project", lambda self, images, *a, **k: seen.append(images.clone()) or real(
        self, images, *a, **k))
    scores = smoothing_metrics(tiny_vae, selector, data, sigmas=(0.5,), draws=1, seed=3)
    assert set(scores) == {"clean", "noisy_0.5"} and all(0 <= v <= 100 for v in scores.values())
    clean, noisy = seen[0], seen[1]  # one batch each: the clean pass, then the single noise draw
    assert torch.equal(clean, data.images)
    expected = (data.images + 0.5 * torch.randn(data.images.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert torch.equal(noisy, expected)  # the copies a smoothed classifier classifies, clipped as SmoothedClassifier does
    monkeypatch.setattr(PuVAE, "project", real)
    both = smoothing_metrics(tiny_vae, selector, data, sigmas=(0.5,), draws=2, seed=3)["noisy_0.5"]
    first = smoothing_metrics(tiny_vae, selector, data, sigmas=(0.5,), draws=1, seed=3)["noisy_0.5"]
    second = smoothing_metrics(tiny_vae, selector, data, sigmas=(0.5,), draws=1, seed=4)["noisy_0.5"]
    assert both == pytest.approx((first + second) / 2)  # draw d uses seed + d
    assert set(smoothing_metrics(tiny_vae, selector, data, draws=1)) == {"clean", "noisy_0.25", "noisy_0.5", "noisy_1.0"}
    alone = smoothing_metrics(NoPurifier(), selector, data, sigmas=(0.5,), draws=1, seed=3)  # the selector alone, for scale
    with torch.no_grad():
        assert alone["noisy_0.5"] == pytest.approx(100 * (selector(expected).argmax(1) == data.labels).float().mean().item())
    with pytest.raises(TypeError, match="ImageDataset"):
        smoothing_metrics(tiny_vae, selector, list(data))
    with pytest.raises(ValueError, match="sigmas"):
        smoothing_metrics(tiny_vae, selector, data, sigmas=(0.5, 0.0))
    with pytest.raises(ValueError, match="sigmas"):
        smoothing_metrics(tiny_vae, selector, data, sigmas=(float("inf"),))
    with pytest.raises(ValueError, match="sigmas"):
        smoothing_metrics(tiny_vae, selector, data, sigmas=())
    with pytest.raises(ValueError, match="draws"):
        smoothing_metrics(tiny_vae, selector, data, draws=0)
    with pytest.raises(TypeError, match="ImageDataset"):
        selection_metrics(tiny_vae, selector, data.images)


def test_load_selector_trains_once_then_loads(tmp_path, monkeypatch) -> None:
    from puvae_defense import selection

    data = synthetic_dataset(40)
    calls = []
    real = selection.train_selector
    monkeypatch.setattr(selection, "train_selector", lambda train, epochs, device=None: calls.append(epochs) or real(
        train, epochs=epochs, device=device))
    first = selection.load_selector(tmp_path / "sel", data, epochs=1)
    second = selection.load_selector(tmp_path / "sel", data, epochs=1)
    assert calls == [1] and first.config.arch == "cw"
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with pytest.raises(ValueError, match="trained for 1 epochs, not 20"):
        selection.load_selector(tmp_path / "sel", data, epochs=20)


def test_a_selector_saved_without_metadata_counts_as_two_epochs(tmp_path) -> None:
    from puvae_defense import selection
    from puvae_defense.classifiers import ClassifierConfig, PaperClassifier

    PaperClassifier(ClassifierConfig("cw")).save_pretrained(tmp_path / "old")
    data = synthetic_dataset(4)
    assert selection.load_selector(tmp_path / "old", data, epochs=2).config.arch == "cw"
    with pytest.raises(ValueError, match="trained for 2 epochs, not 20"):
        selection.load_selector(tmp_path / "old", data, epochs=20)


def test_selector_epochs_cover_the_training_data_sets() -> None:
    from puvae_defense.selection import SELECTOR_EPOCHS

    assert SELECTOR_EPOCHS["mnist"] == 2 and SELECTOR_EPOCHS["fashion-mnist"] == 20


def test_default_selector_path_is_per_dataset() -> None:
    assert default_selector_path("mnist") == Path("selectors/heldout-cw")
    assert default_selector_path("fashion-mnist") == Path("selectors/heldout-cw-fashion-mnist")
