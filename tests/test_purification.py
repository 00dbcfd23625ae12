from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from puvae_defense import PuVAE
from puvae_defense.purification import purify_dataset

from conftest import synthetic_dataset


def test_purified_dataset_matches_batchwise_projection(tiny_vae: PuVAE, tmp_path) -> None:
    data = synthetic_dataset(23)
    out = purify_dataset(tiny_vae, data, batch_size=10, sigma_eps=0.0, progress=False)
    with torch.no_grad():
        reference = tiny_vae.project(data.images, 0.0)
    assert out.images.shape == (23, 1, 28, 28) and torch.equal(out.labels, data.labels)
    assert torch.equal(out.projection_labels, reference.labels)
    torch.testing.assert_close(out.images, reference.purified)
    torch.testing.assert_close(out.distances, reference.distances)
    assert out.images_per_second > 0
    saved = load_file(out.save(tmp_path / "p.safetensors", metadata={"purifier": "tiny"}))
    assert set(saved) == {"images", "projection_labels", "distances", "labels"}
    assert torch.equal(saved["projection_labels"], out.projection_labels)
    assert not list(tmp_path.glob("*.tmp"))


def test_sampled_purification_is_seeded(tiny_vae: PuVAE) -> None:
    data = synthetic_dataset(12)
    first = purify_dataset(tiny_vae, data, batch_size=5, sigma_eps=0.5, seed=3, progress=False)
    again = purify_dataset(tiny_vae, data, batch_size=5, sigma_eps=0.5, seed=3, progress=False)
    other = purify_dataset(tiny_vae, data, batch_size=5, sigma_eps=0.5, seed=4, progress=False)
    assert torch.equal(first.images, again.images) and not torch.equal(first.images, other.images)


def test_bad_arguments(tiny_vae: PuVAE) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        purify_dataset(tiny_vae, synthetic_dataset(4), batch_size=0)
    with pytest.raises(TypeError, match="PuVAE"):
        purify_dataset(torch.nn.Identity(), synthetic_dataset(4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="values in"):
        purify_dataset(tiny_vae, torch.utils.data.TensorDataset(torch.full((2, 1, 28, 28), 2.0), torch.zeros(2)), progress=False)


def test_purify_command(tmp_path, tiny_vae: PuVAE, mnist_root, capsys) -> None:
    from puvae_defense.cli import main

    tiny_vae.save_pretrained(tmp_path / "vae")
    assert main(["purify", "--purifier", str(tmp_path / "vae"), "--limit", "30", "--batch-size", "8",
                 "--out", str(tmp_path / "test.safetensors"), "--data-root", str(mnist_root)]) == 0
    assert "30 images" in capsys.readouterr().out
    assert load_file(tmp_path / "test.safetensors")["images"].shape == (30, 1, 28, 28)
