"""scripts/decision_rule_probe.py: the candidates' features and the fitted decision rules."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script, tiny_source

from puvae_defense.losses import gaussian_kl

script = load_script("decision_rule_probe")


def test_candidate_features_match_the_projection_and_the_posterior(tiny_vae, images):
    selector = tiny_source()
    features = script.candidate_features(tiny_vae, selector, images, torch.Generator().manual_seed(3))
    with torch.no_grad():
        projection = tiny_vae.project(images, 0.1, torch.Generator().manual_seed(3))
        mu, sigma = tiny_vae.encode(images, torch.full((len(images),), 4))
    assert set(features) == {"rmse", "rmse_mu", "l1", "kl", "read"}
    assert all(value.shape == (len(images), 10) for value in features.values())
    # the sampled candidates are the projection's: same distances, same choice
    torch.testing.assert_close(features["rmse"], projection.distances, rtol=1e-5, atol=1e-6)
    assert torch.equal(features["rmse"].argmin(1), projection.labels)
    torch.testing.assert_close(features["kl"][:, 4], gaussian_kl(mu, sigma, "sum"))
    assert not torch.equal(features["rmse_mu"], features["rmse"])  # mu-decoding, not the sample
    assert features["read"].dtype == torch.long and int(features["read"].max()) < 10


def _biased_distances(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Three classes; the true class's RMSE is 0.10 and the others' uniform in [0.12, 0.2],
    but every candidate of class 0 looks 0.05 farther than it is (a per-class bias)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    rmse = 0.12 + 0.08 * torch.rand(n, 3, generator=generator)
    rmse[torch.arange(n), labels] = 0.10
    rmse[:, 0] += 0.05
    features = {"rmse": rmse, "rmse_mu": rmse, "l1": rmse, "kl": torch.zeros(n, 3), "read": torch.arange(3).repeat(n, 1)}
    return features, labels


def test_offset_rule_learns_a_class_bias_that_argmin_misses():
    features, labels = _biased_distances(2000, seed=0)
    rule, fit = script.fit_offset_rule(features["rmse"], labels)
    held_out, held_labels = _biased_distances(1000, seed=1)
    argmin = script.score(lambda f: f["rmse"].argmin(1), held_out, held_labels)
    fitted = script.score(rule, held_out, held_labels)
    assert argmin["projection"] < 80  # class 0 is lost whenever a wrong candidate is under 0.15
    assert fitted["projection"] > 98
    assert fit["rmse_offsets"][0] > max(fit["rmse_offsets"][1:])  # class 0 is brought nearer
    assert fitted["selector"] == fitted["projection"]  # this selector reads every candidate as its class


def test_compare_rules_fits_on_one_half_and_scores_the_other():
    features, labels = _biased_distances(400, seed=2)
    report = script.compare_rules(features, features, labels)
    assert (report["fit_images"], report["scored_images"]) == (200, 200)
    rules = report["rules"]
    assert rules["true class (not available to a defense)"]["clean"]["projection"] == 100.0
    assert rules["per-class rmse offsets"]["clean"]["projection"] > rules["argmin rmse"]["clean"]["projection"]
    assert set(rules["argmin rmse"]) == {"clean", "fgsm"}


def test_main_rejects_a_cache_of_another_size(tmp_path, monkeypatch):
    features, labels = _biased_distances(10, seed=3)
    cache = tmp_path / "features.pt"
    torch.save({"labels": labels, "clean": features, "fgsm": features}, cache)
    monkeypatch.setattr("sys.argv", ["decision_rule_probe", "unused", "--n", "20", "--cache", str(cache)])
    with pytest.raises(SystemExit):
        script.main()
