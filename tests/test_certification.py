"""The certification harness: reports, resuming, and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import synthetic_dataset
from puvae_defense import PuVAE
from puvae_defense.certification import (CertifySettings, certification_markdown, certify_dataset, compare_reports,
                                         sign_test)
from puvae_defense.classifiers import ClassifierConfig, PaperClassifier, gaussian_noise_objective
from puvae_defense.cli import main
from puvae_defense.smoothing import SmoothedClassifier, radius_bound


def _template_classifier() -> nn.Module:
    """Nearest class template by inner product: right on most of the synthetic images."""
    templates = synthetic_dataset(10).images  # the first image of every class
    layer = nn.Linear(784, 10)
    with torch.no_grad():
        layer.weight.copy_(templates.flatten(1) - templates.flatten(1).mean(0))
        layer.bias.zero_()
    return nn.Sequential(nn.Flatten(), layer).eval()


def test_report_counts_right_certificates_per_radius() -> None:
    data = synthetic_dataset(8)
    settings = CertifySettings(sigma=0.25, n0=20, n=200, limit=6, batch_size=100)
    report = certify_dataset(SmoothedClassifier(_template_classifier(), 0.25, batch_size=100), data, settings,
                             show_progress=False)
    images, accuracy = report["images"], report["certified_accuracy"]
    assert images["labels"] == data.labels[:6].tolist() and len(images["radii"]) == 6
    right = [c == y for c, y in zip(images["certified"], images["labels"], strict=True)]
    assert accuracy["0"] == pytest.approx(100 * sum(right) / 6) and sum(right) > 3
    for radius in ("0.25", "0.5"):
        expected = sum(ok and r >= float(radius) for ok, r in zip(right, images["radii"], strict=True))
        assert accuracy[radius] == pytest.approx(100 * expected / 6)
    assert report["meta"]["largest_radius"] == pytest.approx(radius_bound(0.25, 200, 0.001))
    table = certification_markdown([("template", report)])
    assert table.startswith("| configuration | sigma | images | r = 0 |")
    assert "| template | 0.25 | 6 |" in table and "| - |" in table  # r = 2 is beyond what n = 200 can certify


def test_a_stopped_run_resumes_to_the_same_numbers(tmp_path) -> None:
    data = synthetic_dataset(8)
    smoothed = SmoothedClassifier(_template_classifier(), 0.5, batch_size=64)
    settings = CertifySettings(sigma=0.5, n0=10, n=100, limit=5, batch_size=64)
    whole = certify_dataset(smoothed, data, settings, show_progress=False)
    progress = tmp_path / "p.json"
    certify_dataset(smoothed, data, CertifySettings(sigma=0.5, n0=10, n=100, limit=2, batch_size=64),
                    progress_file=progress, key={"model": "m"}, show_progress=False)
    assert len(json.loads(progress.read_text())["radii"]) == 2
    resumed = certify_dataset(smoothed, data, settings, progress_file=progress, key={"model": "m"}, show_progress=False)
    assert resumed["images"] == whole["images"] and resumed["certified_accuracy"] == whole["certified_accuracy"]
    with pytest.raises(ValueError, match="another certification run"):
        certify_dataset(smoothed, data, settings, progress_file=progress, key={"model": "other"}, show_progress=False)
    with pytest.raises(ValueError, match="more than the 3 asked for"):
        certify_dataset(smoothed, data, CertifySettings(sigma=0.5, n0=10, n=100, limit=3, batch_size=64),
                        progress_file=progress, key={"model": "m"}, show_progress=False)


@pytest.mark.parametrize(("changes", "message"), [
    ({"sigma": 0.0}, "sigma must be"), ({"n0": 0}, "n0 must be"), ({"n": 5, "n0": 10}, "must not exceed n"),
    ({"alpha": 1.0}, "alpha must be"), ({"limit": 0}, "limit must be"), ({"seed": -1}, "seed must be"),
])
def test_bad_settings_are_clear_errors(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CertifySettings(**{"sigma": 0.5, **changes})


def test_settings_must_match_the_classifier_and_the_data() -> None:
    smoothed = SmoothedClassifier(_template_classifier(), 0.5)
    with pytest.raises(ValueError, match="sigma 0.5 differs"):
        certify_dataset(smoothed, synthetic_dataset(4), CertifySettings(sigma=0.25, limit=2), show_progress=False)
    with pytest.raises(ValueError, match="exceeds the 4 images"):
        certify_dataset(smoothed, synthetic_dataset(4), CertifySettings(sigma=0.5, limit=5), show_progress=False)


def test_certify_command(tmp_path, tiny_vae: PuVAE, mnist_root, capsys) -> None:
    tiny_vae.save_pretrained(tmp_path / "vae")
    torch.manual_seed(0)
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    common = ["certify", "--classifier", str(tmp_path / "clf"), "--sigma", "0.5", "--n0", "5", "--n", "20",
              "--limit", "3", "--batch-size", "30", "--data-root", str(mnist_root), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*common, "--purifier", str(tmp_path / "vae"), "--name", "t", "--progress", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "out" / "t.json").read_text())
    assert report["meta"]["command"].startswith("puvae-defense certify")
    assert report["meta"]["key"]["sigma_eps"] == 0.1 and len(report["images"]["radii"]) == 3
    assert "| t | 0.5 | 3 |" in capsys.readouterr().out
    import shutil

    shutil.copytree(tmp_path / "vae", tmp_path / "same-weights")  # the run is the weights, not the name they load by
    assert main([*common[:-1], "--limit", "4", "--quiet", "--purifier", str(tmp_path / "same-weights"), "--name", "t",
                 "--progress", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "out" / "t.json").read_text())["images"]["radii"][:3] == report["images"]["radii"]
    capsys.readouterr()
    assert main([*common, "--purifier", str(tmp_path / "vae"), "--name", "t", "--progress", str(tmp_path / "p.json"),
                 "--precision", "bf16"]) == 2  # bf16 is another base classifier: never mixed in
    assert "holds the progress of another certification run" in capsys.readouterr().err
    assert main([*common, "--name", "b", "--precision", "bf16"]) == 0
    assert json.loads((tmp_path / "out" / "b.json").read_text())["meta"]["key"]["precision"] == "bf16"
    assert main(common) == 0  # the classifier alone, default name
    assert (tmp_path / "out" / "certify_mnist_clf_none_sigma0.5.json").is_file()
    with pytest.raises(SystemExit, match="n0 .50. must not exceed n .20."):
        main(["--debug", *common[:-1], "--n0", "50"])


def test_gaussian_noise_objective_trains_on_clipped_noise() -> None:
    seen: list[torch.Tensor] = []
    net = lambda x: (seen.append(x), torch.zeros(x.shape[0], 10, requires_grad=True))[1]  # noqa: E731
    images = torch.full((4, 1, 28, 28), 0.5)
    gaussian_noise_objective(0.5)(net, images, torch.zeros(4, dtype=torch.long))
    assert 0 <= float(seen[0].min()) < 0.1 and 0.9 < float(seen[0].max()) <= 1  # noisy and clipped
    with pytest.raises(ValueError, match="sigma must be"):
        gaussian_noise_objective(0.0)


def test_certified_figure(tmp_path) -> None:
    from puvae_defense.visualize import certified_figure

    data = synthetic_dataset(6)
    report = certify_dataset(SmoothedClassifier(_template_classifier(), 0.5), data,
                             CertifySettings(sigma=0.5, n0=10, n=50, limit=4), show_progress=False)
    path = certified_figure({"template": report, "retrained": report}, tmp_path / "c.png", title="t",
                            styles={"retrained": {"linestyle": "--", "color": "tab:red"}})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wider = {**report, "meta": {**report["meta"], "settings": {**report["meta"]["settings"], "sigma": 1.0}}}
    two = certified_figure([("template", report), ("template", wider)], tmp_path / "two.png")  # one panel per sigma
    width = lambda png: int.from_bytes(png.read_bytes()[16:20], "big")  # noqa: E731  (the IHDR chunk's width)
    assert width(two) > 1.5 * width(path)


def test_a_randomised_base_resumes_to_the_same_numbers(tmp_path) -> None:
    """A base that samples from the global RNG (as PuVAE does with sigma_eps > 0) is seeded per image too."""
    data = synthetic_dataset(6)

    def base(images: torch.Tensor) -> torch.Tensor:  # votes drawn from the global RNG, biased to class 0
        return torch.randn(images.shape[0], 3) + torch.tensor([1.0, 0.0, 0.0])

    smoothed = SmoothedClassifier(base, 0.5, batch_size=50)
    settings = CertifySettings(sigma=0.5, n0=5, n=50, limit=4, batch_size=50)
    whole = certify_dataset(smoothed, data, settings, show_progress=False)
    torch.manual_seed(123)  # whatever the global state before
    certify_dataset(smoothed, data, CertifySettings(sigma=0.5, n0=5, n=50, limit=2, batch_size=50),
                    progress_file=tmp_path / "p.json", show_progress=False)
    torch.manual_seed(456)
    resumed = certify_dataset(smoothed, data, settings, progress_file=tmp_path / "p.json", show_progress=False)
    assert resumed["images"] == whole["images"]


def test_sign_test_matches_the_binomial_tails() -> None:
    assert sign_test(0, 5) == pytest.approx(2 / 32) and sign_test(5, 0) == sign_test(0, 5)
    assert sign_test(1, 4) == pytest.approx(2 * (1 + 5) / 32)  # P(X <= 1) + P(X >= 4) for 5 fair flips
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(0, 10) == pytest.approx(2 / 1024)
    with pytest.raises(ValueError, match="counts"):
        sign_test(-1, 2)


def _report(labels: list[int], certified: list[int], radii: list[float], largest: float = 2.0) -> dict:
    return {"meta": {"largest_radius": largest},
            "images": {"labels": labels, "certified": certified, "radii": radii}}


def test_compare_reports_counts_the_images_one_certifies_and_the_other_not() -> None:
    labels = [0, 1, 2, 3, 4, 5]
    first = _report(labels, [0, 1, 2, 9, -1, 5], [1.0, 0.3, 0.6, 1.2, 0.0, 0.9])
    second = _report(labels + [6], [0, 1, -1, 3, 4, 5, 6], [0.2, 0.8, 0.0, 1.2, 0.6, 0.9, 1.0], largest=1.6)
    by_radius = {c.radius: c for c in compare_reports(first, second)}
    assert sorted(by_radius) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]  # 2.0 is beyond the second's n
    zero = by_radius[0.0]  # first right on 0, 1, 2, 5; second on 0, 1, 3, 4, 5 (its 7th image is not shared)
    assert (zero.images, zero.only_first, zero.only_second) == (6, 1, 2)
    assert zero.first == pytest.approx(400 / 6) and zero.second == pytest.approx(500 / 6)
    assert zero.p_value == pytest.approx(sign_test(1, 2))
    half = by_radius[0.5]  # first: 0, 2, 5; second: 1, 3, 4, 5
    assert (half.only_first, half.only_second) == (2, 3)
    assert (by_radius[1.0].only_first, by_radius[1.0].only_second) == (1, 1)  # first: 0; second: 3
    assert all(c.only_first == c.only_second == 0 for c in compare_reports(first, first))


def test_compare_reports_refuses_other_images() -> None:
    with pytest.raises(ValueError, match="not the same images"):
        compare_reports(_report([0, 1], [0, 1], [1.0, 1.0]), _report([1, 0], [1, 0], [1.0, 1.0]))
    with pytest.raises(ValueError, match="no certified image"):
        compare_reports(_report([], [], []), _report([0], [0], [1.0]))


def test_compare_reports_names_what_is_not_a_report() -> None:
    good = _report([0], [0], [1.0])
    with pytest.raises(ValueError, match="the second report is not a certification report"):
        compare_reports(good, {"images": {"labels": [0]}})
    with pytest.raises(ValueError, match="the first report has 2 labels, 1 classes and 1 radii"):
        compare_reports(_report([0, 1], [0], [1.0]), good)


def test_compare_certificates_on_the_command_line(tmp_path, capsys) -> None:
    labels = [0, 1, 2, 3]
    (tmp_path / "ours.json").write_text(json.dumps(_report(labels, [0, 1, 2, -1], [1.0, 1.0, 0.1, 0.0])))
    (tmp_path / "theirs.json").write_text(json.dumps(_report(labels, [0, 9, 9, 9], [1.0, 1.0, 1.0, 1.0])))
    assert main(["compare-certificates", str(tmp_path / "ours.json"), str(tmp_path / "theirs.json"),
                 "--radii", "0", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "| r | images | ours (%) | theirs (%) | difference (points) | only ours | only theirs |" in out
    assert "| 0 | 4 | 75.0 | 25.0 | +50.0 | 2 | 0 | 0.5 |" in out and "| 0.5 | 4 | 50.0 | 25.0 | +25.0 | 1 | 0 | 1 |" in out
    (tmp_path / "other.json").write_text(json.dumps(_report([5, 5, 5, 5], [5, 5, 5, 5], [1.0] * 4)))
    assert main(["compare-certificates", str(tmp_path / "ours.json"), str(tmp_path / "other.json")]) == 2
    assert "not the same images" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["compare-certificates", str(tmp_path / "bad.json"), str(tmp_path / "ours.json")]) == 2
    assert "bad.json: not JSON" in capsys.readouterr().err
    assert main(["compare-certificates", str(tmp_path / "missing.json"), str(tmp_path / "ours.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    assert main(["compare-certificates", str(tmp_path), str(tmp_path / "ours.json")]) == 2
    assert "cannot be read" in capsys.readouterr().err
