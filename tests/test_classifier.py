from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.transforms import Normalize

from puvae_defense import PuVAE, PurifiedClassifier


def _net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, classes))


def test_forward_is_classifier_on_purified(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    net = _net().eval()
    model = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0)
    with torch.no_grad():
        expected = net(tiny_vae.project(images, sigma_eps=0.0).purified)
        torch.testing.assert_close(model(images), expected)
        torch.testing.assert_close(model.purify(images).purified, tiny_vae.project(images, 0.0).purified)


def test_preprocess_runs_between_purifier_and_classifier(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    net = _net().eval()
    normalize = Normalize((0.1307,), (0.3081,))
    model = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0, preprocess=normalize)
    with torch.no_grad():
        purified = tiny_vae.project(images, sigma_eps=0.0).purified
        torch.testing.assert_close(model(images), net(normalize(purified)))


def test_classifier_weights_and_mode_are_left_alone(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = PurifiedClassifier(net, tiny_vae)
    model(images).sum().backward()
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_follows_to_device_and_dtype(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    model = PurifiedClassifier(_net().eval(), tiny_vae, sigma_eps=0.0).to(torch.float64)
    out = model(images.double())
    assert out.dtype == torch.float64
    assert model.purifier.encoder_in.weight.dtype == torch.float64


def test_no_grad_and_autograd(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    model = PurifiedClassifier(_net().eval(), tiny_vae, sigma_eps=0.0)
    with torch.no_grad():
        assert not model(images).requires_grad
    x = images.clone().requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_loads_purifier_from_a_folder(tmp_path, tiny_vae: PuVAE, images: torch.Tensor) -> None:
    tiny_vae.save_pretrained(tmp_path / "vae")
    model = PurifiedClassifier(_net().eval(), tmp_path / "vae", sigma_eps=0.0)
    with torch.no_grad():
        torch.testing.assert_close(model.purify(images).distances, tiny_vae.project(images, 0.0).distances)
    model = PurifiedClassifier(_net().eval(), str(tmp_path / "vae"))
    assert isinstance(model.purifier, PuVAE)


def test_classifier_width_must_match_purifier_classes(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    model = PurifiedClassifier(_net(classes=7).eval(), tiny_vae)
    with pytest.raises(ValueError, match="7 logits but the purifier projects onto 10"):
        model(images)
    relaxed = PurifiedClassifier(_net(classes=7).eval(), tiny_vae, check_num_classes=False)
    assert relaxed(images).shape == (6, 7)


def test_unknown_purifier_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown pretrained model 'puvae-mnits'.*known models"):
        PurifiedClassifier(_net(), "puvae-mnits")


def test_bad_constructor_arguments(tiny_vae: PuVAE) -> None:
    with pytest.raises(TypeError, match="classifier must be"):
        PurifiedClassifier(42, tiny_vae)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="purifier must be"):
        PurifiedClassifier(_net(), 3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="preprocess"):
        PurifiedClassifier(_net(), tiny_vae, preprocess="normalize")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma_eps"):
        PurifiedClassifier(_net(), tiny_vae, sigma_eps=-1)


def test_empty_batch(tiny_vae: PuVAE) -> None:
    model = PurifiedClassifier(_net().eval(), tiny_vae)
    assert model(torch.rand(0, 1, 28, 28)).shape == (0, 10)


def test_missing_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        PurifiedClassifier(_net(), tmp_path)
    with pytest.raises(FileNotFoundError, match="no such weights folder"):
        PurifiedClassifier(_net(), tmp_path / "a" / "b" / "missing")


def test_a_purified_classifier_saves_and_loads_as_one_unit(tmp_path, tiny_vae: PuVAE, images: torch.Tensor) -> None:
    from puvae_defense.baselines import BitDepthSqueeze
    from puvae_defense.classifiers import ClassifierConfig, PaperClassifier

    torch.manual_seed(0)
    net = PaperClassifier(ClassifierConfig("source")).eval()
    model = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0, input_transform=BitDepthSqueeze(1), max_batch=40).eval()
    folder = model.save_pretrained(tmp_path / "defended")
    assert sorted(p.name for p in folder.iterdir()) == ["classifier", "purified_classifier.json", "purifier"]
    loaded = PurifiedClassifier.from_pretrained(folder)
    assert (loaded.sigma_eps, loaded.max_batch, loaded.input_transform.bits) == (0.0, 40, 1) and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    plain = PurifiedClassifier(_net().eval(), tiny_vae, sigma_eps=0.0)  # a user's own network: not saved
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="holds no classifier .* pass classifier="):
        PurifiedClassifier.from_pretrained(tmp_path / "plain")
    assert PurifiedClassifier.from_pretrained(tmp_path / "plain", classifier=_net().eval())(images).shape == (6, 10)
    with pytest.raises(ValueError, match="a preprocess cannot be saved"):
        PurifiedClassifier(net, tiny_vae, preprocess=Normalize((0.1,), (0.3,))).save_pretrained(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not a folder written by"):
        PurifiedClassifier.from_pretrained(tmp_path / "plain" / "purifier")
