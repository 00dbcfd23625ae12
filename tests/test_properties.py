"""Property-based tests of the public entry points (hypothesis, fixed seed, bounded examples).

Each property: whatever the input, the call either returns a result of the documented shape,
dtype, range and finiteness, or raises one of the documented error types (``TypeError`` or
``ValueError``, and ``FileNotFoundError`` for paths); never a NaN, a silent wrong shape or an
error from deep inside torch.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from puvae_defense import PuVAE, PurifiedClassifier, SmoothedClassifier, attacks
from puvae_defense.baselines import MagNetReformer
from puvae_defense.baselines.magnet import MagNetConfig
from puvae_defense.hub import HubUnreachableError, resolve_folder

from conftest import TINY_MNIST

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DOCUMENTED = (TypeError, ValueError)

_VAE = None


def _vae() -> PuVAE:
    global _VAE
    if _VAE is None:
        torch.manual_seed(0)
        _VAE = PuVAE(TINY_MNIST).eval()
    return _VAE


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()


special_floats = st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-3, 1e300, -1e300, math.inf, -math.inf, math.nan, 2.0, 255.0])
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64, torch.bool])


@st.composite
def image_batches(draw):
    """Tensors of many shapes, dtypes and values, some of them valid (B, 1, 28, 28) batches in [0, 1]."""
    batch = draw(st.integers(0, 3))
    shape = draw(st.sampled_from([(batch, 1, 28, 28), (batch, 1, 28, 28), (batch, 28, 28), (batch, 3, 28, 28),
                                  (batch, 1, 27, 28), (batch, 784), (1, 1, 1, 28, 28)]))
    dtype = draw(dtypes)
    kind = draw(st.sampled_from(["uniform", "constant", "scaled"]))
    if kind == "uniform":
        values = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))), dtype=torch.float64)
    elif kind == "constant":
        values = torch.full(shape, draw(special_floats), dtype=torch.float64)
    else:
        values = torch.rand(shape, dtype=torch.float64) * draw(special_floats)
    return values.to(dtype) if dtype.is_floating_point else values.nan_to_num(0, 0, 0).clamp(0, 255).to(dtype)


def _valid_images(images: torch.Tensor) -> bool:
    return (images.dim() == 4 and tuple(images.shape[1:]) == (1, 28, 28) and images.is_floating_point()
            and bool(torch.isfinite(images).all()) and (images.numel() == 0 or
                                                         (float(images.min()) >= -1e-3 and float(images.max()) <= 1 + 1e-3)))


@seed(0)
@FUZZ
@given(images=image_batches(), sigma_eps=st.one_of(special_floats, st.floats(0, 10)))
def test_purified_classifier(images: torch.Tensor, sigma_eps: float) -> None:
    try:
        model = PurifiedClassifier(_net(), _vae(), sigma_eps=sigma_eps)
        with torch.no_grad():
            logits = model(images.float() if images.dtype in (torch.float16, torch.bfloat16) else images)
    except DOCUMENTED:
        assert not (0 <= sigma_eps <= 10) or not _valid_images(images)
        return
    assert 0 <= sigma_eps <= 10 and _valid_images(images)
    assert logits.shape == (images.shape[0], 10) and bool(torch.isfinite(logits).all())


@seed(1)
@FUZZ
@given(images=image_batches(), sigma_eps=st.one_of(special_floats, st.floats(0, 10)), max_batch=st.integers(-5, 40))
def test_project_and_candidates(images: torch.Tensor, sigma_eps: float, max_batch: int) -> None:
    vae = _vae()
    try:
        with torch.no_grad():
            out = vae.project(images, sigma_eps, max_batch=max_batch)
            candidates = vae.candidates(images, sigma_eps)
    except DOCUMENTED:
        return
    batch = images.shape[0]
    assert out.purified.shape == (batch, 1, 28, 28) and out.labels.shape == (batch,) and out.distances.shape == (batch, 10)
    assert candidates.shape == (batch, 10, 1, 28, 28)
    for tensor in (out.purified, out.distances, candidates):
        assert bool(torch.isfinite(tensor).all())
    assert bool(((out.purified >= 0) & (out.purified <= 1)).all()) and bool(((out.labels >= 0) & (out.labels < 10)).all())


@seed(2)
@FUZZ
@given(batch=st.integers(0, 3), labels=st.lists(st.integers(-3, 12), min_size=0, max_size=4),
       label_dtype=st.sampled_from([torch.int64, torch.int32, torch.float32, torch.bool]), z_scale=special_floats)
def test_encode_decode(batch: int, labels: list[int], label_dtype: torch.dtype, z_scale: float) -> None:
    vae = _vae()
    y = torch.tensor(labels, dtype=torch.int64).to(label_dtype)
    images = torch.rand(batch, 1, 28, 28)
    try:
        with torch.no_grad():
            mu, sigma = vae.encode(images, y)
            decoded = vae.decode(torch.full((len(labels), TINY_MNIST.latent_dim), z_scale), y)
    except DOCUMENTED:
        return
    assert mu.shape == sigma.shape == (batch, TINY_MNIST.latent_dim) and bool((sigma > 0).all())
    assert decoded.shape == (len(labels), 1, 28, 28)
    assert bool(((decoded >= 0) & (decoded <= 1)).all())


@seed(3)
@FUZZ
@given(images=image_batches())
def test_baseline_purifier(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    reformer = MagNetReformer(MagNetConfig()).eval()
    try:
        with torch.no_grad():
            purified = reformer.purify(images)
    except DOCUMENTED:
        assert not _valid_images(images)
        return
    assert purified.shape == images.shape and bool(torch.isfinite(purified).all())


ATTACK_NUMBERS = st.one_of(special_floats, st.floats(0, 1))


@seed(4)
@FUZZ
@given(name=st.sampled_from(["fgsm", "ifgsm", "rand_fgsm", "pgd", "cw_l2"]), eps=ATTACK_NUMBERS, step=ATTACK_NUMBERS,
       steps=st.integers(-2, 3), labels=st.lists(st.integers(-2, 12), min_size=2, max_size=2),
       images=image_batches())
def test_attacks(name: str, eps: float, step: float, steps: int, labels: list[int], images: torch.Tensor) -> None:
    net = _net()
    y = torch.tensor(labels)
    calls = {
        "fgsm": lambda: attacks.fgsm(net, images, y, eps=eps),
        "ifgsm": lambda: attacks.ifgsm(net, images, y, eps=eps, step_size=step, steps=steps),
        "rand_fgsm": lambda: attacks.rand_fgsm(net, images, y, eps=eps, alpha=step),
        "pgd": lambda: attacks.pgd(net, images, y, eps=eps, step_size=step, steps=steps),
        "cw_l2": lambda: attacks.cw_l2(net, images, y, steps=max(steps, 1), initial_const=step, binary_search_steps=1),
    }
    try:
        adversarial = calls[name]()
    except DOCUMENTED:
        return
    assert _valid_images(images) and images.shape[0] == 2 and min(labels) >= 0 and max(labels) < 10
    assert adversarial.shape == images.shape and bool(torch.isfinite(adversarial).all())
    assert bool(((adversarial >= 0) & (adversarial <= 1)).all())
    if name != "cw_l2":
        assert float((adversarial - images.clamp(0, 1)).abs().max()) <= eps + 1e-5


@seed(5)
@FUZZ
@given(sigma=special_floats, n=st.integers(-1, 30), alpha=st.one_of(special_floats, st.floats(0, 1)),
       images=image_batches())
def test_smoothed_classifier(sigma: float, n: int, alpha: float, images: torch.Tensor) -> None:
    try:
        smoothed = SmoothedClassifier(_net(), sigma)
        labels = smoothed.predict(images, n=n, alpha=alpha, generator=torch.Generator().manual_seed(0))
    except DOCUMENTED:
        return
    assert labels.shape == (images.shape[0],) and labels.dtype == torch.int64
    assert bool(((labels >= -1) & (labels < 10)).all())


config_values = st.one_of(st.integers(-3, 10**9), st.floats(allow_nan=True), st.text(max_size=3), st.none(),
                          st.lists(st.integers(-2, 10**6), max_size=3), st.booleans())


@seed(6)
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(["latent_dim", "num_convs", "encoder_hidden", "image_shape", "num_classes",
                                                "decoder_hidden", "conv_kernel", "bogus"]), config_values, max_size=3))
def test_loading_a_fuzzed_config(tmp_path_factory, changes: dict) -> None:
    folder = _vae().save_pretrained(tmp_path_factory.mktemp("fuzz"))
    payload = json.loads((folder / "config.json").read_text())
    payload["config"].update(changes)
    (folder / "config.json").write_text(json.dumps(payload))
    try:
        loaded = PuVAE.from_pretrained(folder)
    except DOCUMENTED:
        return
    assert loaded.config.to_dict() == {**TINY_MNIST.to_dict(), **changes}  # only changes that keep the network load


@seed(7)
@FUZZ
@given(name=st.text(alphabet=st.characters(codec="ascii", exclude_characters="/\\\x00"), min_size=1, max_size=20))
def test_registry_resolution_of_arbitrary_names(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        folder = resolve_folder(name, model_type="puvae")
    except (*DOCUMENTED, FileNotFoundError, HubUnreachableError):
        return
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
