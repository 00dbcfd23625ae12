"""The baseline defences: MagNet's reformer, adversarial training, and the shared purifier interface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from puvae_defense import PurifiedClassifier, attacks
from puvae_defense.baselines import ImagePurifier, MagNetConfig, MagNetReformer, fgsm_objective, fit_adversarial_classifier, fit_magnet
from puvae_defense.classifiers import ClassifierConfig, PaperClassifier
from puvae_defense.evaluation import EvalSettings, defended_accuracy, distance_logits, evaluate

from conftest import load_script, synthetic_dataset


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()


def test_magnet_reformer_shapes_and_range() -> None:
    torch.manual_seed(0)
    reformer = MagNetReformer()
    with torch.no_grad():
        out = reformer.purify(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 1, 28, 28) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert sum(p.numel() for p in reformer.parameters()) < 1000  # MagNet's MNIST auto-encoder is tiny
    assert MagNetReformer(MagNetConfig((3, 32, 32))).purify(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="even"):
        MagNetConfig((1, 27, 28))


def test_magnet_training_learns_to_reconstruct(mnist_root) -> None:
    from puvae_defense.data import load_dataset

    data = load_dataset("mnist", "val", root=mnist_root).subset(0, 256)
    torch.manual_seed(0)
    untrained = MagNetReformer().eval()
    trained = fit_magnet(data, epochs=10, batch_size=32, lr=1e-2, progress=False)
    images = data.images
    with torch.no_grad():
        assert F.mse_loss(trained.purify(images), images) < 0.8 * F.mse_loss(untrained.purify(images), images)
    assert not trained.training


def test_magnet_save_and_load(tmp_path) -> None:
    torch.manual_seed(0)
    reformer = MagNetReformer().eval()
    reformer.save_pretrained(tmp_path / "magnet")
    loaded = MagNetReformer.from_pretrained(tmp_path / "magnet")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded.purify(x), reformer.purify(x))
    from puvae_defense import PuVAE

    with pytest.raises(ValueError, match="'magnet' model, not a 'puvae'"):
        PuVAE.from_pretrained(tmp_path / "magnet")


def test_purified_classifier_takes_a_baseline_purifier(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    reformer, net = MagNetReformer().eval(), _net()
    model = PurifiedClassifier(net, reformer).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), net(reformer.purify(images)))
    projection = model.purify(images)
    assert projection.labels is None and projection.distances is None and model.num_classes is None
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        model(images * 3)
    with pytest.raises(ValueError, match=r"expects \(B, 1, 28, 28\)"):
        model(torch.rand(2, 3, 28, 28))


def test_harness_runs_on_a_baseline_purifier(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    data = synthetic_dataset(12)
    model = PurifiedClassifier(_net(), MagNetReformer().eval())
    assert 0 <= defended_accuracy(model, data) <= 100
    settings = EvalSettings(attacks=("FGSM",), adaptive=("PGD + BPDA",), adaptive_limit=4, batch_size=6)
    report = evaluate({"A": model.classifier}, {"magnet": {"A": model}}, data, settings, progress=False)
    assert report["classifiers"]["A"]["n"] == 12 and "PGD + BPDA" in report["classifiers"]["A"]["adaptive"]["magnet"]
    with pytest.raises(ValueError, match="has none"):
        distance_logits(model, 100.0)


def test_image_purifier_is_abstract() -> None:
    with pytest.raises(TypeError):
        ImagePurifier()  # type: ignore[abstract]


def test_fgsm_objective_is_goodfellows_mix() -> None:
    net = _net().train()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    adversarial = attacks.fgsm(net, x, y, eps=0.3)
    expected = 0.5 * F.cross_entropy(net(x), y) + 0.5 * F.cross_entropy(net(adversarial), y)
    torch.testing.assert_close(fgsm_objective(0.3, 0.5)(net, x, y), expected)
    torch.testing.assert_close(fgsm_objective(0.3, 1.0)(net, x, y), F.cross_entropy(net(x), y))
    with pytest.raises(ValueError, match="clean_weight"):
        fgsm_objective(0.3, 1.5)


def test_adversarial_training_runs_and_differs_from_plain_training() -> None:
    from puvae_defense.classifiers import fit_classifier

    data = synthetic_dataset(64)
    robust = fit_adversarial_classifier(data, "source", epochs=1, batch_size=32, progress=False)
    plain = fit_classifier(data, "source", epochs=1, batch_size=32, progress=False)
    assert not robust.training
    assert not torch.equal(robust[0].weight, plain[0].weight)


@pytest.mark.parametrize("defense", ["magnet", "adv-training", "defense-gan"])
def test_train_baseline_command(defense: str, tmp_path, monkeypatch, capsys) -> None:
    import functools
    import json

    from puvae_defense import data
    from puvae_defense.baselines import DefenseGAN, DefenseGANConfig, defense_gan
    from puvae_defense.classifiers import PaperClassifier
    from puvae_defense.cli import main

    monkeypatch.setattr(data, "load_dataset", lambda name, split, root=None: synthetic_dataset(100))
    # Defense-GAN's networks at a small width: the command's wiring is tested here, not the model
    monkeypatch.setattr(defense_gan, "DefenseGANConfig", functools.partial(DefenseGANConfig, width=4, latent_dim=8))
    out = tmp_path / defense
    assert main(["train-baseline", defense, "--out", str(out), "--epochs", "1", "--arch", "source", "--device", "cpu",
                 "--generator-steps", "2", "--checkpoint-dir", str(tmp_path / "ckpt"), "--val-images", "1"]) == 0
    metadata = json.loads((out / "config.json").read_text())["metadata"]
    assert metadata["training"]["defense"] == defense
    kind = {"magnet": MagNetReformer, "adv-training": PaperClassifier, "defense-gan": DefenseGAN}[defense]
    loaded = kind.from_pretrained(out)
    assert loaded(torch.rand(2, 1, 28, 28)).shape[0] == 2
    assert defense in capsys.readouterr().out


def _tiny_gan(**changes):
    from puvae_defense.baselines import DefenseGAN, DefenseGANConfig

    torch.manual_seed(0)
    return DefenseGAN(DefenseGANConfig(latent_dim=8, width=4, **changes)).eval()


def test_defense_gan_generator_and_critic_shapes() -> None:
    from puvae_defense.baselines import Critic

    gan = _tiny_gan()
    with torch.no_grad():
        images = gan.generate(torch.randn(5, 8))
    assert images.shape == (5, 1, 28, 28) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert Critic(1, 4)(images).shape == (5,)


def test_defense_gan_search_descends_and_keeps_the_best_restart() -> None:
    gan = _tiny_gan()
    x = torch.rand(3, 1, 28, 28)
    _, start = gan.project(x, torch.Generator().manual_seed(0), steps=0, restarts=4)
    _, searched = gan.project(x, torch.Generator().manual_seed(0), steps=20, restarts=4)
    assert (searched < start).all()
    _, one = gan.project(x, torch.Generator().manual_seed(0), steps=0, restarts=1)
    assert (start <= one + 1e-7).all()  # the first restart is among the four: the best is no worse
    assert all(p.grad is None for p in gan.parameters())


def test_defense_gan_search_returns_its_codes_and_continues_from_them() -> None:
    gan = _tiny_gan(steps=6, restarts=3)
    x = torch.rand(3, 1, 28, 28)
    found = gan.search(x, torch.Generator().manual_seed(0))
    purified, errors = gan.project(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(found.purified, purified)
    torch.testing.assert_close(found.errors, errors)
    with torch.no_grad():
        torch.testing.assert_close(gan.generate(found.codes), found.purified)  # the codes are the chosen restarts'
    same = gan.search(x, steps=0, start=found.codes)  # no step: the same point
    torch.testing.assert_close(same.purified, found.purified)
    further = gan.search(x, steps=10, start=found.codes)
    assert further.codes.shape == (3, 8) and not torch.equal(further.codes, found.codes)
    assert found.restart_codes.shape == (9, 8)
    every = gan.search(x, steps=0, start=found.restart_codes)  # all three restarts per image: the same choice
    torch.testing.assert_close(every.purified, found.purified)
    with pytest.raises(ValueError, match=r"k \(3 \* k, 8\) codes per image"):
        gan.search(x, start=found.codes[:2])
    with pytest.raises(ValueError, match="and restarts k if given"):
        gan.search(x, restarts=2, start=found.codes)


def test_tracked_projection_searches_once_then_continues(images: torch.Tensor) -> None:
    from puvae_defense.baselines import TrackedProjection

    gan = _tiny_gan(steps=6, restarts=3)
    found = gan.search(images, torch.Generator().manual_seed(0))
    moved = (images + 0.01).clamp(0, 1)
    for every_restart, codes in ((True, found.restart_codes), (False, found.codes)):
        track = TrackedProjection(gan, steps=2, every_restart=every_restart, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(track(images), found.purified)  # the first call is the defense's own search
        torch.testing.assert_close(track(moved), gan.search(moved, steps=2, start=codes).purified)
    with pytest.raises(ValueError, match="make a new TrackedProjection"):
        track(images[:2])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        TrackedProjection(gan, steps=0)
    with pytest.raises(RuntimeError, match="eval mode"):
        TrackedProjection(_tiny_gan().train())
    with pytest.raises(ValueError, match="must have values in"):
        track(images * 3)


def test_tracked_bpda_attacks_defense_gan_only(images: torch.Tensor) -> None:
    from puvae_defense.baselines import NoPurifier
    from puvae_defense.evaluation import _adaptive_attack

    net = _net()
    gan_model = PurifiedClassifier(net, _tiny_gan(steps=3, restarts=2)).eval()
    settings = EvalSettings(attacks=(), adaptive=("PGD + BPDA (tracked)", "PGD on the distances"), adaptive_limit=4,
                            batch_size=4, overrides={"pgd_steps": 3, "bpda_track_steps": 2})
    data = synthetic_dataset(4)
    report = evaluate({"A": net}, {"defense-gan": {"A": gan_model}}, data, settings, progress=False)
    assert set(report["classifiers"]["A"]["adaptive"]["defense-gan"]) == {"PGD + BPDA (tracked)"}
    x_adv = _adaptive_attack("PGD + BPDA (tracked)", gan_model, data.images, data.labels, settings.params,
                             torch.Generator().manual_seed(0))
    assert x_adv.shape == data.images.shape and float((x_adv - data.images).abs().max()) <= 0.3 + 1e-6
    assert not torch.equal(x_adv, data.images)
    with pytest.raises(ValueError, match="continues Defense-GAN's search; NoPurifier has none"):
        _adaptive_attack("PGD + BPDA (tracked)", PurifiedClassifier(net, NoPurifier()), data.images, data.labels,
                         settings.params, torch.Generator().manual_seed(0))


def test_defense_gan_with_another_search_shares_the_weights_and_bf16_follows_fp32(bf16_units) -> None:
    gan = _tiny_gan(steps=30, restarts=3)
    other = gan.with_search(steps=5, precision="bf16")
    assert (other.config.steps, other.config.restarts, other.config.precision) == (5, 3, "bf16")
    assert gan.config.precision == "fp32" and not other.training
    assert all(torch.equal(a, b) for a, b in zip(gan.state_dict().values(), other.state_dict().values()))
    x = torch.rand(4, 1, 28, 28)
    fp32, err32 = gan.project(x, torch.Generator().manual_seed(0))
    bf16, err16 = gan.with_search(precision="bf16").project(x, torch.Generator().manual_seed(0))
    assert bf16.dtype == torch.float32 and err16.dtype == torch.float32
    # same starts, same steps, bf16 products: the searches end close, not bit-identical
    assert not torch.equal(fp32, bf16)
    torch.testing.assert_close(err16, err32, rtol=0.05, atol=1e-4)
    with pytest.raises(ValueError, match="precision must be one of"):
        gan.with_search(precision="fp16")


def test_defense_gan_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch) -> None:
    monkeypatch.setattr("puvae_defense._checks.cpu_has_bf16", lambda: False)
    gan = _tiny_gan(steps=2, restarts=2).with_search(precision="bf16")
    with pytest.warns(RuntimeWarning, match="Defense-GAN precision='bf16': bf16 autocast on this CPU is emulated"):
        gan.project(torch.rand(2, 1, 28, 28))


def test_defense_gan_as_a_purifier(images: torch.Tensor, tmp_path) -> None:
    gan = _tiny_gan(steps=3, restarts=2)
    net = _net()
    model = PurifiedClassifier(net, gan).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.purify(images, generator=torch.Generator().manual_seed(1)).purified,
                                   gan.purify(images, torch.Generator().manual_seed(1)))
    with pytest.raises(RuntimeError, match="eval mode"):
        gan.train().purify(images)
    gan.eval().save_pretrained(tmp_path / "gan")
    from puvae_defense.baselines import DefenseGAN

    loaded = DefenseGAN.from_pretrained(tmp_path / "gan")
    torch.testing.assert_close(loaded.purify(images, torch.Generator().manual_seed(2)),
                               gan.purify(images, torch.Generator().manual_seed(2)))


def test_defense_gan_training_runs() -> None:
    from puvae_defense.baselines import DefenseGANConfig, fit_defense_gan

    gan = fit_defense_gan(synthetic_dataset(32), config=DefenseGANConfig(latent_dim=8, width=4), generator_steps=3,
                          critic_steps=2, batch_size=8, progress=False)
    assert not gan.training
    with pytest.raises(ValueError, match="fewer than batch_size"):
        fit_defense_gan(synthetic_dataset(4), generator_steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="28, 28"):
        DefenseGANConfig(image_shape=(3, 32, 32))


def test_defense_gan_training_resumes_where_an_uninterrupted_run_goes(tmp_path) -> None:
    from puvae_defense.baselines import DefenseGANConfig, fit_defense_gan

    data = synthetic_dataset(20)  # 2 batches of 8 per pass: the order is reshuffled across passes
    common = {"config": DefenseGANConfig(latent_dim=8, width=4), "critic_steps": 2, "batch_size": 8, "progress": False,
              "checkpoint_every": 2}
    straight = fit_defense_gan(data, generator_steps=5, checkpoint_dir=tmp_path / "a", **common)
    fit_defense_gan(data, generator_steps=2, checkpoint_dir=tmp_path / "b", **common)  # "interrupted" after 2 steps
    resumed = fit_defense_gan(data, generator_steps=5, checkpoint_dir=tmp_path / "b", **common)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint-000004.safetensors",
                                                                  "checkpoint-000005.safetensors"]
    with pytest.raises(ValueError, match="other settings"):
        fit_defense_gan(data, generator_steps=6, checkpoint_dir=tmp_path / "b", **{**common, "critic_steps": 3})
    with pytest.raises(ValueError, match="more than the 3 asked for"):
        fit_defense_gan(data, generator_steps=3, checkpoint_dir=tmp_path / "b", **common)


def test_load_purifier_dispatches_on_the_folder(tmp_path, tiny_vae) -> None:
    from puvae_defense import PuVAE
    from puvae_defense.baselines import DefenseGAN, NoPurifier, load_purifier

    torch.manual_seed(0)
    MagNetReformer().save_pretrained(tmp_path / "magnet")
    _tiny_gan().save_pretrained(tmp_path / "gan")
    tiny_vae.save_pretrained(tmp_path / "vae")
    assert isinstance(load_purifier(tmp_path / "magnet"), MagNetReformer)
    assert isinstance(load_purifier(tmp_path / "gan"), DefenseGAN)
    assert isinstance(load_purifier(tmp_path / "vae"), PuVAE)
    assert isinstance(load_purifier("none"), NoPurifier)
    assert isinstance(PurifiedClassifier(_net(), str(tmp_path / "magnet")).purifier, MagNetReformer)
    from puvae_defense.classifiers import ClassifierConfig, PaperClassifier

    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match="not a purifier"):
        load_purifier(tmp_path / "clf")


def test_evaluate_command_with_several_defenses(tmp_path, tiny_vae, mnist_root) -> None:
    import json

    from puvae_defense.classifiers import ClassifierConfig, PaperClassifier
    from puvae_defense.cli import main
    from puvae_defense.evaluation import weights_fingerprint

    torch.manual_seed(0)
    MagNetReformer().save_pretrained(tmp_path / "magnet")
    tiny_vae.save_pretrained(tmp_path / "vae")
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "adv")
    common = ["--classifiers", f"A={tmp_path / 'clf'}", "--attacks", "FGSM", "--limit", "8", "--adaptive", "bpda",
              "--adaptive-limit", "4", "--batch-size", "4", "--data-root", str(mnist_root), "--out", str(tmp_path / "out"),
              "--quiet"]
    assert main(["evaluate", "--defenses", f"puvae={tmp_path / 'vae'}", f"magnet={tmp_path / 'magnet'}", "adv-training",
                 f"puvae+squeeze={tmp_path / 'vae'}", "adv-training-transfer", "--adv-classifiers", f"A={tmp_path / 'adv'}",
                 "--name", "all", *common]) == 0
    report = json.loads((tmp_path / "out" / "all.json").read_text())
    sources = report["meta"]["defense_sources"]
    assert report["meta"]["defenses"] == ["puvae", "magnet", "adv-training", "puvae+squeeze", "adv-training-transfer"]
    assert report["meta"]["transfer"] == ["adv-training-transfer"]
    assert {k: v["type"] for k, v in sources.items()} == {"puvae": "puvae", "magnet": "magnet", "adv-training": "none",
                                                          "puvae+squeeze": "puvae", "adv-training-transfer": "none"}
    assert "input_transform" not in sources["puvae"] and "bits=1" in sources["puvae+squeeze"]["input_transform"]
    assert sources["puvae"]["fingerprint"] == weights_fingerprint(tiny_vae)
    assert sources["adv-training"]["classifiers"] == sources["adv-training-transfer"]["classifiers"] == [f"A={tmp_path / 'adv'}"]
    assert set(report["classifiers"]["A"]["gray_box"]["FGSM"]) == {"no_defense", "puvae", "magnet", "adv-training",
                                                                  "puvae+squeeze", "adv-training-transfer"}
    assert ("| No Defense | Adv. Tr. | Adv. Tr. (transfer) | MagNet | PuVAE | PuVAE + bit squeezing |"
            in (tmp_path / "out" / "all.md").read_text())
    with pytest.raises(SystemExit, match="unknown defense 'magnets'"):
        main(["--debug", "evaluate", "--defenses", "magnets", "--name", "x", *common])
    with pytest.raises(SystemExit, match="repeated defense"):
        main(["--debug", "evaluate", "--defenses", "puvae=none", "puvae=none", "--name", "x", *common])
    with pytest.raises(SystemExit, match="--adv-classifiers names"):
        main(["--debug", "evaluate", "--defenses", "adv-training", "--adv-classifiers", f"B={tmp_path / 'adv'}", "--name", "x", *common])


def test_evaluate_command_sets_defense_gan_precision_and_records_the_search(tmp_path, mnist_root, bf16_units) -> None:
    import json

    from puvae_defense.classifiers import ClassifierConfig, PaperClassifier
    from puvae_defense.cli import main

    _tiny_gan(steps=2, restarts=2).save_pretrained(tmp_path / "gan")
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    common = ["--defenses", f"defense-gan={tmp_path / 'gan'}", "--classifiers", f"A={tmp_path / 'clf'}", "--attacks",
              "--limit", "4", "--adaptive-limit", "0", "--data-root", str(mnist_root), "--out", str(tmp_path), "--quiet"]
    assert main(["evaluate", *common, "--name", "fp32", "--progress", str(tmp_path / "fp32.progress")]) == 0
    with pytest.raises(ValueError, match="another evaluation .different defenses"):  # the search is part of the run
        main(["--debug", "evaluate", *common, "--gan-precision", "bf16", "--name", "bf16", "--progress", str(tmp_path / "fp32.progress")])
    assert main(["evaluate", *common, "--gan-precision", "bf16", "--name", "bf16"]) == 0
    assert main(["evaluate", *common, "--gan-search", "3x1", "--name", "short"]) == 0
    searches = [json.loads((tmp_path / f"{name}.json").read_text())["meta"]["defense_sources"]["defense-gan"]["search"]
                for name in ("fp32", "bf16", "short")]
    assert searches == [{"steps": 2, "restarts": 2, "precision": "fp32"}, {"steps": 2, "restarts": 2, "precision": "bf16"},
                        {"steps": 3, "restarts": 1, "precision": "fp32"}]
    with pytest.raises(SystemExit, match="--gan-search: .*LxR.*got '3x'"):
        main(["--debug", "evaluate", *common, "--gan-search", "3x", "--name", "bad"])
    MagNetReformer().save_pretrained(tmp_path / "magnet")
    with pytest.raises(SystemExit, match="--defenses has no Defense-GAN"):
        main(["--debug", "evaluate", *common[2:], "--defenses", f"magnet={tmp_path / 'magnet'}", "--gan-search", "3x1", "--name", "bad"])


def test_evaluate_command_runs_tracked_bpda_with_attack_params_and_records_them(tmp_path, mnist_root) -> None:
    from puvae_defense.classifiers import ClassifierConfig, PaperClassifier
    from puvae_defense.cli import main

    _tiny_gan(steps=2, restarts=2).save_pretrained(tmp_path / "gan")
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    common = ["--defenses", f"defense-gan={tmp_path / 'gan'}", "--classifiers", f"A={tmp_path / 'clf'}", "--attacks",
              "--adaptive", "bpda-tracked", "--limit", "4", "--adaptive-limit", "4", "--data-root", str(mnist_root),
              "--out", str(tmp_path), "--quiet"]
    assert main(["evaluate", *common, "--attack-param", "pgd_steps=2", "bpda_track_every_restart=false",
                 "--name", "tracked"]) == 0
    report = json.loads((tmp_path / "tracked.json").read_text())
    assert report["meta"]["attack_params"]["pgd_steps"] == 2
    assert report["meta"]["attack_params"]["bpda_track_every_restart"] is False
    assert list(report["classifiers"]["A"]["adaptive"]["defense-gan"]) == ["PGD + BPDA (tracked)"]
    for bad, message in (("pgd_stepz=2", "unknown attack parameters .'pgd_stepz'."),
                         ("pgd_steps=true", "pgd_steps must be of type int"), ("pgd_steps", "KEY=VALUE"),
                         ("bpda_track_every_restart=1", "of type bool")):
        with pytest.raises(SystemExit, match=message):
            main(["--debug", "evaluate", *common, "--attack-param", bad, "--name", "bad"])


def test_parse_search_reads_steps_by_restarts_and_names_what_it_cannot() -> None:
    from puvae_defense.baselines import parse_search

    assert parse_search("200x20") == (200, 20) and parse_search(" 10x1 ") == (10, 1)
    for text in ("200", "0x5", "10x-1", "axb", "10x2x3"):
        with pytest.raises(ValueError, match=f"got '{text}'"):
            parse_search(text)


def test_model_cards_of_baseline_purifiers_show_the_purifier_usage() -> None:
    from puvae_defense.model_card import model_card

    card = model_card(name="magnet-mnist", model_type="magnet", dataset="mnist", description="MagNet.",
                      metrics={"test_accuracy_A_through": 98.0}, training={"epochs": 100})
    assert 'PurifiedClassifier(my_net, "magnet-mnist")' in card and "- magnet" in card
    assert "pipeline_tag" not in card and "variational-autoencoder" not in card
    gan = model_card(name="defense-gan-mnist", model_type="defense-gan", dataset="mnist", description="GAN.",
                     metrics={}, training={})
    assert "- defense-gan" in gan and "PurifiedClassifier" in gan


def test_model_card_keeps_small_metrics_readable() -> None:
    from puvae_defense.model_card import model_card

    card = model_card(name="magnet-mnist", model_type="magnet", dataset="mnist", description="MagNet.",
                      metrics={"val_mse": 0.0051467, "test_accuracy_A_through": 89.894, "none": 0.0}, training={})
    assert "| val_mse | 0.00515 |" in card
    assert "| test_accuracy_A_through | 89.89 |" in card and "| none | 0.00 |" in card


def test_bit_depth_squeeze_levels_and_gradients() -> None:
    from puvae_defense.baselines import BitDepthSqueeze

    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 0.7, 1.0], requires_grad=True)
    assert BitDepthSqueeze(1)(x).tolist() == [0, 0, 0, 1, 1, 1]
    assert BitDepthSqueeze(2)(x).detach().mul(3).round().tolist() == [0, 1, 1, 2, 2, 3]  # levels 0, 1/3, 2/3, 1
    BitDepthSqueeze(1)(x).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones(6))  # straight through
    x.grad = None
    BitDepthSqueeze(1, straight_through=False)(x).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros(6))  # the true gradient of rounding
    for bad in (0, 9, 1.5, True):
        with pytest.raises(ValueError, match="bits must be"):
            BitDepthSqueeze(bad)  # type: ignore[arg-type]


def test_squeezable_bits_are_the_pixels_the_budget_moves_across_the_threshold() -> None:
    from puvae_defense.baselines.feature_squeezing import squeezable_bits

    x = torch.tensor([0.0, 0.15, 0.25, 0.5, 0.6, 0.85, 1.0]).view(1, 1, 1, 7)
    bits, free = squeezable_bits(x, 0.3)
    assert bits.flatten().tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert free.flatten().tolist() == [False, False, True, True, True, False, False]


def _count_classifier(threshold: float):
    """Class 1 when more than ``threshold`` pixels of the (squeezed) image are on; its margin for label 0."""
    def score(binary: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return binary.flatten(1).sum(1) - threshold  # > 0: predicts 1, fooled on label 0
    return score


def test_squeezed_bits_attack_finds_the_binary_image_that_fools(images: torch.Tensor) -> None:
    from puvae_defense.baselines import BitDepthSqueeze
    from puvae_defense.baselines.feature_squeezing import squeezable_bits, squeezed_bits_attack

    x = torch.zeros(3, 1, 4, 4)
    x[:, 0, 0, :] = torch.tensor([0.3, 0.35, 0.4, 0.45])  # four free pixels each (eps 0.3), all off
    x[2, 0, 0, :] = 0.1  # the last image has none: nothing can fool it
    labels = torch.zeros(3, dtype=torch.long)
    score = _count_classifier(2.5)  # three of the four must be turned on
    adversarial = squeezed_bits_attack(score, x, labels, eps=0.3, steps=30, lr=0.5, generator=torch.Generator().manual_seed(0))
    assert float((adversarial - x).abs().max()) <= 0.3 + 1e-6 and 0 <= float(adversarial.min()) and float(adversarial.max()) <= 1
    squeezed = BitDepthSqueeze(1)(adversarial)
    assert (score(squeezed, labels) > 0).tolist() == [True, True, False]
    _, free = squeezable_bits(x, 0.3)
    assert torch.equal(torch.where(free, x, adversarial), x)  # only free pixels move


def test_squeezed_bits_attack_flips_when_the_relaxation_is_not_enough() -> None:
    """With no gradient steps, the rounding of the start and the pixel flips alone must do the work."""
    from puvae_defense.baselines import BitDepthSqueeze
    from puvae_defense.baselines.feature_squeezing import squeezed_bits_attack

    x = torch.full((2, 1, 4, 4), 0.3)
    score = _count_classifier(9.5)  # ten of the sixteen free pixels on
    adversarial = squeezed_bits_attack(score, x, torch.zeros(2, dtype=torch.long), eps=0.3, steps=0, flip_rounds=10,
                                       flip_fraction=0.25, generator=torch.Generator().manual_seed(1))
    assert (score(BitDepthSqueeze(1)(adversarial), None) > 0).all()


def test_the_search_over_squeezed_bits_runs_in_the_harness(tiny_vae, mnist_root) -> None:
    from puvae_defense.baselines import BitDepthSqueeze
    from puvae_defense.data import load_dataset
    from puvae_defense.evaluation import EvalSettings, evaluate

    net = _net()
    squeezed = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0, input_transform=BitDepthSqueeze(1)).eval()
    plain = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0).eval()
    data = load_dataset("mnist", "test", root=mnist_root).subset(0, 4)
    settings = EvalSettings(attacks=(), adaptive=("Search over squeezed bits",), adaptive_limit=4, batch_size=4,
                            overrides={"pgd_steps": 1})
    report = evaluate({"A": net}, {"puvae+squeeze": {"A": squeezed}, "puvae": {"A": plain}}, data, settings, progress=False)
    adaptive = report["classifiers"]["A"]["adaptive"]
    assert "Search over squeezed bits" in adaptive["puvae+squeeze"] and "Search over squeezed bits" not in adaptive.get("puvae", {})


def test_input_transform_runs_on_checked_inputs_before_the_purifier(tiny_vae, images: torch.Tensor) -> None:
    from puvae_defense.baselines import BitDepthSqueeze

    net = _net()
    squeezed = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0, input_transform=BitDepthSqueeze(1)).eval()
    plain = PurifiedClassifier(net, tiny_vae, sigma_eps=0.0).eval()
    with torch.no_grad():
        torch.testing.assert_close(squeezed(images), plain((images > 0.5).float()))
        assert torch.equal(squeezed.purify(images).labels, plain.purify((images > 0.5).float()).labels)
    x = images.clone().requires_grad_(True)
    squeezed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradient attacks see through the squeezing
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        squeezed(images * 3)  # checked before the transform could hide it
    with pytest.raises(TypeError, match="input_transform must be callable"):
        PurifiedClassifier(net, tiny_vae, input_transform=3)  # type: ignore[arg-type]
    magnet = PurifiedClassifier(net, MagNetReformer().eval(), input_transform=BitDepthSqueeze(1)).eval()
    with torch.no_grad():
        torch.testing.assert_close(magnet(images), net(magnet.purifier.purify((images > 0.5).float())))


def test_finish_baselines_names_each_datasets_models() -> None:
    """Each data set gets its own baseline names; the bundled cards keep their descriptions."""
    script = load_script("finish_baselines")
    mnist, fashion = script.descriptions("mnist"), script.descriptions("fashion-mnist")
    assert set(fashion) == {"magnet-fashion-mnist", "defense-gan-fashion-mnist", "fashion-mnist-adv-classifier-a",
                            "fashion-mnist-adv-classifier-b"}
    assert [kind for kind, _ in mnist.values()] == [kind for kind, _ in fashion.values()]
    assert all("Fashion-MNIST" in text and "Table 3" in text for _, text in fashion.values())
    for name, (_, text) in {**mnist, **fashion}.items():
        config = Path(__file__).parent.parent / "hub" / name / "config.json"
        if config.is_file():
            assert json.loads(config.read_text())["metadata"]["description"] == text


def test_finish_baselines_measures_behind_the_given_classifiers(tmp_path) -> None:
    script = load_script("finish_baselines")
    torch.manual_seed(0)
    MagNetReformer().eval().save_pretrained(tmp_path / "magnet")
    PaperClassifier(ClassifierConfig("source")).save_pretrained(tmp_path / "clf")
    test = synthetic_dataset(20)
    metrics = script.measure("magnet", tmp_path / "magnet", test, 4, {"A": str(tmp_path / "clf")})
    assert set(metrics) == {"test_accuracy_A_through"} and 0 <= metrics["test_accuracy_A_through"] <= 100
    metrics = script.measure("classifier", tmp_path / "clf", test, 4, {})
    assert set(metrics) == {"test_accuracy"}


@pytest.mark.filterwarnings("ignore:the Hugging Face Hub could not be reached")
def test_bundled_defense_gan_generator_reaches_real_digits(mnist_root) -> None:
    """The bundled generator, searched briefly (L = 25, R = 2), lands far closer to real test digits
    than an untrained one with the same search: its weights carry the digit manifold."""
    from puvae_defense.baselines import DefenseGAN, load_purifier
    from puvae_defense.data import load_dataset

    bundled = load_purifier("defense-gan-mnist")
    images = load_dataset("mnist", "test", root=mnist_root).images[:8]
    torch.manual_seed(0)
    untrained = DefenseGAN(bundled.config).eval()
    trained_mse, untrained_mse = (gan.project(images, torch.Generator().manual_seed(0), steps=25, restarts=2)[1].mean()
                                  for gan in (bundled, untrained))
    assert not bundled.training and trained_mse < 0.1 and trained_mse < untrained_mse / 3


def _gan_report(folder: Path, *, n: int, **source_changes) -> dict:
    """An ``evaluate`` report's shape, as if it had measured the Defense-GAN saved in ``folder``."""
    from puvae_defense.baselines import load_purifier
    from puvae_defense.serialization import weights_fingerprint

    gan = load_purifier(folder)
    source = {"purifier": str(folder), "fingerprint": weights_fingerprint(gan),
              "search": {"steps": gan.config.steps, "restarts": gan.config.restarts, "precision": "fp32"}}
    return {"meta": {"command": "puvae-defense evaluate --defenses defense-gan", "device": "cpu",
                     "settings": {"dataset": "mnist"}, "defense_sources": {"defense-gan": {**source, **source_changes}}},
            "classifiers": {"A": {"n": n, "clean_through": {"defense-gan": 87.5}}}}


def test_finish_baselines_takes_card_metrics_from_reports_on_the_same_weights(tmp_path, monkeypatch) -> None:
    """--from-reports replaces the folder's accuracy for the report's classifiers (full set or first n),
    keeps its other metrics, rewrites the card, and refuses reports on other weights or another search."""
    from puvae_defense.baselines import DefenseGAN, DefenseGANConfig
    from puvae_defense.serialization import read_metadata, write_metadata

    script = load_script("finish_baselines")
    folder = tmp_path / "hub" / "defense-gan-mnist"
    torch.manual_seed(0)
    DefenseGAN(DefenseGANConfig(latent_dim=8, width=4)).save_pretrained(folder)
    write_metadata(folder, {"name": folder.name, "dataset": "mnist", "description": "A generator.",
                            "metrics": {"test_accuracy_A_through_first100": 100.0, "val_mse": 0.01}, "training": {"seconds": 1}})
    assert script.metrics_from_report(folder, _gan_report(folder, n=20), 20) == {"test_accuracy_A_through": 87.5}
    assert script.metrics_from_report(folder, _gan_report(folder, n=5), 20) == {"test_accuracy_A_through_first5": 87.5}
    with pytest.raises(SystemExit, match="other defense-gan-mnist weights"):
        script.metrics_from_report(folder, _gan_report(folder, n=5, fingerprint="0" * 64), 20)
    with pytest.raises(SystemExit, match="steps / restarts"):
        script.metrics_from_report(folder, _gan_report(folder, n=5, search={"steps": 25, "restarts": 2}), 20)

    report = tmp_path / "table2_defense_gan_mnist_A.json"
    report.write_text(json.dumps(_gan_report(folder, n=20)))
    monkeypatch.setattr(script, "load_dataset", lambda name, split: [None] * 20)
    script.restamp(tmp_path / "hub", [report])
    meta = read_metadata(folder)
    assert meta["metrics"] == {"test_accuracy_A_through": 87.5, "val_mse": 0.01}
    assert meta["training"]["seconds"] == 1 and "table2_defense_gan_mnist_A.json" in meta["training"]["measured by"]
    assert "| test_accuracy_A_through | 87.50 |" in (folder / "README.md").read_text()
    with pytest.raises(SystemExit, match="no bundled weights"):
        script.restamp(tmp_path / "elsewhere", [report])
