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
