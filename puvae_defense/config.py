"""Configuration of the PuVAE network (Table 1 of Hwang et al., 2019) and of its training.

No torch here: the command line builds its options from these without importing torch.

Reference: U. Hwang, J. Park, H. Jang, S. Yoon, N. I. Cho, "PuVAE: A Variational
Autoencoder to Purify Adversarial Examples", IEEE Access 2019 (arXiv:1903.00585).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from typing_extensions import Self

__all__ = ["MAX_LAYERS", "SMALL_IMAGE_SIDE", "PuVAEConfig", "TrainConfig"]


#: Most layers of one kind a config may ask for: far beyond any PuVAE, and a guard against a
#: hostile ``config.json`` that would spend minutes building millions of modules.
MAX_LAYERS = 64

#: Smallest image side (pixels) that :meth:`PuVAEConfig.for_images` gives the paper's layer sizes.
SMALL_IMAGE_SIDE = 20


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"PuVAEConfig.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class PuVAEConfig:
    """Layer sizes of a PuVAE. ``PuVAEConfig()`` is the paper's MNIST model.

    The defaults reproduce Table 1 of the paper: three dilated 7x7 convolutions with 32
    maps (dilation 2, 'same' padding), three fully connected layers of 1024 units, a
    64-unit output split into ``mu`` and ``softplus -> sigma`` (latent size 32); the
    decoder has a 512-unit layer reshaped to a small feature map, three 7x7 stride-2
    transposed convolutions with 32 maps and a last one to the image channels.

    Attributes:
        image_shape: ``(channels, height, width)`` of the images to purify.
        num_classes: number of classes ``C``; every input is projected onto each.
        conv_channels: feature maps of each dilated convolution.
        conv_kernel: kernel size of the dilated convolutions.
        conv_dilation: dilation rate of the dilated convolutions.
        num_convs: number of dilated convolutions.
        encoder_hidden: widths of the encoder's fully connected layers.
        latent_dim: size of ``z`` (the last encoder layer has ``2 * latent_dim`` units).
        decoder_hidden: width of the decoder's fully connected layer; it is reshaped to
            ``(decoder_hidden // (h0 * w0), h0, w0)`` with ``h0 = ceil(height / 2**num_deconvs)``.
        deconv_channels: feature maps of the hidden transposed convolutions.
        deconv_kernel: kernel size of the transposed convolutions (odd).
        num_deconvs: number of stride-2 transposed convolutions, the last one included.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    conv_channels: int = 32
    conv_kernel: int = 7
    conv_dilation: int = 2
    num_convs: int = 3
    encoder_hidden: tuple[int, ...] = field(default=(1024, 1024, 1024))
    latent_dim: int = 32
    decoder_hidden: int = 512
    deconv_channels: int = 32
    deconv_kernel: int = 7
    num_deconvs: int = 4

    def __post_init__(self) -> None:
        shape = tuple(self.image_shape)
        if len(shape) != 3:
            raise ValueError(
                f"PuVAEConfig.image_shape must be (channels, height, width), got {self.image_shape!r}"
            )
        for dim_name, dim in zip(("channels", "height", "width"), shape):
            _positive_int(f"image_shape {dim_name}", dim)
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "encoder_hidden", tuple(self.encoder_hidden))
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 2:
            raise ValueError(f"PuVAEConfig.num_classes must be an integer >= 2, got {self.num_classes!r}")
        for name in ("conv_channels", "conv_kernel", "conv_dilation", "num_convs", "latent_dim",
                     "decoder_hidden", "deconv_channels", "deconv_kernel", "num_deconvs"):
            _positive_int(name, getattr(self, name))
        if not self.encoder_hidden:
            raise ValueError("PuVAEConfig.encoder_hidden needs at least one layer width")
        for name, count in (("num_convs", self.num_convs), ("num_deconvs", self.num_deconvs),
                            ("encoder_hidden (its length)", len(self.encoder_hidden))):
            if count > MAX_LAYERS:
                raise ValueError(f"PuVAEConfig.{name} is {count}; at most {MAX_LAYERS} layers of one kind are allowed")
        for width in self.encoder_hidden:
            _positive_int("encoder_hidden", width)
        if self.conv_kernel % 2 == 0 or self.deconv_kernel % 2 == 0:
            raise ValueError(
                "PuVAEConfig.conv_kernel and deconv_kernel must be odd for 'same' padding, got "
                f"{self.conv_kernel} and {self.deconv_kernel}"
            )
        h0, w0 = self.decoder_seed_size
        if self.decoder_hidden % (h0 * w0):
            raise ValueError(
                f"PuVAEConfig.decoder_hidden={self.decoder_hidden} must be divisible by the seed map "
                f"area {h0}x{w0}={h0 * w0} (image {shape[1]}x{shape[2]}, {self.num_deconvs} stride-2 "
                "transposed convolutions)"
            )

    @classmethod
    def for_images(cls, image_shape: tuple[int, int, int], num_classes: int = 10) -> Self:
        """The layer sizes ``fit`` uses for images of ``image_shape``: the paper's, or smaller ones for small images.

        Images whose smaller side is at least :data:`SMALL_IMAGE_SIDE` pixels get the paper's
        sizes (its 7x7 kernels with dilation 2 see 13x13 pixels). Smaller images (8x8, 16x16) get
        3x3 undilated convolutions, two fully connected layers of 512 units, a 16-d latent and a
        decoder of 3x3 transposed convolutions grown from a seed map of about 2x2: the paper's
        trunk on an 8x8 image would see almost all of it in every pixel, and its first layer alone
        (2,048 x 1,024 weights at 8x8) would dwarf 1,000 training images (docs/training.md).

        Example:
            >>> PuVAEConfig.for_images((1, 28, 28)) == PuVAEConfig()
            True
            >>> PuVAEConfig.for_images((1, 8, 8)).decoder_sizes
            ((2, 2), (4, 4), (8, 8))
        """
        shape = tuple(image_shape)
        if len(shape) != 3:
            raise ValueError(f"image_shape must be (channels, height, width), got {image_shape!r}")
        side = min(shape[1], shape[2])
        if side >= SMALL_IMAGE_SIDE:
            return cls(image_shape=shape, num_classes=num_classes)
        num_deconvs = max(1, math.floor(math.log2(max(side, 2))) - 1)  # 8 <- 4 <- 2; 4 <- 2; 16 <- 8 <- 4 <- 2
        h0, w0 = (math.ceil(d / 2 ** num_deconvs) for d in shape[1:])
        return cls(image_shape=shape, num_classes=num_classes, conv_kernel=3, conv_dilation=1, encoder_hidden=(512, 512),
                   latent_dim=16, decoder_hidden=64 * h0 * w0, deconv_kernel=3, num_deconvs=num_deconvs)

    @property
    def image_numel(self) -> int:
        """Number of values in one image, ``channels * height * width``."""
        c, h, w = self.image_shape
        return c * h * w

    @property
    def trunk_features(self) -> int:
        """Size of the flattened convolutional trunk output (stride 1, 'same' padding)."""
        _, h, w = self.image_shape
        return self.conv_channels * h * w

    @property
    def decoder_sizes(self) -> tuple[tuple[int, int], ...]:
        """Spatial size after each decoder stage, seed map first, image size last.

        Each stride-2 transposed convolution doubles the size minus one, plus an output
        padding of 0 or 1, so the chain is built backwards by halving and rounding up:
        28 <- 14 <- 7 <- 4 <- 2 and 32 <- 16 <- 8 <- 4 <- 2.
        """
        _, h, w = self.image_shape
        sizes = [(h, w)]
        for _ in range(self.num_deconvs):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            sizes.append((h, w))
        return tuple(reversed(sizes))

    @property
    def decoder_seed_size(self) -> tuple[int, int]:
        """Spatial size of the map the decoder's fully connected layer is reshaped to."""
        return self.decoder_sizes[0]

    @property
    def decoder_seed_channels(self) -> int:
        """Channels of the reshaped decoder seed map."""
        h0, w0 = self.decoder_seed_size
        return self.decoder_hidden // (h0 * w0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        if not isinstance(data, dict):
            raise TypeError(f"PuVAEConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PuVAEConfig keys {unknown}; known keys are {sorted(known)}")
        values = dict(data)
        for key in ("image_shape", "encoder_hidden"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run besides the data and the source classifier.

    The defaults are the paper's settings (coefficients 0.01 / 0.1 / 10, Adam 1e-3, batch
    128), the ``"paper"`` recipe; :mod:`puvae_defense.recipes` names the recipes we measured
    (docs/training.md).

    Attributes:
        epochs: passes over the training set.
        batch_size: images per step (per process under DDP).
        lr: Adam learning rate.
        lr_schedule: ``"constant"`` or ``"cosine"`` (decays to 0 over the run).
        lambda_rc, lambda_kl, lambda_ce: the paper's coefficients (eq. 13).
        rc_reduction: reconstruction BCE ``"sum"`` or ``"mean"`` over pixels.
        kl_reduction: KL ``"sum"`` or ``"mean"`` over latent dimensions.
        kl_warmup_epochs: ramp the KL weight linearly from 0 over this many epochs.
        ce_form: ``"binary"`` (eq. 12 as printed) or ``"categorical"``.
        lambda_wrong_ce: weight of the wrong-label source cross-entropy (0 = off).
        lambda_proj: weight of the projection-classification loss (0 = off).
        proj_scale: inverse temperature on ``-RMSE`` for that loss.
        proj_sigma_eps: sampling noise of the projections in that loss.
        input_noise: maximum L-inf amplitude of the input perturbation (0 = off; for ``"gaussian"``
            the largest standard deviation); reconstructions still target the clean image.
        noise_kind: ``"sign"`` (every pixel moved by the amplitude, up or down), ``"uniform"``,
            ``"gaussian"`` (clipped Gaussian noise, the amplitude its standard deviation), ``"fgsm"`` or ``"pgd"`` (targeted attacks on the source classifier towards random
            wrong labels; see :class:`~puvae_defense.losses.PuVAEObjective`).
        noise_fraction: share of each batch that is perturbed (the rest stays clean).
        noise_steps: PGD steps for ``noise_kind="pgd"``.
        noise_amplitude: ``"uniform"`` (amplitude ``U(0, input_noise)`` per image) or ``"fixed"``.
        val_size: validation images evaluated after each epoch.
        amp: ``"off"``, ``"bf16"`` (CUDA, or CPUs with bf16 units; on other CPUs it is emulated,
            many times slower, and warns) or ``"fp16"`` (CUDA) autocast.
        freeze_trunk: keep the encoder's convolutional trunk (label-independent) fixed; meant
            for fine-tuning a pretrained PuVAE (``fit(..., init=...)``).
        seed: seeds initialisation, data order and sampling.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lambda_rc: float = 0.01
    lambda_kl: float = 0.1
    lambda_ce: float = 10.0
    rc_reduction: Literal["sum", "mean"] = "sum"
    kl_reduction: Literal["sum", "mean"] = "sum"
    kl_warmup_epochs: float = 0.0
    ce_form: Literal["binary", "categorical"] = "binary"
    lambda_wrong_ce: float = 0.0
    lambda_proj: float = 0.0
    proj_scale: float = 100.0
    proj_sigma_eps: float = 0.1
    input_noise: float = 0.0
    noise_kind: Literal["sign", "uniform", "gaussian", "fgsm", "pgd"] = "sign"
    noise_fraction: float = 1.0
    noise_steps: int = 1
    noise_amplitude: Literal["uniform", "fixed"] = "uniform"
    val_size: int = 1000
    amp: Literal["off", "bf16", "fp16"] = "off"
    freeze_trunk: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_size", "noise_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "val_size" else 1):
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("lr", "lambda_rc", "lambda_kl", "lambda_ce", "kl_warmup_epochs", "lambda_wrong_ce",
                     "lambda_proj", "proj_scale", "proj_sigma_eps", "input_noise", "noise_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainConfig.{name} must be a finite non-negative number, got {value!r}")
        choices = {"lr_schedule": ("constant", "cosine"), "rc_reduction": ("sum", "mean"), "kl_reduction": ("sum", "mean"),
                   "ce_form": ("binary", "categorical"), "amp": ("off", "bf16", "fp16"),
                   "noise_kind": ("sign", "uniform", "gaussian", "fgsm", "pgd"), "noise_amplitude": ("uniform", "fixed")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.freeze_trunk, bool):
            raise ValueError(f"TrainConfig.freeze_trunk must be True or False, got {self.freeze_trunk!r}")
        if not 0 <= self.noise_fraction <= 1:
            raise ValueError(f"TrainConfig.noise_fraction must be in [0, 1], got {self.noise_fraction!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed; unknown names are an error listing the valid ones."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise TypeError(f"unknown training options {unknown}; valid options: {sorted(fields)}")
        return dataclasses.replace(self, **changes)
