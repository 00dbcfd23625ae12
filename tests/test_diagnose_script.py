"""experiments/diagnose_fgsm.py: the summary of the purifier's choices."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script

script = load_script("diagnose_fgsm")


def test_choices_counts_rates_per_class_accuracy_and_confusions():
    classes = ("a", "b", "c")
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    chosen = torch.tensor([0, 1, 1, 1, 0, 1])
    targets = torch.tensor([1, 2, 0, 2, 0, 0])
    distances = torch.tensor([[0.1, 0.2, 0.3]] * 6)
    report = script.choices(labels, chosen, targets, distances, classes)
    assert report["right"] == pytest.approx(50.0)
    assert report["attacker_target"] == pytest.approx(100 / 6)  # image 4 only
    assert report["per_class_right"] == {"a": 50.0, "b": 100.0, "c": 0.0}
    assert report["top_confusions"] == [{"true": "a", "chosen": "b", "count": 1}, {"true": "c", "chosen": "a", "count": 1},
                                        {"true": "c", "chosen": "b", "count": 1}]
    assert report["rmse_true"] == pytest.approx((0.1 * 2 + 0.2 * 2 + 0.3 * 2) / 6)
    assert report["rmse_nearest_wrong"] == pytest.approx((0.2 * 2 + 0.1 * 2 + 0.1 * 2) / 6)


class _FixedCandidates:
    """A stand-in PuVAE on two-pixel images: pixel 0 of a candidate sets its distance to a zero
    image, pixel 1 the class a selector reads on it, ``(class + 1) / 10``."""

    num_classes = 3

    def __init__(self, distances: list[list[float]], read: list[list[int]]) -> None:
        read_pixel = (torch.tensor(read, dtype=torch.float) + 1) / 10
        self.values = torch.stack([torch.tensor(distances), read_pixel], -1).view(len(read), 3, 1, 1, 2)

    def candidates(self, images, sigma_eps, generator):
        return self.values

    def encode(self, images, labels):  # class 0 alone pays a KL of 50 nats
        return 10.0 * (labels == 0).float()[:, None], torch.ones(len(labels), 1)

    def decode_logits(self, mu, labels):  # the mu-decoding of class c reads as c; pixel 1 grows with c, and its BCE to 0 too
        read_pixel = (labels.float() + 1) / 10
        return torch.stack([torch.zeros_like(read_pixel), torch.logit(read_pixel)], -1).view(-1, 1, 1, 2)


def _selector(images):
    return torch.nn.functional.one_hot((images[..., 1].flatten() * 10).round().long() - 1, 3).float()


def test_selector_reading_scores_the_chosen_the_true_the_consistent_and_the_elbo_candidate():
    # nearest: class 1 for image 0, class 0 for image 1
    vae = _FixedCandidates([[2.0, 1.0, 3.0], [1.0, 2.0, 3.0]], read=[[0, 2, 2], [0, 1, 1]])
    images, labels = torch.zeros(2, 1, 1, 2), torch.tensor([0, 2])
    # image 0: nearest reads 2 (wrong); its true candidate reads 0; the first consistent of the
    # nearest three is class 0 (the nearest reads 2, not 1). Image 1: every rule lands on a wrong
    # reading. The ELBO rule picks class 1 for both (class 0 has the smallest cross-entropy but
    # pays the KL; class 2 the largest cross-entropy), which reads 1: wrong for both.
    assert script.selector_reading(vae, _selector, images, labels, top=3) == {
        "chosen": 0.0, "true_class": 50.0, "consistent_top3": 50.0, "elbo": 0.0}
    # with one candidate the consistency rule falls back to the nearest
    assert script.selector_reading(vae, _selector, images, labels, top=1)["consistent_top1"] == 0.0
