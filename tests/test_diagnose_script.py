"""scripts/diagnose_fgsm.py: the summary of the purifier's choices."""

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
