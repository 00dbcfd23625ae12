"""Deployment paths: torch.compile without graph breaks, ONNX export run by onnxruntime."""

from __future__ import annotations

import pytest
import torch

from puvae_defense import PurifiedClassifier, PuVAE


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()


def test_compiled_wrapper_has_no_graph_breaks_and_matches_eager(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    model = PurifiedClassifier(_net(), tiny_vae, sigma_eps=0.0).eval()
    explanation = torch._dynamo.explain(model)(images)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images))
        assert compiled(torch.rand(11, 1, 28, 28)).shape == (11, 10)  # another batch size, same graph


def test_compiled_wrapper_still_rejects_bad_values(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    compiled = torch.compile(PurifiedClassifier(_net(), tiny_vae, sigma_eps=0.0).eval(), backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        compiled(images)
        with pytest.raises(RuntimeError, match=r"values in \[0, 1\]"):
            compiled(images * 3)
        with pytest.raises(RuntimeError, match=r"values in \[0, 1\]"):
            compiled(torch.full_like(images, float("nan")))


def test_compiled_projection_samples_without_graph_breaks(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    compiled = torch.compile(tiny_vae.project, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        out = compiled(images, 0.1)
        chosen = out.distances.gather(1, out.labels[:, None]).squeeze(1)
    rmse = (out.purified - images).flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(chosen, rmse)  # the chosen candidate is the one whose distance is reported
    assert torch.equal(out.distances.argmin(1), out.labels)


def test_compiled_projection_with_a_generator_matches_eager(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    compiled = torch.compile(tiny_vae.project, backend="aot_eager")  # the generator's draw runs eagerly (one graph break)
    with torch.no_grad():
        eager = tiny_vae.project(images, 0.1, torch.Generator().manual_seed(3))
        ours = compiled(images, 0.1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours.distances, eager.distances)
    assert torch.equal(ours.labels, eager.labels)


onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from conftest import TINY_MNIST
    from puvae_defense.export import OnnxModel, export_onnx

    torch.manual_seed(0)
    vae = PuVAE(TINY_MNIST).eval()
    model = PurifiedClassifier(_net(), vae, sigma_eps=0.0).eval()
    folder = tmp_path_factory.mktemp("onnx")
    return model, OnnxModel(export_onnx(model, folder / "model.onnx")), OnnxModel(export_onnx(vae, folder / "vae.onnx"))


def test_onnx_model_makes_the_same_decisions(exported) -> None:
    from puvae_defense.export import compare_onnx

    model, runner, vae_runner = exported
    images = torch.rand(37, 1, 28, 28, generator=torch.Generator().manual_seed(5))  # not the traced batch size
    with torch.no_grad():
        reference = model(images)
        projection = model.purifier.project(images, 0.0)
    torch.testing.assert_close(torch.from_numpy(runner(images)), reference, rtol=1e-4, atol=1e-4)
    purified, labels, distances = vae_runner(images.numpy())
    assert torch.equal(torch.from_numpy(labels), projection.labels)
    torch.testing.assert_close(torch.from_numpy(purified), projection.purified, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(distances), projection.distances, rtol=1e-4, atol=1e-5)
    report = compare_onnx(model, runner, images, batch_size=16)
    assert report["images"] == 37 and report["decision_agreement"] == 100.0 and report["max_abs_diff"] < 1e-4


def test_onnx_runner_checks_inputs_like_the_torch_model(exported) -> None:
    _, runner, _ = exported
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        runner(torch.rand(2, 1, 28, 28) * 2)
    with pytest.raises(ValueError, match=r"expects \(B, 1, 28, 28\)"):
        runner(torch.rand(2, 3, 28, 28))
    with pytest.raises(TypeError, match="uint8"):
        runner(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        runner([[0.5]])


def test_export_refuses_sampled_projections_and_other_modules(tiny_vae: PuVAE, tmp_path) -> None:
    from puvae_defense.export import OnnxModel, export_onnx

    with pytest.raises(ValueError, match="sigma_eps=0"):
        export_onnx(PurifiedClassifier(_net(), tiny_vae, sigma_eps=0.1), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="PurifiedClassifier or a PuVAE"):
        export_onnx(_net(), tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError):
        OnnxModel(tmp_path / "missing.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_command(tmp_path, tiny_vae: PuVAE, mnist_root, capsys) -> None:
    import json

    from puvae_defense.classifiers import ClassifierConfig, PaperClassifier
    from puvae_defense.cli import main

    tiny_vae.save_pretrained(tmp_path / "vae")
    torch.manual_seed(0)
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    assert main(["export", "--purifier", str(tmp_path / "vae"), "--classifier", str(tmp_path / "clf"),
                 "--out", str(tmp_path / "m.onnx"), "--check", "20", "--data-root", str(mnist_root)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["images"] == 20 and report["decision_agreement"] == 100.0
