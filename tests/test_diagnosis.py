"""diagnose and adapt: does the purifier fit the user's classifier and data, and the fix."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from conftest import synthetic_dataset
from puvae_defense import PuVAE
from puvae_defense.baselines import NoPurifier
from puvae_defense.baselines.base import ImagePurifier
from puvae_defense.diagnosis import Diagnosis, adapt, diagnose
from puvae_defense.model import Projection


class Inverting(ImagePurifier):
    """A purifier that returns the negative image: classes survive, a classifier's reading does not."""

    image_shape = (1, 28, 28)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_marker", torch.zeros(0), persistent=False)

    def _purify(self, images, generator):
        return 1 - images


def _template_net() -> nn.Module:
    templates = synthetic_dataset(10).images.flatten(1)
    layer = nn.Linear(784, 10)
    with torch.no_grad():
        layer.weight.copy_(templates - templates.mean(0))
        layer.bias.zero_()
    return nn.Sequential(nn.Flatten(), layer).eval()


def test_a_purifier_that_keeps_accuracy_is_ok_and_silent() -> None:
    data = synthetic_dataset(40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = diagnose(_template_net(), NoPurifier(), data, limit=30)
    assert result.images == 30 and result.clean_accuracy == result.purified_accuracy == 100.0
    assert result.verdict == "ok" and result.projection_accuracy is None and "use it as it is" in str(result)


def test_a_purifier_that_loses_accuracy_warns_and_names_the_fix() -> None:
    data = synthetic_dataset(40)
    with pytest.warns(UserWarning, match=r"costs your classifier .* points .*Fine-tune it on your data"):
        result = diagnose(_template_net(), Inverting(), data)
    assert result.drop > 50 and result.verdict == "fine-tune the purifier"


def test_a_right_projection_the_classifier_misreads_says_adapt(tiny_vae: PuVAE, monkeypatch) -> None:
    data = synthetic_dataset(40)
    net = _template_net()
    monkeypatch.setattr(tiny_vae, "project", lambda x, sigma_eps, generator=None, **_: Projection(
        1 - x, net(x).argmax(1), torch.zeros(len(x), 10)))
    with pytest.warns(UserWarning, match="misreads its decodings"):
        result = diagnose(net, tiny_vae, data)
    assert result.verdict == "adapt the classifier" and result.projection_accuracy == 100.0
    assert result.disagreement == pytest.approx(100 - result.purified_accuracy)
    assert "puvae_defense.diagnosis.adapt" in str(result)


def test_adapt_teaches_a_copy_to_read_the_purifier() -> None:
    torch.manual_seed(0)
    data = synthetic_dataset(200)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    from puvae_defense.classifiers import train_adam_cosine

    train_adam_cosine(net, data, lambda m, x, y: nn.functional.cross_entropy(m(x), y), epochs=3, batch_size=32, lr=1e-2,
                      seed=0, device=torch.device("cpu"), progress=False, desc="t")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.warns(UserWarning):
        plain = diagnose(net, Inverting(), data)
    adapted = adapt(net, Inverting(), data, epochs=20, lr=1e-2, batch_size=32, progress=False)
    after = diagnose(adapted, Inverting(), data, warn=False)
    assert after.purified_accuracy > plain.purified_accuracy + 30 and after.clean_accuracy >= 90
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's model is untouched
    assert not adapted.training and adapted is not net


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: diagnose(3, NoPurifier(), synthetic_dataset(4)), TypeError, "classifier must be callable"),
    (lambda: diagnose(_template_net(), 3, synthetic_dataset(4)), TypeError, "purifier must be"),
    (lambda: diagnose(_template_net(), NoPurifier(), synthetic_dataset(4), tolerance=-1), ValueError, "tolerance"),
    (lambda: diagnose(_template_net(), NoPurifier(), synthetic_dataset(4), limit=0), ValueError, "empty"),
    (lambda: adapt(lambda x: x, NoPurifier(), synthetic_dataset(4)), TypeError, "nn.Module"),
    (lambda: adapt(_template_net(), NoPurifier(), synthetic_dataset(4), epochs=0), ValueError, "epochs"),
    (lambda: adapt(_template_net(), NoPurifier(), synthetic_dataset(4), clean_fraction=2), ValueError, "clean_fraction"),
])
def test_bad_arguments_are_clear_errors(call, error, message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_diagnosis_prints_a_report() -> None:
    text = str(Diagnosis(100, 99.0, 90.0, 98.5, 8.0, 1.0))
    assert "classifier alone" in text and "98.50%" in text and text.splitlines()[-1].startswith("verdict: adapt")


def test_purified_classifier_check_warns_on_the_users_data() -> None:
    from puvae_defense import PurifiedClassifier

    data = synthetic_dataset(30)
    with pytest.warns(UserWarning, match="costs your classifier 100.00 points"):
        result = PurifiedClassifier(_template_net(), Inverting()).check(data, tolerance=1.0)
    assert result.clean_accuracy == 100.0 and result.purified_accuracy == 0.0 and result.verdict != "ok"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PurifiedClassifier(_template_net(), NoPurifier()).check(data).verdict == "ok"


def test_purified_classifier_check_refuses_a_composed_input_transform() -> None:
    from puvae_defense import PurifiedClassifier

    model = PurifiedClassifier(_template_net(), NoPurifier(), input_transform=lambda x: x)
    with pytest.raises(ValueError, match="input_transform"):
        model.check(synthetic_dataset(4))


def test_diagnose_and_adapt_are_top_level_names() -> None:
    import puvae_defense

    assert puvae_defense.diagnose is diagnose and puvae_defense.adapt is adapt and puvae_defense.Diagnosis is Diagnosis
