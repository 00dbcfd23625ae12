from __future__ import annotations

import pytest

from puvae_defense import PuVAE, PuVAEConfig


def test_default_is_the_papers_mnist_model() -> None:
    cfg = PuVAEConfig()
    assert cfg.image_shape == (1, 28, 28) and cfg.num_classes == 10
    assert (cfg.conv_channels, cfg.conv_kernel, cfg.conv_dilation, cfg.num_convs) == (32, 7, 2, 3)
    assert cfg.encoder_hidden == (1024, 1024, 1024) and cfg.latent_dim == 32
    assert (cfg.decoder_hidden, cfg.deconv_channels, cfg.deconv_kernel, cfg.num_deconvs) == (512, 32, 7, 4)


@pytest.mark.parametrize(
    ("shape", "sizes", "seed_channels"),
    [((1, 28, 28), ((2, 2), (4, 4), (7, 7), (14, 14), (28, 28)), 128),
     ((3, 32, 32), ((2, 2), (4, 4), (8, 8), (16, 16), (32, 32)), 128)],
)
def test_decoder_chain(shape, sizes, seed_channels) -> None:
    cfg = PuVAEConfig(image_shape=shape)
    assert cfg.decoder_sizes == sizes
    assert cfg.decoder_seed_channels == seed_channels


def _table1_params(channels: int, height: int, width: int, classes: int = 10) -> int:
    conv = (channels * 49 + 1) * 32 + 2 * (32 * 49 + 1) * 32
    fc = (32 * height * width + classes + 1) * 1024 + 2 * (1024 + 1) * 1024 + (1024 + 1) * 64
    dec_fc = (32 + classes + 1) * 512
    deconv = (128 * 49) * 32 + 32 + 2 * ((32 * 49) * 32 + 32) + 32 * 49 * channels + channels
    return conv + fc + dec_fc + deconv


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_parameter_count_matches_table1(shape) -> None:
    model = PuVAE(PuVAEConfig(image_shape=shape))
    assert sum(p.numel() for p in model.parameters()) == _table1_params(*shape)


def test_round_trip_dict() -> None:
    cfg = PuVAEConfig(image_shape=(3, 32, 32), encoder_hidden=(64, 32))
    assert PuVAEConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_shape": (28, 28)}, "image_shape"),
        ({"image_shape": (1, 0, 28)}, "height"),
        ({"num_classes": 1}, "num_classes"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"conv_kernel": 4}, "odd"),
        ({"encoder_hidden": ()}, "encoder_hidden"),
        ({"decoder_hidden": 510}, "divisible"),
    ],
)
def test_invalid_configs(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        PuVAEConfig(**kwargs)


def test_unknown_dict_keys() -> None:
    with pytest.raises(ValueError, match="unknown PuVAEConfig keys"):
        PuVAEConfig.from_dict({"latent": 3})


def test_for_images_keeps_the_papers_sizes_from_20_pixels() -> None:
    assert PuVAEConfig.for_images((1, 28, 28)) == PuVAEConfig()
    assert PuVAEConfig.for_images((3, 32, 32), 100) == PuVAEConfig(image_shape=(3, 32, 32), num_classes=100)
    assert PuVAEConfig.for_images((1, 20, 24)).conv_kernel == 7


@pytest.mark.parametrize("shape, sizes", [((1, 8, 8), ((2, 2), (4, 4), (8, 8))),
                                          ((3, 16, 16), ((2, 2), (4, 4), (8, 8), (16, 16))),
                                          ((1, 12, 10), ((3, 3), (6, 5), (12, 10))),
                                          ((1, 4, 4), ((2, 2), (4, 4))),
                                          ((1, 2, 3), ((1, 2), (2, 3)))])
def test_for_images_small_sizes_build_and_project_to_the_input_shape(shape, sizes) -> None:
    import torch

    from puvae_defense import PuVAE

    config = PuVAEConfig.for_images(shape, 4)
    assert config.decoder_sizes == sizes and (config.conv_kernel, config.conv_dilation) == (3, 1)
    vae = PuVAE(config)
    assert sum(p.numel() for p in vae.parameters()) < 5_000_000
    out = vae.project(torch.rand(3, *shape), sigma_eps=0.0)
    assert out.purified.shape == (3, *shape) and out.distances.shape == (3, 4)


def test_for_images_rejects_a_shape_that_is_not_chw() -> None:
    with pytest.raises(ValueError, match="channels, height, width"):
        PuVAEConfig.for_images((8, 8))
