"""experiments/test_time_probe.py: test-time variants of the projection's choice."""

from __future__ import annotations

import torch
from conftest import load_script

script = load_script("test_time_probe")


def test_distances_are_the_projections(tiny_vae, images):
    with torch.no_grad():
        expected = tiny_vae.project(images, 0.1, torch.Generator().manual_seed(7)).distances
    torch.testing.assert_close(script.distances(tiny_vae, images, seed=7), expected)


def test_refinement_starts_from_the_mu_decoding_and_lowers_the_error(tiny_vae, images):
    tiny_vae.requires_grad_(False)
    with torch.no_grad():
        at_mu = tiny_vae.project(images, 0.0).distances
    start = script.refined_distances(tiny_vae, images, steps=0, prior=0.0)
    torch.testing.assert_close(start, at_mu, rtol=1e-5, atol=1e-6)
    refined = script.refined_distances(tiny_vae, images, steps=30, prior=0.0)
    assert refined.shape == (len(images), 10)
    assert float(refined.mean()) < float(start.mean())  # fitting z to the image brings every class nearer
    anchored = script.refined_distances(tiny_vae, images, steps=30, prior=1e6)
    assert float((anchored - start).abs().max()) < float((refined - start).abs().max())  # the prior holds z at mu


def test_nearest_accuracy_counts_the_true_class_at_the_minimum():
    distances = torch.tensor([[0.1, 0.2], [0.3, 0.2], [0.5, 0.4]])
    assert script.nearest_accuracy(distances, torch.tensor([0, 1, 0])) == 66.67


def test_probe_scores_every_variant_and_the_paper_rule_first(tiny_vae, images):
    tiny_vae.requires_grad_(False)
    labels = torch.arange(len(images))
    report = script.probe(tiny_vae, images, labels, draws=2)
    assert list(report)[0] == "nearest RMSE (the paper's rule)"
    assert len(report) == 12 and all(0.0 <= value <= 100.0 for value in report.values())
    assert report["nearest RMSE (the paper's rule)"] == script.nearest_accuracy(script.distances(tiny_vae, images), labels)
