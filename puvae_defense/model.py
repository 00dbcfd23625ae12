"""PuVAE: the conditional VAE of Hwang et al. (2019) and its class projection.

The encoder maps an image and a class label to a Gaussian posterior over a 32-d latent
code; the decoder maps a code and a label back to an image. To purify an input, it is
projected onto every class (eq. 14), the candidate closest in RMSE is chosen (eq. 15-16)
and handed to the target classifier (eq. 17).

Shapes: ``B`` images, ``C`` classes, ``L`` latent size, ``D = channels * height * width``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_images, check_labels
from .config import PuVAEConfig
from .kernels import Backend, select_closest
from .serialization import PretrainedMixin

__all__ = ["DEFAULT_MAX_BATCH", "Projection", "PuVAE"]

#: Default bound on the (image, class) pairs decoded at once by :meth:`PuVAE.project`.
DEFAULT_MAX_BATCH = 4096


class Projection(NamedTuple):
    """Result of projecting a batch onto every class.

    Attributes:
        purified: ``(B, C_img, H, W)`` the closest candidate of each image (eq. 16).
        labels: ``(B,)`` int64 class whose projection is closest (eq. 15); ``None`` from a
            baseline purifier that does not classify.
        distances: ``(B, num_classes)`` float32 RMSE between each input and each projection;
            ``None`` from a baseline purifier.
    """

    purified: torch.Tensor
    labels: torch.Tensor | None
    distances: torch.Tensor | None


class PuVAE(PretrainedMixin, nn.Module):
    """Conditional VAE purifier (Table 1 of the paper).

    The one-hot label enters the encoder at its first fully connected layer (after the
    convolutional trunk, so the trunk is label-independent and computed once per image
    during projection) and the decoder at its first fully connected layer. Both layers are
    applied as ``W_x @ features + W_y[:, y] + b``, which equals the layer applied to the
    concatenation ``[features, one_hot(y)]``.

    Args:
        config: layer sizes; ``None`` gives the paper's MNIST model (1x28x28, 10 classes).

    Example:
        >>> vae = PuVAE()
        >>> out = vae.project(torch.rand(8, 1, 28, 28), sigma_eps=0.0)
        >>> out.purified.shape, out.labels.shape, out.distances.shape
        (torch.Size([8, 1, 28, 28]), torch.Size([8]), torch.Size([8, 10]))
    """

    def __init__(self, config: PuVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else PuVAEConfig()
        #: Per-epoch metrics set by :func:`puvae_defense.fit` (not stored with the weights).
        self.training_history: tuple[Any, ...] = ()
        #: Where :func:`puvae_defense.fit` started from (``None``: random weights); not stored with the weights.
        self.training_init: dict[str, str] | None = None
        #: The :class:`~puvae_defense.config.TrainConfig` of :func:`puvae_defense.fit` (``None`` when not trained by it).
        self.training_recipe: Any = None
        channels = config.image_shape[0]
        pad = config.conv_dilation * (config.conv_kernel - 1) // 2
        self.trunk = nn.ModuleList(
            nn.Conv2d(
                channels if i == 0 else config.conv_channels,
                config.conv_channels,
                config.conv_kernel,
                padding=pad,
                dilation=config.conv_dilation,
            )
            for i in range(config.num_convs)
        )
        widths = config.encoder_hidden
        self.encoder_in = nn.Linear(config.trunk_features + config.num_classes, widths[0])
        self.encoder_hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.encoder_out = nn.Linear(widths[-1], 2 * config.latent_dim)
        self.decoder_in = nn.Linear(config.latent_dim + config.num_classes, config.decoder_hidden)
        sizes = config.decoder_sizes
        deconvs = []
        for i in range(config.num_deconvs):
            (h_in, w_in), (h_out, w_out) = sizes[i], sizes[i + 1]
            last = i == config.num_deconvs - 1
            deconvs.append(
                nn.ConvTranspose2d(
                    config.decoder_seed_channels if i == 0 else config.deconv_channels,
                    channels if last else config.deconv_channels,
                    config.deconv_kernel,
                    stride=2,
                    padding=config.deconv_kernel // 2,
                    # out = 2 * in - 1 + output_padding for 'same'-padded stride-2 layers
                    output_padding=(h_out - (2 * h_in - 1), w_out - (2 * w_in - 1)),
                )
            )
        self.deconvs = nn.ModuleList(deconvs)
        # The last transposed convolution (few output channels) runs as an equivalent
        # sub-pixel convolution: oneDNN's CPU transposed convolution is slow for it.
        index, mask = _subpixel_index(config.deconv_kernel)
        self.register_buffer("_subpixel_index", index, persistent=False)
        self.register_buffer("_subpixel_mask", mask, persistent=False)

    # ------------------------------------------------------------------ pieces
    @property
    def num_classes(self) -> int:
        """Number of classes the purifier projects onto."""
        return self.config.num_classes

    def _check_device(self, images: torch.Tensor) -> None:
        param = self.encoder_in.weight
        if images.device != param.device:
            raise ValueError(
                f"images are on {images.device} but the PuVAE is on {param.device}; move one of them with .to(...)"
            )

    def _encoder_base(self, images: torch.Tensor) -> torch.Tensor:
        """The label-independent part of the encoder, ``(B, C_img, H, W) -> (B, hidden)``.

        The dilated trunk and the image columns of the first FC layer (with its bias); the
        label's contribution is one column ``W_y[:, y]`` added to this (:attr:`label_columns`).
        """
        h = images.to(self.encoder_in.weight.dtype)
        for conv in self.trunk:
            h = F.relu(conv(h))
        w_x, _ = self._split_linear(self.encoder_in, self.config.trunk_features)
        return F.linear(h.flatten(1), w_x, self.encoder_in.bias)

    @property
    def label_columns(self) -> torch.Tensor:
        """``(num_classes, hidden)``: what each one-hot label adds to the encoder's first FC layer."""
        return self._split_linear(self.encoder_in, self.config.trunk_features)[1]

    @staticmethod
    def _split_linear(layer: nn.Linear, split: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of a layer applied to ``[features, one_hot]``: ``(W_x, W_y^T)``."""
        return layer.weight[:, :split], layer.weight[:, split:].t()

    def _labelled_linear(self, layer: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``layer([features, one_hot(labels)])`` as ``W_x f + b + W_y[:, y]``; ``(B, F) -> (B, out)``."""
        w_x, w_y = self._split_linear(layer, features.shape[1])
        return F.linear(features, w_x, layer.bias) + w_y[labels]

    def _encoder_head(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activation of the first FC layer ``(N, 1024)`` -> ``(mu, sigma)``, each ``(N, L)``."""
        h = F.relu(hidden)
        for layer in self.encoder_hidden:
            h = F.relu(layer(h))
        mu, sigma_raw = self.encoder_out(h).chunk(2, dim=1)
        return mu, F.softplus(sigma_raw)

    def _decode_logits(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = F.relu(self._labelled_linear(self.decoder_in, z, labels))
        h = h.view(-1, self.config.decoder_seed_channels, *self.config.decoder_seed_size)
        h = h.contiguous(memory_format=torch.channels_last)
        for deconv in self.deconvs[:-1]:
            h = F.relu(deconv(h), inplace=True)
        return self._last_deconv(h)

    def _last_deconv(self, h: torch.Tensor) -> torch.Tensor:
        """The last stride-2 transposed convolution, computed as conv + pixel shuffle.

        Output pixel ``(2m + a, 2n + b)`` of a stride-2 transposed convolution only sees a
        ``T x T`` window of inputs around ``(m, n)``; the kernel taps it uses depend on the
        phase ``(a, b)``. Stacking the four phase kernels as output channels gives an
        ordinary convolution whose output, pixel-shuffled and cropped, equals the
        transposed convolution exactly (same weights, reordered).
        """
        deconv = self.deconvs[-1]
        c_in, c_out = deconv.weight.shape[:2]
        taps = self._subpixel_index.shape[-1]
        weight = deconv.weight.flatten(2)[:, :, self._subpixel_index] * self._subpixel_mask
        # (c_in, c_out, 2, 2, T, T) -> (c_out * 4, c_in, T, T), channel order as pixel_shuffle
        weight = weight.permute(1, 2, 3, 0, 4, 5).reshape(c_out * 4, c_in, taps, taps)
        # The window of output (m, n) starts at input (m - left, n - left); a symmetric
        # padding of ``pad`` (cheaper than an asymmetric F.pad copy) shifts it by pad - left.
        left = deconv.padding[0] // 2
        pad = max(left, taps - 1 - left)
        out = F.conv2d(h, weight, deconv.bias.repeat_interleave(4), padding=pad)
        start = pad - left
        out = F.pixel_shuffle(out[:, :, start : start + h.shape[2], start : start + h.shape[3]], 2)
        height, width = self.config.image_shape[1:]
        return out[:, :, :height, :width]

    # ------------------------------------------------------------------ public API
    def encode(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (eq. 5).

        Args:
            images: ``(B, C_img, H, W)`` floats in [0, 1].
            labels: ``(B,)`` integer class indices.

        Returns:
            ``(mu, sigma)``, each ``(B, L)``; ``sigma`` is positive (softplus).
        """
        images = check_images(images, self.config.image_shape)
        labels = check_labels(labels, images.shape[0], self.num_classes)
        self._check_device(images)
        base = self._encoder_base(images)
        return self._encoder_head(base + self.label_columns[labels.to(base.device)])

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images from latent codes (eq. 8): ``(B, L), (B,) -> (B, C_img, H, W)`` in (0, 1)."""
        return torch.sigmoid(self.decode_logits(z, labels))

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Decoder output before the final sigmoid, ``(B, C_img, H, W)`` (for stable BCE)."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a tensor of shape (B, {self.config.latent_dim}), got {got}")
        labels = check_labels(labels, z.shape[0], self.num_classes)
        return self._decode_logits(z.to(self.decoder_in.weight.dtype), labels.to(z.device))

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        sigma_eps: float = 1.0,
        *,
        generator: torch.Generator | None = None,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: encode, sample ``z = mu + sigma_eps * eps * sigma`` (eq. 6-7), decode.

        Args:
            images: ``(B, C_img, H, W)`` floats in [0, 1].
            labels: ``(B,)`` integer class indices.
            sigma_eps: scale of the reparameterisation noise (1 in training).
            generator: optional RNG for the noise.
            return_logits: return decoder logits instead of sigmoid outputs.

        Returns:
            ``(x_hat, mu, sigma)`` with ``x_hat`` shaped like ``images``.
        """
        mu, sigma = self.encode(images, labels)
        z = mu + sigma * _noise(mu.shape, sigma_eps, generator, mu)
        logits = self._decode_logits(z, labels.long().to(z.device))
        return (logits if return_logits else torch.sigmoid(logits)), mu, sigma

    def project(
        self,
        images: torch.Tensor,
        sigma_eps: float = 0.1,
        generator: torch.Generator | None = None,
        *,
        max_batch: int | None = None,
        backend: Backend = "auto",
    ) -> Projection:
        """Project every image onto every class and keep the closest candidate (eq. 14-16).

        The convolutional trunk and the image part of the first FC layer run once per
        image; the label part of that layer is one weight column per class, broadcast over
        the batch; the rest runs over all ``B x C`` pairs at once, in chunks of at most
        ``max_batch`` pairs (whole images per chunk). The noise for image ``b`` and class
        ``c`` is ``eps[b, c]`` of one ``randn(B, C, L)`` draw, so results do not depend on
        ``max_batch``. Differentiable when called with gradients enabled.

        Args:
            images: ``(B, C_img, H, W)`` floats in [0, 1].
            sigma_eps: noise scale for sampling ``z``; 0 decodes ``mu`` (paper: 0.1).
            generator: optional RNG making sampled projections reproducible.
            max_batch: largest number of (image, class) pairs decoded at once (at least
                ``num_classes``); default :data:`DEFAULT_MAX_BATCH`.
            backend: selection kernel backend, see :func:`puvae_defense.kernels.select_closest`.

        Returns:
            :class:`Projection` with ``purified``, ``labels`` and ``distances``.
        """
        images = check_images(images, self.config.image_shape)
        self._check_device(images)
        num_classes = self.num_classes
        max_batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
        if not isinstance(max_batch, int) or max_batch < num_classes:
            raise ValueError(
                f"max_batch must be an integer >= num_classes={num_classes} (one image's projections), got {max_batch!r}"
            )
        dtype = self.encoder_in.weight.dtype
        batch = images.shape[0]
        noise = _noise((batch, num_classes, self.config.latent_dim), sigma_eps, generator, images, dtype)
        images_per_chunk = max_batch // num_classes
        # A compiled or exported graph takes the batch in one chunk: a loop over a symbolic
        # batch size would specialise the graph to one size (max_batch is not applied there).
        if torch.compiler.is_compiling():
            chunks: list[tuple[torch.Tensor, torch.Tensor]] = [(images, noise)]
        else:
            chunks = [(images[s : s + images_per_chunk], noise[s : s + images_per_chunk]) for s in range(0, batch, images_per_chunk)]
        purified, labels, distances = [], [], []
        for chunk, chunk_noise in chunks:
            candidates = self._project_chunk(chunk, chunk_noise)
            flat = chunk.reshape(chunk.shape[0], -1).to(candidates.dtype)  # candidates are bf16 under autocast
            sel = select_closest(flat, candidates.reshape(chunk.shape[0], num_classes, -1), backend=backend)
            purified.append(sel.selected.view(chunk.shape[0], *self.config.image_shape))
            labels.append(sel.indices)
            distances.append(sel.distances)
        if not purified:
            empty = images.new_empty((0, *self.config.image_shape), dtype=dtype)
            return Projection(
                empty,
                torch.empty(0, dtype=torch.long, device=images.device),
                torch.empty(0, num_classes, dtype=torch.float32, device=images.device),
            )
        return Projection(torch.cat(purified), torch.cat(labels), torch.cat(distances))

    def candidates(
        self, images: torch.Tensor, sigma_eps: float = 0.1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """All projections of a (small) batch at once, ``(B, C, C_img, H, W)`` (eq. 14).

        Uses the same noise as :meth:`project` with the same ``generator`` state, so
        ``project`` picks one of these. Memory grows with ``B x C``: meant for inspection.
        """
        images = check_images(images, self.config.image_shape)
        self._check_device(images)
        dtype = self.encoder_in.weight.dtype
        noise = _noise((images.shape[0], self.num_classes, self.config.latent_dim), sigma_eps, generator, images, dtype)
        return self._project_chunk(images, noise)

    def _project_chunk(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Candidates ``(b, C, C_img, H, W)`` for ``b`` images and noise ``(b, C, L)``."""
        b, num_classes = images.shape[0], self.num_classes
        hidden = self._encoder_base(images).unsqueeze(1) + self.label_columns.unsqueeze(0)
        mu, sigma = self._encoder_head(hidden.reshape(b * num_classes, -1))
        z = mu + sigma * noise.reshape(b * num_classes, -1)
        pair_labels = torch.arange(num_classes, device=images.device).repeat(b)
        logits = self._decode_logits(z, pair_labels)
        return torch.sigmoid(logits).view(b, num_classes, *self.config.image_shape)

    model_type = "puvae"

    def _default_metadata(self) -> dict[str, Any]:
        if self.training_recipe is None:
            return {}
        import dataclasses

        training = {"recipe": dataclasses.asdict(self.training_recipe), "epochs": len(self.training_history),
                    **({"fine-tuned from": self.training_init} if self.training_init else {})}
        last = self.training_history[-1].to_dict() if self.training_history else {}
        metrics = {k: v for k, v in last.items() if k.startswith("val_") and isinstance(v, float) and v == v}
        return {"training": training, **({"metrics": metrics} if metrics else {})}

    def _config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def _from_config_dict(cls, raw: dict[str, Any]) -> PuVAE:
        return cls(PuVAEConfig.from_dict(raw))

    def project_per_class(
        self,
        images: torch.Tensor,
        sigma_eps: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> Projection:
        """The naive projection: one full ``encode``/``decode`` pass per class.

        Same semantics and noise as :meth:`project`, but recomputes the trunk for every
        class. Kept as the oracle for tests and the baseline for benchmarks.
        """
        images = check_images(images, self.config.image_shape)
        self._check_device(images)
        batch, num_classes = images.shape[0], self.num_classes
        dtype = self.encoder_in.weight.dtype
        noise = _noise((batch, num_classes, self.config.latent_dim), sigma_eps, generator, images, dtype)
        candidates = []
        for c in range(num_classes):
            labels = torch.full((batch,), c, dtype=torch.long, device=images.device)
            mu, sigma = self.encode(images, labels)
            candidates.append(self.decode(mu + sigma * noise[:, c], labels))
        stacked = torch.stack(candidates, dim=1).reshape(batch, num_classes, -1)
        sel = select_closest(images.reshape(batch, -1).to(dtype), stacked, backend="torch")
        return Projection(sel.selected.view(batch, *self.config.image_shape), sel.indices, sel.distances)


def _subpixel_index(kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel-tap table of a stride-2, 'same'-padded transposed convolution as 4 phases.

    With padding ``p = kernel // 2`` and window offset ``s = p // 2``, output phase ``a``
    at window tap ``t`` uses kernel row ``k = a + p + 2 s - 2 t`` (when ``0 <= k < kernel``).

    Returns:
        ``index (2, 2, T, T)`` into the flattened ``kernel x kernel`` taps and a float
        ``mask`` of the same shape that zeroes taps outside the kernel.
    """
    pad = kernel // 2
    offset = pad // 2
    taps = (1 + pad + 2 * offset) // 2 + 1
    rows = torch.tensor([[a + pad + 2 * offset - 2 * t for t in range(taps)] for a in range(2)])
    valid = (rows >= 0) & (rows < kernel)
    rows = rows.clamp(0, kernel - 1)
    index = rows[:, None, :, None] * kernel + rows[None, :, None, :]
    mask = (valid[:, None, :, None] & valid[None, :, None, :]).float()
    return index, mask


#: Largest sampling noise a projection accepts, in units of the posterior's standard deviation
#: (the paper samples with 0.1, training with 1): beyond it the decodings are noise, and at
#: ``inf`` or ``1e300`` they were NaN.
MAX_SIGMA_EPS = 10.0


def check_sigma_eps(sigma_eps: object) -> float:
    """``sigma_eps`` as a float in ``[0, MAX_SIGMA_EPS]``; anything else is a ``ValueError``."""
    if not isinstance(sigma_eps, (int, float)) or isinstance(sigma_eps, bool) or not 0 <= sigma_eps <= MAX_SIGMA_EPS:
        raise ValueError(f"sigma_eps must be a number in [0, {MAX_SIGMA_EPS:g}] (paper: 0.1), got {sigma_eps!r}")
    return float(sigma_eps)


def _noise(
    shape: tuple[int, ...],
    sigma_eps: float,
    generator: torch.Generator | None,
    like: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``sigma_eps * N(0, I)`` of ``shape`` on ``like``'s device (zeros when ``sigma_eps == 0``).

    The draw happens on the generator's device (so a CPU generator gives the same numbers
    whatever device the model is on) in float32, then moves to ``like``.
    """
    dtype = dtype or like.dtype
    check_sigma_eps(sigma_eps)
    if sigma_eps == 0:
        return torch.zeros(shape, dtype=dtype, device=like.device)
    if generator is None:
        eps = torch.randn(shape, device=like.device, dtype=torch.float32)
    elif torch.compiler.is_compiling():  # a compiled graph cannot take a torch.Generator: draw eagerly
        eps = torch.compiler.disable(_randn_from)(generator, shape)
    else:
        eps = _randn_from(generator, shape)
    return (eps * sigma_eps).to(device=like.device, dtype=dtype)


def _randn_from(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    # not decorated with torch.compiler.disable: that would import dynamo (and Triton) with the package
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
