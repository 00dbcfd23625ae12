"""experiments/perturbation_probe.py: how much of a perturbation a purifier passes on."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script

from puvae_defense import PurifiedClassifier
from puvae_defense.baselines import ImagePurifier

script = load_script("perturbation_probe")


class _Blend(ImagePurifier):
    """A purifier that keeps ``share`` of its input and replaces the rest by mid-grey."""

    image_shape = (1, 28, 28)

    def __init__(self, share: float) -> None:
        super().__init__()
        self.share = share

    def _purify(self, images, generator):
        return self.share * images + (1 - self.share) * 0.5


def test_kept_fraction_reads_identity_as_one_and_a_constant_as_zero() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    d = torch.randn_like(x) * 0.1
    d[2] = 0  # an image the perturbation left alone counts as 0, not NaN
    torch.testing.assert_close(script.kept_fraction(x, x + d, d), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(script.kept_fraction(x, x, d), torch.zeros(3))
    assert script.kept_fraction(x, x - 0.5 * d, d)[0] == pytest.approx(-0.5)


def test_random_signs_move_every_pixel_by_eps_inside_the_range() -> None:
    x = torch.full((2, 1, 28, 28), 0.5)
    moved = script.random_signs(x, 0.3, torch.Generator().manual_seed(0))
    assert torch.allclose((moved - x).abs(), torch.full_like(x, 0.3))
    assert 0.3 < float((moved > x).float().mean()) < 0.7
    assert float(script.random_signs(torch.ones(1, 1, 28, 28), 0.3, torch.Generator().manual_seed(0)).max()) == 1.0


def test_measure_reports_the_share_a_purifier_keeps_for_each_perturbation() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    x = torch.rand(6, 1, 28, 28) * 0.4 + 0.3  # away from the range's ends: no clipping below
    labels = net(x).argmax(1)
    perturbed = {"up": x + 0.1, "signs": script.random_signs(x, 0.1, torch.Generator().manual_seed(1))}
    blend = _Blend(0.25)
    result = script.measure(PurifiedClassifier(net, blend).eval(), x, perturbed, labels, seed=0)
    with torch.no_grad():
        assert result["accuracy_clean"] == pytest.approx(100 * float((net(blend(x)).argmax(1) == labels).float().mean()))
        for name, attacked in perturbed.items():
            out = blend(attacked)
            assert result[name]["kept"] == pytest.approx(0.25, abs=1e-5)
            assert result[name]["accuracy"] == pytest.approx(100 * float((net(out).argmax(1) == labels).float().mean()))
            assert result[name]["mse_to_attacked_input"] == pytest.approx(float((out - attacked).square().mean()), rel=1e-5)
            assert result[name]["mse_to_clean_image"] == pytest.approx(float((out - x).square().mean()), rel=1e-5)
