"""scripts/autoattack.py on a tiny defended model: the suite's order, its counts and its interval.

The published run (200 test images, the shipped models) is the script itself; here the same
functions run with 2 iterations and 20 queries so that they stay fast.
"""

from __future__ import annotations


import pytest
import torch

from puvae_defense import PurifiedClassifier, PuVAE

from conftest import load_script

pytest.importorskip("torchattacks")
autoattack = load_script("autoattack")


def test_chunk_runs_the_suite_in_robustbench_order(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    defended = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0).eval()
    with torch.no_grad():
        labels = defended(images).argmax(1)  # every image starts correct, so each attack has work
    suite = autoattack.suite(defended, defended, eps=0.3, steps=2, queries=20, seed=0)
    assert [name for name, _ in suite] == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    record = autoattack.attack_chunk(defended, suite, images, labels, square_only=False)
    counts = [record["clean"]] + [record[f"after {name}"] for name, _ in suite]
    assert record["n"] == len(labels) == counts[0]
    assert counts == sorted(counts, reverse=True)  # an image once broken stays broken
    assert 0 <= record["square_alone"] <= len(labels)
    assert record["max_linf"] <= 0.3 + 1e-6 and record["seconds"] > 0
    alone = autoattack.attack_chunk(defended, suite, images, labels, square_only=True)
    assert "after APGD-CE" not in alone and alone["square_alone"] == record["square_alone"]
