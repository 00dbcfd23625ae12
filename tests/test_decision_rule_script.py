"""experiments/decision_rule_probe.py: the candidates' features and the fitted decision rules."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script, tiny_source

from puvae_defense.losses import gaussian_kl

script = load_script("decision_rule_probe")


def test_candidate_features_match_the_projection_and_the_posterior(tiny_vae, images):
    selector = tiny_source().eval()
    features = script.candidate_features(tiny_vae, selector, images, torch.Generator().manual_seed(3))
    with torch.no_grad():
        projection = tiny_vae.project(images, 0.1, torch.Generator().manual_seed(3))
        mu, sigma = tiny_vae.encode(images, torch.full((len(images),), 4))
    assert set(features) == {"rmse", "rmse_mu", "l1", "kl", "read", "input"}
    assert all(value.shape == (len(images), 10) for value in features.values())
    with torch.no_grad():
        torch.testing.assert_close(features["input"], selector(images))  # the input, not a candidate
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
    features = {"rmse": rmse, "rmse_mu": rmse, "l1": rmse, "kl": torch.zeros(n, 3), "read": torch.arange(3).repeat(n, 1),
                "input": torch.nn.functional.one_hot(labels, 3).float()}
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


def test_gates_take_the_inputs_class_only_inside_their_margin_or_confidence():
    rmse = torch.tensor([[0.10, 0.11, 0.30], [0.10, 0.20, 0.30], [0.10, 0.20, 0.30]])
    logits = torch.tensor([[0.0, 9.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.1, 0.0]])  # the input reads class 1
    features = {"rmse": rmse, "input": logits}
    # image 0: class 1 is 0.01 from the nearest; images 1 and 2: 0.10 away
    assert script.margin_gate(0.02)(features).tolist() == [1, 0, 0]
    assert script.margin_gate(0.005)(features).tolist() == [0, 0, 0]
    assert script.margin_gate(0.1)(features).tolist() == [1, 1, 1]
    # images 0 and 1 read class 1 with confidence 0.9998; image 2 with about 0.37
    assert script.confidence_gate(0.99)(features).tolist() == [1, 1, 0]
    assert script.confidence_gate(0.9999)(features).tolist() == [0, 0, 0]


def test_compare_rules_reports_the_gated_rules_and_the_undefended_selector():
    features, labels = _biased_distances(400, seed=4)
    attacked = dict(features, input=torch.nn.functional.one_hot((labels + 1) % 3, 3).float())  # fooled
    report = script.compare_rules(features, attacked, labels)
    assert report["selector_undefended"] == {"clean": 100.0, "fgsm": 0.0}
    always = report["rules"]["input's class (the gate always open)"]
    assert always["clean"]["projection"] == 100.0 and always["fgsm"]["projection"] == 0.0
    wide = report["rules"]["input's class if within 0.05 rmse of the nearest"]
    assert wide["clean"]["projection"] == 100.0  # the true class is always within 0.05 of the nearest
    assert wide["fgsm"]["projection"] < report["rules"]["argmin rmse"]["fgsm"]["projection"]


def test_main_rejects_a_cache_without_the_inputs_logits(tmp_path, monkeypatch):
    features, labels = _biased_distances(10, seed=3)
    del features["input"]
    cache = tmp_path / "features.pt"
    torch.save({"labels": labels, "clean": features, "fgsm": features}, cache)
    monkeypatch.setattr("sys.argv", ["decision_rule_probe", "unused", "--n", "10", "--cache", str(cache)])
    with pytest.raises(SystemExit, match="2"):
        script.main()


def test_main_rejects_a_cache_of_another_size(tmp_path, monkeypatch):
    features, labels = _biased_distances(10, seed=3)
    cache = tmp_path / "features.pt"
    torch.save({"labels": labels, "clean": features, "fgsm": features}, cache)
    monkeypatch.setattr("sys.argv", ["decision_rule_probe", "unused", "--n", "20", "--cache", str(cache)])
    with pytest.raises(SystemExit):
        script.main()
