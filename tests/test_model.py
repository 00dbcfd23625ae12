from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from puvae_defense import PuVAE, PuVAEConfig
from puvae_defense.model import Projection

from conftest import TINY_CIFAR, TINY_MNIST


@pytest.mark.parametrize("config", [TINY_MNIST, TINY_CIFAR], ids=["mnist", "cifar"])
def test_shapes(config: PuVAEConfig) -> None:
    torch.manual_seed(0)
    model = PuVAE(config)
    x = torch.rand(3, *config.image_shape)
    y = torch.tensor([0, 4, 9])
    mu, sigma = model.encode(x, y)
    assert mu.shape == sigma.shape == (3, config.latent_dim)
    assert torch.all(sigma > 0)
    x_hat = model.decode(mu, y)
    assert x_hat.shape == x.shape and torch.all((x_hat > 0) & (x_hat < 1))
    x_hat, mu2, sigma2 = model(x, y, sigma_eps=0.0)
    torch.testing.assert_close(mu2, mu)
    torch.testing.assert_close(x_hat, model.decode(mu, y))
    logits, _, _ = model(x, y, sigma_eps=0.0, return_logits=True)
    torch.testing.assert_close(torch.sigmoid(logits), x_hat)


def test_paper_size_models_build_for_both_shapes() -> None:
    for shape in [(1, 28, 28), (3, 32, 32)]:
        model = PuVAE(PuVAEConfig(image_shape=shape))
        with torch.no_grad():
            out = model.project(torch.rand(2, *shape), sigma_eps=0.0)
        assert out.purified.shape == (2, *shape)


def test_label_enters_first_fc_layers_as_one_hot_concatenation(tiny_vae: PuVAE) -> None:
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([1, 3, 3, 8])
    features = x
    for conv in tiny_vae.trunk:
        features = F.relu(conv(features))
    hidden = tiny_vae.encoder_in(torch.cat([features.flatten(1), F.one_hot(y, 10).float()], 1))
    mu, sigma = tiny_vae._encoder_head(hidden)
    torch.testing.assert_close(tiny_vae.encode(x, y), (mu, sigma))
    z = torch.randn(4, 8)
    h = F.relu(tiny_vae.decoder_in(torch.cat([z, F.one_hot(y, 10).float()], 1)))
    h = h.view(4, -1, 2, 2)
    for deconv in tiny_vae.deconvs[:-1]:
        h = F.relu(deconv(h))
    torch.testing.assert_close(tiny_vae.decode(z, y), torch.sigmoid(tiny_vae.deconvs[-1](h)))


@pytest.mark.parametrize(
    "config",
    [
        PuVAEConfig(),
        PuVAEConfig(image_shape=(3, 32, 32)),
        PuVAEConfig(image_shape=(1, 13, 9), deconv_kernel=5, decoder_hidden=48, num_deconvs=2),
        PuVAEConfig(image_shape=(2, 8, 8), deconv_kernel=3, num_deconvs=3, decoder_hidden=16),
        PuVAEConfig(image_shape=(1, 9, 9), deconv_kernel=9, num_deconvs=2, decoder_hidden=18),
    ],
)
def test_subpixel_last_layer_equals_transposed_convolution(config: PuVAEConfig) -> None:
    model = PuVAE(config).double()
    channels = config.deconv_channels if config.num_deconvs > 1 else config.decoder_seed_channels
    h = torch.randn(3, channels, *config.decoder_sizes[-2], dtype=torch.float64)
    torch.testing.assert_close(model._last_deconv(h), model.deconvs[-1](h))


@pytest.mark.parametrize("fixture", ["tiny_vae", "tiny_cifar_vae"])
def test_batched_projection_equals_per_class_loop(fixture: str, request: pytest.FixtureRequest) -> None:
    model: PuVAE = request.getfixturevalue(fixture)
    x = torch.rand(9, *model.config.image_shape)
    with torch.no_grad():
        batched = model.project(x, sigma_eps=0.0)
        naive = model.project_per_class(x, sigma_eps=0.0)
        assert torch.equal(batched.labels, naive.labels)
        torch.testing.assert_close(batched.distances, naive.distances)
        torch.testing.assert_close(batched.purified, naive.purified)
        sampled = model.project(x, 0.1, torch.Generator().manual_seed(5))
        sampled_naive = model.project_per_class(x, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(sampled.labels, sampled_naive.labels)
    torch.testing.assert_close(sampled.distances, sampled_naive.distances)
    torch.testing.assert_close(sampled.purified, sampled_naive.purified)
    assert not torch.equal(sampled.distances, batched.distances)  # the noise is really there


def test_projection_chooses_the_closest_candidate(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    with torch.no_grad():
        out = tiny_vae.project(images, sigma_eps=0.0)
        for c in range(10):
            labels = torch.full((len(images),), c)
            candidate = tiny_vae.decode(tiny_vae.encode(images, labels)[0], labels)
            rmse = (candidate - images).flatten(1).pow(2).mean(1).sqrt()
            torch.testing.assert_close(out.distances[:, c], rmse)
    assert torch.equal(out.labels, out.distances.argmin(1))
    assert isinstance(out, Projection) and out.labels.dtype == torch.long


def test_sampling_is_reproducible_and_independent_of_chunking(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    with torch.no_grad():
        a = tiny_vae.project(images, 0.1, torch.Generator().manual_seed(3))
        b = tiny_vae.project(images, 0.1, torch.Generator().manual_seed(3), max_batch=10)
        c = tiny_vae.project(images, 0.1, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.distances, b.distances)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.distances, c.distances)


def test_max_batch_bounds_every_layer(tiny_vae: PuVAE) -> None:
    seen: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0])) for m in tiny_vae.modules()
             if not list(m.children())]
    x = torch.rand(13, 1, 28, 28)
    with torch.no_grad():
        out = tiny_vae.project(x, sigma_eps=0.0, max_batch=30)
        full = tiny_vae.project(x, sigma_eps=0.0)
    for hook in hooks:
        hook.remove()
    assert seen and max(seen[: len(seen) // 2]) <= 30
    assert torch.equal(out.labels, full.labels)
    torch.testing.assert_close(out.distances, full.distances)


def _peak_cpu_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def test_peak_memory_is_bounded_by_max_batch() -> None:
    torch.manual_seed(0)
    model = PuVAE(PuVAEConfig(conv_channels=8, encoder_hidden=(64,), latent_dim=8, decoder_hidden=128,
                              deconv_channels=8)).eval()
    small, large = torch.rand(16, 1, 28, 28), torch.rand(128, 1, 28, 28)

    def run(x: torch.Tensor, max_batch: int):
        return lambda: model.project(x, sigma_eps=0.0, max_batch=max_batch)

    with torch.no_grad():
        bounded_small = _peak_cpu_bytes(run(small, 20))
        bounded_large = _peak_cpu_bytes(run(large, 20))
        unbounded_large = _peak_cpu_bytes(run(large, 1280))
    # With the bound, peak memory barely grows with the batch (only the outputs do) ...
    outputs = 128 * (784 * 4 + 8 + 10 * 4)
    assert bounded_large <= bounded_small + 2 * outputs
    # ... and it is far below the unchunked pass.
    assert bounded_large < 0.25 * unbounded_large


def test_empty_batch(tiny_vae: PuVAE) -> None:
    out = tiny_vae.project(torch.rand(0, 1, 28, 28))
    assert out.purified.shape == (0, 1, 28, 28) and out.labels.shape == (0,) and out.distances.shape == (0, 10)


def test_gradients_flow_through_the_chosen_candidate(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    x = images.clone().requires_grad_(True)
    out = tiny_vae.project(x, sigma_eps=0.0)
    out.purified.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_max_batch_must_hold_one_image(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        tiny_vae.project(images, max_batch=5)


@pytest.mark.parametrize("sigma_eps", [-0.1, float("nan"), "0.1"])
def test_bad_sigma_eps(tiny_vae: PuVAE, images: torch.Tensor, sigma_eps) -> None:
    with pytest.raises(ValueError, match="sigma_eps"):
        tiny_vae.project(images, sigma_eps=sigma_eps)


def test_bad_labels(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"in \[0, 9\]"):
        tiny_vae.encode(images, torch.tensor([0, 1, 2, 3, 4, 10]))
    with pytest.raises(TypeError, match="integer"):
        tiny_vae.encode(images, torch.zeros(6))
    with pytest.raises(ValueError, match="shape"):
        tiny_vae.encode(images, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="z must"):
        tiny_vae.decode(torch.zeros(6, 3), torch.zeros(6, dtype=torch.long))


def test_dtype_follows_the_model(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    model = tiny_vae.double()
    out = model.project(images, sigma_eps=0.0)
    assert out.purified.dtype == torch.float64 and out.distances.dtype == torch.float32


def test_projection_under_autocast(tiny_vae: PuVAE, images: torch.Tensor) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_vae.project(images, sigma_eps=0.0)
    assert out.purified.shape == images.shape and out.distances.dtype == torch.float32


@pytest.mark.cuda
def test_cuda_projection_matches_cpu(tiny_vae: PuVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    # An untrained decoder barely reads the label: its ten candidates lie within 1e-6 RMSE of each
    # other and the nearest is floating-point noise (the H200 picked another on 1 of 6 random
    # images). Make the label matter and project the candidates themselves, so that the nearest
    # wins by ~6e-3; fp32 convolutions (no TF32) on both sides.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    with torch.no_grad():
        tiny_vae.decoder_in.weight[:, TINY_MNIST.latent_dim :] *= 100
        images = tiny_vae.decode(torch.zeros(len(labels), TINY_MNIST.latent_dim), labels)
        cpu = tiny_vae.project(images, sigma_eps=0.0)
        gpu = tiny_vae.cuda().project(images.cuda(), sigma_eps=0.0)
    margins = cpu.distances.sort(dim=1).values.diff(dim=1)[:, 0]
    assert torch.equal(cpu.labels, labels) and margins.min() > 1e-3
    assert torch.equal(gpu.labels.cpu(), labels)
    torch.testing.assert_close(gpu.distances.cpu(), cpu.distances, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_cuda_peak_memory_is_bounded_by_max_batch() -> None:
    model = PuVAE().cuda().eval()
    x = torch.rand(256, 1, 28, 28, device="cuda")

    def peak(max_batch: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            model.project(x, sigma_eps=0.1, max_batch=max_batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    assert peak(40) < 0.2 * peak(2560)
