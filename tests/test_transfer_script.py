"""experiments/transfer_fgsm.py: whose FGSM images the purifier undoes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import load_script

from puvae_defense.attacks import fgsm

script = load_script("transfer_fgsm")


class _ThresholdPurifier:
    """Projects an image onto class 1 when its mean pixel exceeds 0.5, else class 0."""

    def project(self, images, sigma_eps, generator):
        return SimpleNamespace(labels=(images.mean((1, 2, 3)) > 0.5).long())


@pytest.mark.parametrize("chunk", [2, 500])
def test_transfer_scores_the_model_and_the_projection_on_the_models_own_fgsm(monkeypatch, chunk):
    monkeypatch.setattr(script, "CHUNK", chunk)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():  # class 1 when the mean pixel exceeds 0.5, like the purifier
        model[1].weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
        model[1].bias.copy_(torch.tensor([0.0, -2.0]))
    images = torch.tensor([0.1, 0.4, 0.45, 0.55, 0.6, 0.9]).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    labels, targets = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([1, 1, 1, 0, 0, 0])
    attacked = fgsm(model, images, targets, eps=0.3, targeted=True)
    with torch.no_grad():
        undefended = 100 * float((model(attacked).argmax(1) == labels).float().mean())
    projected = 100 * float(((attacked.mean((1, 2, 3)) > 0.5).long() == labels).float().mean())
    report = script.transfer(_ThresholdPurifier(), model, images, labels, targets)
    assert report == {"undefended": pytest.approx(undefended), "projection_right": pytest.approx(projected)}
    assert projected == undefended == pytest.approx(100 / 3)  # 0.3 moves every image but 0.1 and 0.9 across
