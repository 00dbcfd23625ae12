"""Defense-GAN (Samangouei, Kabkab and Chellappa, "Defense-GAN: Protecting Classifiers Against
Adversarial Attacks Using Generative Models", ICLR 2018) as a purifier.

A WGAN generator ``G`` is trained on clean images (WGAN-GP objective). To purify ``x``, ``R``
random codes ``z ~ N(0, I)`` are each moved by ``L`` steps of gradient descent on
``mean((G(z) - x)^2)``; the ``G(z)`` closest to ``x`` replaces it. The PuVAE paper's setting is
``L = 200`` and ``R = 20``. Here the ``R`` restarts of every image run as one batch of
``B x R`` codes, and the step uses Defense-GAN's optimiser: momentum 0.7, learning rate 10
decayed by 10x over ``0.8 L`` steps. ``precision="bf16"`` runs the generator under bfloat16
autocast (CPUs with bf16 units, CUDA); ``z`` and its updates stay float32.

Networks (Defense-GAN's MNIST model, ``net_dim = 64``, latent size 128):
generator ``FC(4*4*256) - BN - ReLU - deconv5x5/2(128) - BN - ReLU - crop 7x7 - deconv5x5/2(64) -
BN - ReLU - deconv5x5/2(C) - sigmoid``; critic ``conv5x5/2(64) - LReLU - conv5x5/2(128) - LReLU -
conv5x5/2(256) - LReLU - FC(1)``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .._checks import PRECISIONS, check_images, warn_if_emulated_bf16
from ..checkpoints import load_checkpoint, read_metadata, resume, save_checkpoint
from ..serialization import PretrainedMixin
from .base import ImagePurifier

__all__ = ["DefenseGANConfig", "DefenseGAN", "GANSearch", "TrackedProjection", "Critic", "fit_defense_gan",
           "parse_search", "PRECISIONS"]


def parse_search(text: str) -> tuple[int, int]:
    """``"200x20"`` -> ``(200, 20)``: a projection's ``L`` steps and ``R`` restarts, as written
    in the paper's tables; anything else raises ``ValueError`` naming it."""
    parts = text.strip().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"a Defense-GAN search is LxR with positive integers (steps x restarts), e.g. 200x20; got {text!r}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class DefenseGANConfig:
    """Sizes of the generator and the projection's search.

    Attributes:
        image_shape: ``(channels, 28, 28)`` (the MNIST generator's output size).
        latent_dim: size of ``z`` (Defense-GAN: 128).
        width: ``net_dim`` of the networks (64).
        steps: gradient steps per restart, ``L`` (PuVAE paper: 200).
        restarts: random starts per image, ``R`` (PuVAE paper: 20).
        lr: initial step size (Defense-GAN: 10), decayed by 10x over ``0.8 * steps``.
        momentum: of the step (Defense-GAN: 0.7).
        precision: ``"fp32"`` or ``"bf16"``: the generator's arithmetic during the search (bf16
            autocast is about 2.4x faster on a CPU with AMX; ``z``, its steps and the choice
            of the closest restart stay float32). A setting of the search, not of the weights.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 128
    width: int = 64
    steps: int = 200
    restarts: int = 20
    lr: float = 10.0
    momentum: float = 0.7
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if self.image_shape[1:] != (28, 28) or self.image_shape[0] < 1:
            raise ValueError(f"Defense-GAN's MNIST generator makes (C, 28, 28) images, got {self.image_shape}")
        for name in ("latent_dim", "width", "steps", "restarts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DefenseGANConfig.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"lr must be > 0 and momentum in [0, 1), got {self.lr} and {self.momentum}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"DefenseGANConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")


class GANSearch(NamedTuple):
    """What :meth:`DefenseGAN.search` found for each image."""

    purified: torch.Tensor
    """``(B, C, 28, 28)``: the closest ``G(z)``."""
    errors: torch.Tensor
    """``(B,)``: its mean squared error to the image."""
    codes: torch.Tensor
    """``(B, latent_dim)``: its ``z``."""
    restart_codes: torch.Tensor
    """``(B * R, latent_dim)``: where every restart ended, image-major."""


class DefenseGAN(PretrainedMixin, ImagePurifier):
    """The generator and its projection; ``purify(x)`` is the closest ``G(z)`` found.

    Example:
        >>> gan = DefenseGAN(DefenseGANConfig(steps=2, restarts=2)).eval()
        >>> gan.purify(torch.rand(3, 1, 28, 28)).shape
        torch.Size([3, 1, 28, 28])
    """

    model_type = "defense-gan"

    def __init__(self, config: DefenseGANConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DefenseGANConfig()
        self.image_shape = config.image_shape
        w = config.width
        self.fc = nn.Linear(config.latent_dim, 4 * 4 * 4 * w)
        self.bn0 = nn.BatchNorm1d(4 * 4 * 4 * w)
        self.deconv1 = nn.ConvTranspose2d(4 * w, 2 * w, 5, stride=2, padding=2, output_padding=1)
        self.bn1 = nn.BatchNorm2d(2 * w)
        self.deconv2 = nn.ConvTranspose2d(2 * w, w, 5, stride=2, padding=2, output_padding=1)
        self.bn2 = nn.BatchNorm2d(w)
        self.deconv3 = nn.ConvTranspose2d(w, config.image_shape[0], 5, stride=2, padding=2, output_padding=1)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """``G(z)``: ``(N, latent_dim) -> (N, C, 28, 28)`` in (0, 1)."""
        h = F.relu(self.bn0(self.fc(z))).view(-1, 4 * self.config.width, 4, 4)
        h = F.relu(self.bn1(self.deconv1(h)))[:, :, :7, :7]
        h = F.relu(self.bn2(self.deconv2(h)))
        return torch.sigmoid(self.deconv3(h))

    def project(
        self, images: torch.Tensor, generator: torch.Generator | None = None, *, steps: int | None = None,
        restarts: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Search ``z`` for every image: ``(closest G(z) (B, C, 28, 28), its MSE (B,))``.

        ``steps`` and ``restarts`` default to the config's (``L`` and ``R``); all ``B x R``
        searches run as one batch. The generator's weights get no gradient.
        """
        found = self.search(images, generator, steps=steps, restarts=restarts)
        return found.purified, found.errors

    def search(
        self, images: torch.Tensor, generator: torch.Generator | None = None, *, steps: int | None = None,
        restarts: int | None = None, start: torch.Tensor | None = None,
    ) -> GANSearch:
        """:meth:`project` that also returns the chosen codes, or continues from given ones.

        Args:
            images: ``(B, C, 28, 28)`` targets.
            generator: draws the random starts.
            steps: gradient steps (default ``L``).
            restarts: random starts per image (default ``R``); with ``start``, the codes per
                image that it holds.
            start: ``(B * k, latent_dim)`` codes to descend from instead of random ones, ``k``
                per image (image-major, as in ``restart_codes``), e.g. those found for a nearby
                image.
        """
        cfg = self.config
        batch = images.shape[0]
        steps = cfg.steps if steps is None else steps
        if start is not None:
            per_image = start.shape[0] // max(batch, 1)
            if (start.dim() != 2 or start.shape[1] != cfg.latent_dim or per_image < 1 or start.shape[0] != batch * per_image
                    or restarts not in (None, per_image)):
                raise ValueError(f"start must hold k ({batch} * k, {cfg.latent_dim}) codes per image, and restarts k if "
                                 f"given; got start {tuple(start.shape)} and restarts {restarts}")
            restarts = per_image
        restarts = cfg.restarts if restarts is None else restarts
        if steps < 0 or restarts < 1:
            raise ValueError(f"steps must be >= 0 and restarts >= 1, got {steps} and {restarts}")
        dtype = self.fc.weight.dtype
        target = images.to(dtype).repeat_interleave(restarts, dim=0)
        if start is None:
            z = torch.randn(batch * restarts, cfg.latent_dim, generator=generator,
                            device=generator.device if generator is not None else images.device)
        else:
            z = start.detach()
        z = z.to(images.device, dtype).requires_grad_(True)
        velocity = torch.zeros_like(z)
        if cfg.precision == "bf16":
            warn_if_emulated_bf16(images.device, "Defense-GAN precision='bf16'")
        bf16 = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        with torch.enable_grad():
            for step in range(steps):
                lr = cfg.lr * 0.1 ** (step / max(0.8 * steps, 1))
                with bf16:
                    loss = (self.generate(z).to(dtype) - target).square().mean(dim=(1, 2, 3))
                (grad,) = torch.autograd.grad(loss.sum(), z)
                velocity = cfg.momentum * velocity + grad.to(dtype)
                z = (z - lr * velocity).detach().requires_grad_(True)
        with torch.no_grad():
            with bf16:
                candidates = self.generate(z.detach()).to(dtype)
            errors = (candidates - target).square().mean(dim=(1, 2, 3)).view(batch, restarts)
            best = errors.argmin(dim=1)
            rows = torch.arange(batch, device=images.device) * restarts + best
            codes = z.detach()
            return GANSearch(candidates[rows], errors[torch.arange(batch), best], codes[rows], codes)

    def with_search(self, *, steps: int | None = None, restarts: int | None = None,
                    precision: str | None = None) -> DefenseGAN:
        """The same generator (shared weights, eval mode) with another search: ``L``, ``R`` or
        the projection's arithmetic; settings not given keep this model's."""
        changes = {k: v for k, v in {"steps": steps, "restarts": restarts, "precision": precision}.items() if v is not None}
        other = DefenseGAN(replace(self.config, **changes)).eval()
        other.load_state_dict(self.state_dict())
        return other.to(self.fc.weight.device)

    def _purify(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.training:
            raise RuntimeError("Defense-GAN purifies in eval mode (batch-norm statistics): call .eval() first")
        return self.project(images, generator)[0]

    def _config_dict(self) -> dict[str, Any]:
        return {**asdict(self.config), "image_shape": list(self.config.image_shape)}

    @classmethod
    def _from_config_dict(cls, raw: dict[str, Any]) -> DefenseGAN:
        return cls(DefenseGANConfig(**{**raw, "image_shape": tuple(raw["image_shape"])}))


class TrackedProjection:
    """An attacker's cheap stand-in for Defense-GAN's projection along an attack path (for BPDA).

    BPDA needs the purified image at every step of the attack, and Defense-GAN's projection
    (``L x R`` generator passes per image) makes each step as dear as a defense's forward
    pass. An iterative attack moves the image by one small step at a time, so the code found
    for the previous step is a good start for the next: the first call searches as the defense
    does (its ``L`` and ``R``), every later call continues from the previous call's codes for
    ``steps`` steps of the same optimiser and returns the closest. With ``every_restart`` all
    ``R`` codes of each image are followed, so the attacker's image switches basin when the
    defense's choice among its restarts would; without it only the closest is. A 40-step PGD
    then costs about ``1 + 39 * steps / L`` (every restart) or ``1 + 39 * steps / (L * R)``
    projections instead of 40. Only the attacker's gradient uses it: the defended accuracy is
    still measured with the defense's own search. Measured on 30 MNIST test images behind
    classifier B, the attack is not stronger than BPDA with the full search at every step
    (docs/baselines.md): use it for quick looks, not in place of it.

    One tracker follows one batch through one attack (make a new one per attack run); a call
    on another number of images raises ``ValueError``.

    Args:
        gan: the defense's generator (eval mode).
        steps: descent steps per later call.
        every_restart: follow all ``R`` codes of each image, not only the closest.
        generator: draws the first search's random starts.

    Example:
        >>> gan = DefenseGAN(DefenseGANConfig(steps=4, restarts=2)).eval()
        >>> track = TrackedProjection(gan, steps=2)
        >>> x = torch.rand(3, 1, 28, 28)
        >>> track(x).shape == track((x + 0.01).clamp(0, 1)).shape
        True
    """

    def __init__(self, gan: DefenseGAN, *, steps: int = 10, every_restart: bool = True,
                 generator: torch.Generator | None = None) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if gan.training:
            raise RuntimeError("Defense-GAN purifies in eval mode (batch-norm statistics): call .eval() first")
        self.gan, self.steps, self.every_restart, self.generator = gan, steps, every_restart, generator
        self.codes: torch.Tensor | None = None
        self._batch = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The tracked projection of ``images`` (``(B, C, 28, 28)`` in [0, 1])."""
        images = check_images(images, self.gan.image_shape)
        if self.codes is None:
            found = self.gan.search(images, self.generator)
            self._batch = images.shape[0]
        elif images.shape[0] != self._batch:
            raise ValueError(f"this tracker follows a batch of {self._batch} images, got {images.shape[0]}; "
                             "make a new TrackedProjection for another batch")
        else:
            found = self.gan.search(images, steps=self.steps, start=self.codes)
        self.codes = found.restart_codes if self.every_restart else found.codes
        return found.purified


class Critic(nn.Module):
    """Defense-GAN's MNIST critic (WGAN discriminator): images -> one score each."""

    def __init__(self, channels: int = 1, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(4 * width * 4 * 4, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


def _gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=noise).to(real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


class _Batches:
    """Critic batch ``k`` of a seeded shuffle per pass over the data: the same batches whether
    training runs straight through or resumes from a checkpoint."""

    def __init__(self, dataset: Dataset[Any], batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.per_epoch = len(dataset) // batch_size  # type: ignore[arg-type]
        if self.per_epoch == 0:
            raise ValueError(f"dataset has fewer than batch_size={batch_size} images")
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, k: int) -> torch.Tensor:
        epoch, position = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(  # type: ignore[arg-type]
                self.seed * 1_000_003 + epoch))
        rows = self._order[position * self.batch_size : (position + 1) * self.batch_size]
        return torch.stack([self.dataset[int(i)][0] for i in rows])


def fit_defense_gan(
    dataset: Dataset[Any],
    *,
    config: DefenseGANConfig | None = None,
    generator_steps: int = 20000,
    critic_steps: int = 5,
    batch_size: int = 50,
    lr: float = 1e-4,
    penalty: float = 10.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
) -> DefenseGAN:
    """Train the generator with the WGAN-GP objective (Gulrajani et al., 2017; labels are ignored).

    Args:
        dataset: map-style data set of ``(image (C, 28, 28) in [0, 1], label)``.
        config: generator and projection settings (default Defense-GAN's MNIST model).
        generator_steps: generator updates (Defense-GAN trains 200,000; far fewer fit a CPU).
        critic_steps: critic updates per generator update (5).
        batch_size: images per critic update (Defense-GAN: 50).
        lr: Adam learning rate, betas (0.5, 0.9), for both networks.
        penalty: gradient-penalty weight (10).
        seed: seeds initialisation, data order and noise (each step draws from its own
            seeded generator, so a resumed run is the run that was not interrupted).
        device: where to train (default CPU).
        progress: show a tqdm bar.
        checkpoint_dir: write a checkpoint every ``checkpoint_every`` generator steps and at
            the end, and resume from the latest one (its settings must match, except
            ``generator_steps``, which may grow).
        checkpoint_every: generator steps between checkpoints.

    Returns:
        The trained :class:`DefenseGAN` in eval mode.
    """
    from tqdm.auto import tqdm

    if generator_steps < 1 or critic_steps < 1 or batch_size < 2 or checkpoint_every < 1:
        raise ValueError("generator_steps, critic_steps and checkpoint_every must be >= 1 and batch_size >= 2")
    image, _ = dataset[0]
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(f"dataset items must be (image tensor (C, H, W), label), got {type(image).__name__}")
    config = config or DefenseGANConfig(image_shape=tuple(image.shape))  # type: ignore[arg-type]
    device = torch.device(device or "cpu")
    batches = _Batches(dataset, batch_size, seed)
    torch.manual_seed(seed)
    gan = DefenseGAN(config).to(device).train()
    critic = Critic(config.image_shape[0], config.width).to(device)
    opt_g = torch.optim.Adam(gan.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    modules, optimizers = {"generator": gan, "critic": critic}, {"generator_adam": opt_g, "critic_adam": opt_c}
    settings = json.dumps({"config": gan._config_dict(), "critic_steps": critic_steps, "batch_size": batch_size, "lr": lr,
                           "penalty": penalty, "seed": seed, "images": len(dataset)})  # type: ignore[arg-type]
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None

    def restore(latest: Path) -> int:
        if read_metadata(latest).get("settings") != settings:
            raise ValueError(f"{directory} holds a Defense-GAN run with other settings; resume with the same settings "
                             "or use another checkpoint_dir")
        return int(load_checkpoint(latest, modules, optimizers)["step"])

    start = (resume(directory, restore) if directory is not None else None) or 0
    if start > generator_steps:
        raise ValueError(f"{directory} holds a run of {start} generator steps, more than the {generator_steps} asked for")
    bar = tqdm(range(start, generator_steps), desc="Defense-GAN (WGAN-GP)", disable=not progress)
    for step in bar:
        noise = torch.Generator().manual_seed(seed * 1_000_003 + step)
        for j in range(critic_steps):
            real = batches(step * critic_steps + j).to(device)
            with torch.no_grad():
                fake = gan.generate(torch.randn(real.shape[0], config.latent_dim, generator=noise).to(device))
            loss_c = critic(fake).mean() - critic(real).mean() + penalty * _gradient_penalty(critic, real, fake, noise)
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
        loss_g = -critic(gan.generate(torch.randn(batch_size, config.latent_dim, generator=noise).to(device))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if not math.isfinite(loss_g.item()):
            raise FloatingPointError(f"Defense-GAN training diverged at generator step {step + 1}")
        bar.set_postfix(critic=f"{loss_c.item():.3f}", generator=f"{loss_g.item():.3f}")
        if directory is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == generator_steps):
            save_checkpoint(directory, step + 1, modules, optimizers, {"step": str(step + 1), "settings": settings})
    return gan.eval()
