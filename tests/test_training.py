from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from puvae_defense import PuVAE, PuVAEConfig
from puvae_defense import training
from puvae_defense.serialization import sha256_of, weights_fingerprint
from puvae_defense.losses import gaussian_kl, reconstruction_bce, source_cross_entropy
from puvae_defense.training import TrainConfig, fit

from conftest import TINY_CIFAR, TINY_MNIST, synthetic_dataset, tiny_source

FAST = {"epochs": 2, "batch_size": 32, "val_size": 32}


def _fit(dataset, source, **kwargs):
    return fit(dataset, source, config=kwargs.pop("config", TINY_MNIST), progress=False, device="cpu", **{**FAST, **kwargs})


def test_losses_match_their_formulas() -> None:
    mu, sigma = torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 0.5]])
    expected = 0.5 * ((0.25 + 1 - 0 - 1) + (1 + 0.25 - 2 * torch.log(torch.tensor(0.5)) - 1))
    torch.testing.assert_close(gaussian_kl(mu, sigma, "sum"), expected.view(1))
    torch.testing.assert_close(gaussian_kl(mu, sigma, "mean"), (expected / 2).view(1))
    logits, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])
    torch.testing.assert_close(reconstruction_bce(logits, target, "sum"), torch.log(torch.tensor(2.0)).view(1) * 4)
    class_logits, labels = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    p = torch.softmax(class_logits, 1)[0]
    binary = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2]))
    torch.testing.assert_close(source_cross_entropy(class_logits, labels, "binary"), binary.view(1))
    torch.testing.assert_close(source_cross_entropy(class_logits, labels, "categorical"), -torch.log(p[0]).view(1))


@pytest.mark.parametrize("config", [TINY_MNIST, TINY_CIFAR], ids=["1x28x28", "3x32x32"])
def test_fit_learns_and_reports(config: PuVAEConfig) -> None:
    data = synthetic_dataset(128, config.image_shape)
    model = _fit(data, tiny_source(config.image_shape), config=config, epochs=3, val_dataset=data,
                 lambda_wrong_ce=1.0, lambda_proj=1.0, input_noise=0.2, lr_schedule="cosine", kl_warmup_epochs=1)
    history = model.training_history
    assert [h.epoch for h in history] == [1, 2, 3]
    assert history[-1].train["rc"] < history[0].train["rc"]
    assert set(history[0].train) == {"total", "rc", "kl", "ce", "wrong_ce", "proj"}
    assert 0 <= history[-1].val_purified_acc <= 100 and history[-1].val_rmse > 0
    assert not model.training and model.config == config


def test_source_classifier_is_left_untouched() -> None:
    data = synthetic_dataset(64)
    source = tiny_source().train()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    _fit(data, source, epochs=1)
    assert source.training and all(p.requires_grad for p in source.parameters())
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())


def test_shape_and_classes_are_inferred() -> None:
    data = synthetic_dataset(32, classes=4)
    model = fit(data, tiny_source(classes=4), progress=False, device="cpu", epochs=1, batch_size=32, val_size=0)
    assert model.config == PuVAEConfig(image_shape=(1, 28, 28), num_classes=4)  # the paper's sizes


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "empty"),
        ([(torch.rand(1, 28, 28), 0), (torch.rand(1, 27, 28), 1)], "shape"),
        ([(torch.rand(1, 28, 28) * 3, 0)], r"values in \[0, 1\]"),
        ([(torch.rand(1, 28, 28), 0.5)], "integer class index"),
        ([(torch.rand(1, 28, 28), 12)], "outside"),
        ([(torch.rand(1, 28, 28), -1)], "outside"),
        ([(torch.randint(0, 255, (1, 28, 28), dtype=torch.uint8), 0)], "255"),
        ([torch.rand(1, 28, 28)], "pair"),
    ],
)
def test_bad_data_fails_before_training(items, message, tmp_path) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        _fit(_Items(items), tiny_source(), checkpoint_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_source_with_wrong_output_width() -> None:
    with pytest.raises(ValueError, match=r"must return \(B, 10\) logits"):
        _fit(synthetic_dataset(32), tiny_source(classes=7))


def test_bad_options() -> None:
    with pytest.raises(TypeError, match="unknown training options \\['epoch'\\]"):
        _fit(synthetic_dataset(32), tiny_source(), epoch=3)
    with pytest.raises(ValueError, match="lambda_kl"):
        TrainConfig(lambda_kl=-1)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        _fit(synthetic_dataset(32), tiny_source(), amp="fp16")


def test_bf16_autocast_on_cpu(bf16_units) -> None:
    model = _fit(synthetic_dataset(32), tiny_source(), epochs=1, amp="bf16", lambda_proj=1.0)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(model.training_history[0].train["total"]))


def test_bf16_on_a_cpu_without_bf16_units_warns_and_still_trains(monkeypatch) -> None:
    monkeypatch.setattr("puvae_defense._checks.cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"fit\(amp='bf16'\): bf16 autocast on this CPU is emulated"):
        model = _fit(synthetic_dataset(32), tiny_source(), epochs=1, amp="bf16")
    assert torch.isfinite(torch.tensor(model.training_history[0].train["total"]))


def _interrupted_in_second_epoch(monkeypatch, data, **options) -> None:
    """Run ``_fit`` and stop it (KeyboardInterrupt) when the second epoch starts."""
    original = training._epoch_indices

    def interrupt(size, seed, epoch, rank, world):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(size, seed, epoch, rank, world)

    monkeypatch.setattr(training, "_epoch_indices", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _fit(data, tiny_source(), **options)
    monkeypatch.undo()


def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch) -> None:
    data, val = synthetic_dataset(96), synthetic_dataset(32, seed=1)
    _interrupted_in_second_epoch(monkeypatch, data, val_dataset=val, checkpoint_dir=tmp_path / "a", lambda_proj=1.0)
    saved = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert saved == ["checkpoint-000001.safetensors"]  # written atomically: no .tmp left behind
    assert "rng.cpu" in load_file(tmp_path / "a" / saved[0])
    resumed = _fit(data, tiny_source(), val_dataset=val, checkpoint_dir=tmp_path / "a", lambda_proj=1.0)
    straight = _fit(data, tiny_source(), val_dataset=val, checkpoint_dir=tmp_path / "b", lambda_proj=1.0)
    for (key, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        assert torch.equal(a, b), key
    assert [h.epoch for h in resumed.training_history] == [1, 2]
    assert resumed.training_history[1].train == straight.training_history[1].train


def test_resume_with_other_settings_is_refused(tmp_path) -> None:
    data = synthetic_dataset(32)
    _fit(data, tiny_source(), epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other settings.*lr"):
        _fit(data, tiny_source(), epochs=2, lr=0.1, checkpoint_dir=tmp_path)


def test_resume_with_other_attack_models_is_refused(tmp_path) -> None:
    data, attacked = synthetic_dataset(32), {"noise_kind": "fgsm", "input_noise": 0.3, "lambda_proj": 0.0}
    _fit(data, tiny_source(), epochs=1, checkpoint_dir=tmp_path, attack_models=[_another_source()], **attacked)
    for others in ([], [tiny_source()]):
        with pytest.raises(ValueError, match="other attack_models"):
            _fit(data, tiny_source(), epochs=2, checkpoint_dir=tmp_path, attack_models=others, **attacked)
    resumed = _fit(data, tiny_source(), epochs=2, checkpoint_dir=tmp_path, attack_models=[_another_source()], **attacked)
    assert len(resumed.training_history) == 2


def test_generic_map_style_datasets_work() -> None:
    data = synthetic_dataset(48)
    generic = _Items([data[i] for i in range(len(data))])
    model = _fit(generic, tiny_source(), epochs=1)
    assert len(model.training_history) == 1


def test_distributed_training_with_two_gloo_processes(tmp_path) -> None:
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(worker), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP kept the replicas in sync
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-000001.safetensors"]
    assert (tmp_path / "world").read_text() == "2"


def _objective(vae, source, **options):
    from puvae_defense.losses import PuVAEObjective

    settings = {"rc_reduction": "sum", "kl_reduction": "sum", "ce_form": "binary", "proj_scale": 100.0, "proj_sigma_eps": 0.1,
                "input_noise": 0.2, "noise_kind": "fgsm", "noise_fraction": 1.0, "noise_steps": 1,
                "noise_amplitude": "fixed", "need_wrong": False, "need_proj": False}
    return PuVAEObjective(vae, source, **{**settings, **options})


@pytest.mark.parametrize("kind", ["fgsm", "pgd", "sign", "uniform"])
def test_input_perturbations_respect_budget_and_fraction(tiny_vae, kind: str) -> None:
    data = synthetic_dataset(16)
    images, labels = data.images, data.labels
    objective = _objective(tiny_vae, tiny_source().eval(), noise_kind=kind, noise_fraction=0.5, noise_steps=3)
    torch.manual_seed(0)
    moved = objective._perturbed(images, labels)
    delta = (moved - images).abs().flatten(1).amax(1)
    assert torch.equal(moved[8:], images[8:])  # the second half stays clean
    assert bool((delta[:8] <= 0.2 + 1e-6).all()) and bool((delta[:8] > 0.1).all())
    if kind in ("fgsm", "sign"):  # every pixel moves by the full budget unless clipped at 0 or 1
        step = (moved[:8] - images[:8]).abs()
        clipped = (moved[:8] == 0) | (moved[:8] == 1)
        assert bool((((step - 0.2).abs() < 1e-6) | clipped).all())


def test_fgsm_inputs_move_the_source_towards_a_wrong_label(tiny_vae) -> None:
    data = synthetic_dataset(64)
    source = fit_source_for_test(data)
    objective = _objective(tiny_vae, source, input_noise=0.3)
    torch.manual_seed(0)
    with torch.no_grad():
        clean = (source(data.images).argmax(1) == data.labels).float().mean()
        attacked = (source(objective._perturbed(data.images, data.labels)).argmax(1) == data.labels).float().mean()
    assert attacked < clean - 0.2


def fit_source_for_test(data):
    from puvae_defense.classifiers import fit_classifier

    return fit_classifier(data, "source", epochs=3, batch_size=32, progress=False).requires_grad_(False)


class _Counting(torch.nn.Module):
    """A classifier that records how many images each call sees."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x)


def _another_source() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))


def test_attack_models_share_the_attacked_images(tiny_vae) -> None:
    data = synthetic_dataset(16)
    source, other = _Counting(tiny_source().eval()), _Counting(_another_source().eval())
    objective = _objective(tiny_vae, source, attack_models=[other], noise_fraction=0.75)
    torch.manual_seed(0)
    moved = objective._perturbed(data.images, data.labels)
    assert source.sizes == [6] and other.sizes == [6]  # 12 attacked images, half on each model
    assert torch.equal(moved[12:], data.images[12:])
    assert bool(((moved[:12] - data.images[:12]).abs().amax((1, 2, 3)) <= 0.2 + 1e-6).all())
    # each share follows its own model's gradient: the two models' directions differ on the same images
    torch.manual_seed(0)
    alone = _objective(tiny_vae, source, noise_fraction=0.75)._perturbed(data.images, data.labels)
    assert torch.equal(alone[:6], moved[:6]) and not torch.equal(alone[6:12], moved[6:12])


def test_bad_attack_models_are_refused(tiny_vae) -> None:
    with pytest.raises(ValueError, match="attack_models need attacked training inputs"):
        _objective(tiny_vae, tiny_source().eval(), attack_models=[tiny_source()], noise_kind="sign")
    with pytest.raises(ValueError, match=r"attack_models\[0\] must return \(B, 10\) logits"):
        _fit(synthetic_dataset(32), tiny_source(), attack_models=[tiny_source(classes=7)], noise_kind="fgsm",
             input_noise=0.3)
    with pytest.raises(TypeError, match=r"attack_models\[1\] must be an nn.Module"):
        _fit(synthetic_dataset(32), tiny_source(), attack_models=[tiny_source(), lambda x: x], noise_kind="fgsm",
             input_noise=0.3)


def test_fit_with_attack_models_trains_and_leaves_them_untouched() -> None:
    data, other = synthetic_dataset(32), _another_source()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    model = _fit(data, tiny_source(), recipe="robust", attack_models=[other], epochs=1, lambda_proj=0.0)
    assert len(model.training_history) == 1 and other.training
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_gaussian_noise_has_the_amplitude_as_its_standard_deviation(tiny_vae) -> None:
    images = torch.full((64, 1, 28, 28), 0.5)
    labels = torch.arange(64) % 10
    objective = _objective(tiny_vae, tiny_source().eval(), noise_kind="gaussian", input_noise=0.1, noise_fraction=0.5)
    torch.manual_seed(0)
    moved = objective._perturbed(images, labels)
    delta = (moved - images).flatten(1)
    assert float(delta[:32].std()) == pytest.approx(0.1, rel=0.05)  # unbounded noise, not an L-inf budget
    assert float(delta[:32].abs().max()) > 0.3 and bool((delta[32:] == 0).all())
    assert 0 <= float(moved.min()) and float(moved.max()) <= 1


def test_uniform_amplitude_varies_per_image(tiny_vae) -> None:
    data = synthetic_dataset(32)
    objective = _objective(tiny_vae, tiny_source().eval(), noise_kind="sign", noise_amplitude="uniform", input_noise=0.3)
    torch.manual_seed(0)
    delta = (objective._perturbed(data.images, data.labels) - data.images).abs().flatten(1).amax(1)
    assert bool((delta <= 0.3 + 1e-6).all()) and float(delta.std()) > 0.03


@pytest.mark.parametrize(
    ("options", "message"),
    [({"noise_fraction": 1.5}, "noise_fraction"), ({"noise_kind": "blur"}, "noise_kind"),
     ({"noise_steps": 0}, "noise_steps"), ({"noise_amplitude": "max"}, "noise_amplitude")],
)
def test_bad_perturbation_options(options, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_named_recipes() -> None:
    from puvae_defense.recipes import DEFAULT_RECIPE, RECIPES, get_recipe

    assert get_recipe("paper") == TrainConfig()  # the paper, literally: TrainConfig's defaults
    paper = get_recipe("paper")
    assert (paper.lambda_rc, paper.lambda_kl, paper.lambda_ce, paper.lambda_proj, paper.input_noise) == (0.01, 0.1, 10.0, 0, 0)
    assert DEFAULT_RECIPE in RECIPES and get_recipe(DEFAULT_RECIPE).lambda_proj > 0
    kl03, robust = get_recipe("robust-kl03"), get_recipe("robust")
    assert kl03.lambda_kl == 0.3 and kl03.replace(lambda_kl=robust.lambda_kl) == robust  # one change only
    pgd, finetune = get_recipe("finetune-pgd"), get_recipe("finetune")
    assert (pgd.noise_kind, pgd.noise_steps) == ("pgd", 3) and pgd.replace(noise_kind="fgsm", noise_steps=1) == finetune
    assert get_recipe("finetune-pgd-kl03") == pgd.replace(lambda_kl=kl03.lambda_kl)
    smooth = get_recipe("smooth")  # the denoiser for randomized smoothing: Gaussian inputs, every image
    assert (smooth.noise_kind, smooth.input_noise, smooth.noise_fraction, smooth.lr) == ("gaussian", 1.0, 1.0, robust.lr)
    assert smooth.replace(noise_kind="fgsm", input_noise=0.3, noise_fraction=0.5, lr=finetune.lr) == finetune
    with pytest.raises(ValueError, match="known recipes: \\['finetune', 'finetune-pgd', 'finetune-pgd-kl03', 'paper', 'robust', 'robust-kl03', 'smooth'\\]"):
        get_recipe("best")
    with pytest.raises(TypeError):
        RECIPES["mine"] = TrainConfig()  # type: ignore[index]


def test_fit_takes_a_recipe_by_name() -> None:
    data = synthetic_dataset(32)
    paper = _fit(data, tiny_source(), recipe="paper", epochs=1)
    assert set(paper.training_history[0].train) == {"total", "rc", "kl", "ce"}
    ours = _fit(data, tiny_source(), epochs=1)  # the default recipe: every term of ours
    assert set(ours.training_history[0].train) == {"total", "rc", "kl", "ce", "wrong_ce", "proj"}
    with pytest.raises(ValueError, match="unknown training recipe 'fast'"):
        _fit(data, tiny_source(), recipe="fast")
    with pytest.raises(TypeError, match="recipe must be a TrainConfig"):
        _fit(data, tiny_source(), recipe={"epochs": 1})


def test_latent_spread_of_inputs_and_reconstructions(tiny_vae) -> None:
    from puvae_defense.data import ImageDataset

    data = synthetic_dataset(40)
    spread = training.latent_spread(tiny_vae, data)
    assert spread["input"] > 0 and spread["reconstruction"] >= 0
    same = ImageDataset(data.images[:1].repeat(40, 1, 1, 1), data.labels[:1].repeat(40), data.classes)
    assert training.latent_spread(tiny_vae, same)["input"] == 0


# ---------------------------------------------------------------------------- fine-tuning (init=)
def _pretrained(tmp_path) -> tuple[PuVAE, Path]:
    model = _fit(synthetic_dataset(64), tiny_source(), epochs=1)
    folder = tmp_path / "pretrained"
    model.save_pretrained(folder)
    return model, folder


def test_fine_tuning_starts_from_the_given_model_and_leaves_it_untouched(tmp_path) -> None:
    pretrained, folder = _pretrained(tmp_path)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    data = synthetic_dataset(64, seed=3)
    tuned = _fit(data, tiny_source(), config=None, init=pretrained, epochs=1, lr=1e-12)
    assert all(torch.equal(before[k], v) for k, v in pretrained.state_dict().items())  # caller's module untouched
    assert tuned is not pretrained and tuned.config == pretrained.config
    for key, value in tuned.state_dict().items():  # a vanishing learning rate: still the pretrained weights
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6, msg=key)
    assert tuned.training_init == {"name": "PuVAE module", "fingerprint": weights_fingerprint(pretrained)}
    from_folder = _fit(data, tiny_source(), config=None, init=folder, epochs=1, lr=1e-12)
    assert from_folder.training_init == {"name": str(folder), "sha256": sha256_of(folder / "model.safetensors")}
    scratch = _fit(data, tiny_source(), epochs=1, lr=1e-12)
    assert scratch.training_init is None
    assert not torch.equal(scratch.encoder_out.weight, tuned.encoder_out.weight)


def test_fine_tuning_uses_the_finetune_recipe_by_default(tmp_path, monkeypatch) -> None:
    from puvae_defense.recipes import RECIPES

    pretrained, _ = _pretrained(tmp_path)
    seen = []
    original = training._lr_factor
    monkeypatch.setattr(training, "_lr_factor", lambda recipe, step, total: seen.append(recipe) or original(recipe, step, total))
    fit(synthetic_dataset(32), tiny_source(), init=pretrained, progress=False, device="cpu", batch_size=32, val_size=0)
    assert seen and seen[0] == RECIPES["finetune"].replace(batch_size=32, val_size=0)
    assert RECIPES["finetune"].lr < RECIPES["robust"].lr and RECIPES["finetune"].epochs < RECIPES["robust"].epochs


def test_frozen_trunk_stays_frozen(tmp_path) -> None:
    pretrained, _ = _pretrained(tmp_path)
    tuned = _fit(synthetic_dataset(64, seed=4), tiny_source(), config=None, init=pretrained, epochs=1, freeze_trunk=True)
    for conv_tuned, conv_before in zip(tuned.trunk, pretrained.trunk):
        assert torch.equal(conv_tuned.weight, conv_before.weight) and torch.equal(conv_tuned.bias, conv_before.bias)
    assert not torch.equal(tuned.encoder_out.weight, pretrained.encoder_out.weight)
    assert all(p.requires_grad for p in tuned.parameters())  # the returned module is an ordinary one


@pytest.mark.parametrize(
    ("data", "source", "config", "message"),
    [
        (synthetic_dataset(32, shape=(1, 32, 32)), tiny_source((1, 32, 32)), None, r"dataset images are \(1, 32, 32\).*takes \(1, 28, 28\)"),
        (synthetic_dataset(32, classes=12), tiny_source(classes=12), None, "12 classes but the initial PuVAE .* has 10"),
        (torch.utils.data.TensorDataset(torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 11])), tiny_source(), None,
         "labels range from 0 to 11 but the initial PuVAE .* 10 classes"),
        (synthetic_dataset(32), tiny_source(classes=4), None, "source classifier returns 4 logits.*10 classes"),
        (synthetic_dataset(32), tiny_source(), PuVAEConfig(latent_dim=8), "config= differs"),
    ],
    ids=["shape", "classes", "labels", "source", "config"],
)
def test_fine_tuning_mismatches_are_explained(tmp_path, data, source, config, message) -> None:
    pretrained, _ = _pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        fit(data, source, init=pretrained, config=config, progress=False, device="cpu", epochs=1, val_size=0)


def test_bad_init_is_refused() -> None:
    with pytest.raises(TypeError, match="init must be a PuVAE"):
        _fit(synthetic_dataset(32), tiny_source(), init=3)
    with pytest.raises(FileNotFoundError):
        _fit(synthetic_dataset(32), tiny_source(), init="./no/such/folder")


def test_interrupted_fine_tuning_resumes_where_a_straight_run_ends(tmp_path, monkeypatch) -> None:
    pretrained, _ = _pretrained(tmp_path)
    data = synthetic_dataset(96, seed=5)
    options = {"config": None, "init": pretrained, "epochs": 2, "freeze_trunk": True}
    _interrupted_in_second_epoch(monkeypatch, data, checkpoint_dir=tmp_path / "a", **options)
    resumed = _fit(data, tiny_source(), checkpoint_dir=tmp_path / "a", **options)
    straight = _fit(data, tiny_source(), checkpoint_dir=tmp_path / "b", **options)
    for (key, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        assert torch.equal(a, b), key
    with pytest.raises(ValueError, match="started from"):  # the same checkpoints with another starting point
        _fit(data, tiny_source(), checkpoint_dir=tmp_path / "a", recipe="finetune", epochs=3, freeze_trunk=True)


def test_fit_resumes_from_the_older_checkpoint_when_the_newest_is_damaged(tmp_path) -> None:
    data = synthetic_dataset(32)
    _fit(data, tiny_source(), epochs=2, checkpoint_dir=tmp_path)
    newest = tmp_path / "checkpoint-000002.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match="checkpoint-000002.safetensors is damaged"):
        model = _fit(data, tiny_source(), epochs=2, checkpoint_dir=tmp_path)
    assert [h.epoch for h in model.training_history] == [1, 2]


def test_a_source_with_the_wrong_number_of_logits_is_named() -> None:
    """Regression (issue 54): this error named the data set's labels, not the source classifier."""
    from puvae_defense.data import ImageDataset

    data = synthetic_dataset(32)
    unnamed = ImageDataset(data.images, data.labels, ())  # no class names: the count comes from the source
    with pytest.raises(ValueError, match="the source classifier returns 7 logits but the dataset labels range from 0 to 9"):
        fit(unnamed, tiny_source(classes=7), progress=False, device="cpu", epochs=1)


def test_fit_warns_when_its_result_cannot_be_trusted() -> None:
    """Regression (issue 54): fit returned normally with validation accuracy through the purifier at chance."""
    from puvae_defense.training import FitWarning

    data, val = synthetic_dataset(32), synthetic_dataset(32, seed=1)
    with pytest.warns(FitWarning) as caught:
        _fit(data, tiny_source(), val_dataset=val, epochs=1)
    messages = " | ".join(str(w.message) for w in caught)
    assert "32 images for 10 classes, fewer than 100 per class" in messages
    assert "the source classifier is right on" in messages  # an untrained source
    assert "after training, the source classifier is right on" in messages  # near chance through the purifier
    with pytest.raises(ValueError, match=r"fewer than 100 per class.*\(strict=True\)"):
        _fit(data, tiny_source(), val_dataset=val, epochs=1, strict=True)


def test_fit_picks_the_small_image_layer_sizes_for_8x8_images() -> None:
    data = synthetic_dataset(64, shape=(1, 8, 8))
    model = _fit(data, tiny_source((1, 8, 8)), config=None, epochs=1, val_dataset=data)
    assert model.config == PuVAEConfig.for_images((1, 8, 8), 10) and model.config.conv_kernel == 3
    assert model.project(data.images[:4], sigma_eps=0.0).purified.shape == (4, 1, 8, 8)
