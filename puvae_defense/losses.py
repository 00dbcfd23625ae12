"""PuVAE training objective (eq. 9-13 of the paper) and the optional terms of our recipe.

All terms are per-image values averaged over the batch. ``"sum"`` reductions sum the
reconstruction BCE over pixels and the KL over latent dimensions (a proper per-image
negative ELBO); ``"mean"`` averages instead. The paper does not say which it used,
and the choice changes the effective weight of the KL term by orders of magnitude
(docs/training.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import rmse
from .model import PuVAE

__all__ = ["PuVAEObjective", "gaussian_kl", "reconstruction_bce", "source_cross_entropy"]

Reduction = Literal["sum", "mean"]
CEForm = Literal["binary", "categorical"]
NoiseKind = Literal["sign", "uniform", "gaussian", "fgsm", "pgd"]
#: Perturbations computed on the source classifier (the others are random).
SOURCE_ATTACKS: tuple[str, ...] = ("fgsm", "pgd")
AmplitudeKind = Literal["uniform", "fixed"]


def reconstruction_bce(logits: torch.Tensor, target: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Eq. 9 with the sign that makes it a loss: ``-[x log x_hat + (1 - x) log(1 - x_hat)]`` per image."""
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1)
    return per_pixel.sum(1) if reduction == "sum" else per_pixel.mean(1)


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I)) = 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1)`` per image.

    The printed eq. 10 (``mu^2 + sigma^2 - log(sigma^2 - 1)``) is garbled; this is the
    standard Gaussian KL it stands for.
    """
    mu, sigma = mu.float(), sigma.float()
    per_dim = 0.5 * (mu.square() + sigma.square() - 2 * torch.log(sigma.clamp_min(1e-8)) - 1)
    return per_dim.sum(1) if reduction == "sum" else per_dim.mean(1)


def source_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, form: CEForm) -> torch.Tensor:
    """Cross-entropy of the source classifier's output against the labels, per image.

    ``"binary"`` is eq. 12 as printed: ``-sum_c [y_c log p_c + (1 - y_c) log(1 - p_c)]``
    with ``p = softmax(logits)`` and one-hot ``y``; ``"categorical"`` is the usual
    ``-log p_y``.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)
    if form == "categorical":
        return nll
    log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))
    wrong = torch.ones_like(log_not_p).scatter_(1, labels[:, None], 0.0)
    return nll - (wrong * log_not_p).sum(1)


class PuVAEObjective(nn.Module):
    """The loss of one training batch, as a module (so DistributedDataParallel can wrap it).

    Terms (each averaged over the batch; ``total`` is their weighted sum):

    - ``rc``: reconstruction BCE of the decoding with the true label (eq. 9);
    - ``kl``: Gaussian KL of the posterior (eq. 10);
    - ``ce``: cross-entropy of the frozen source classifier on that decoding (eq. 11-12);
    - ``wrong_ce`` (beyond the paper): the same cross-entropy for a decoding of the same
      image conditioned on a random wrong label, against that wrong label;
    - ``proj`` (beyond the paper): cross-entropy of ``softmax(-proj_scale * RMSE)`` over the
      projections onto all classes, i.e. the purifier's own decision rule (eq. 15) trained
      directly.

    With ``input_noise > 0`` the encoder sees a perturbed ``x'`` with ``||x' - x||_inf <= a``,
    ``a ~ U(0, input_noise)`` per image (``noise_amplitude="uniform"``) or ``a = input_noise``
    (``"fixed"``), while reconstructions target the clean ``x`` (a
    denoising objective, as in MagNet); the projection loss measures distances to ``x'``, as
    purification does. ``noise_kind`` chooses ``x'``: ``clip(x + a * sign(N(0, 1)))``
    (``"sign"``, every pixel moved by ``a`` as an L-inf attack moves it), ``clip(x + a * U(-1, 1))``
    (``"uniform"``), ``clip(x + a * N(0, I))`` (``"gaussian"``: ``a`` is the standard deviation, not
    an L-inf bound; the input of a denoiser for randomized smoothing), or a targeted attack on the frozen source classifier towards a random wrong
    label: one FGSM step of size ``a`` (``"fgsm"``) or ``noise_steps`` PGD steps of ``2.5 a /
    noise_steps`` from a random start (``"pgd"``). Only the first ``round(noise_fraction * B)``
    images of each (shuffled) batch are perturbed; the others stay clean. The attacks never
    see the PuVAE, only the source classifier: the defender trains against transferred
    attacks, the threat of the paper's gray-box setting. With ``attack_models`` the attacked
    images are split evenly between the source and those classifiers, each attacked on its own
    model (ensemble adversarial training, Tramer et al., 2018): a purifier trained on one
    model's perturbations learns to undo that model's directions more than others'.

    Args:
        vae: the PuVAE being trained.
        source: the source classifier ``M_s`` (frozen by the caller).
        attack_models: more frozen classifiers whose attacks share the attacked images with the
            source's (``"fgsm"`` and ``"pgd"`` only); they take no part in any loss term.
        rc_reduction, kl_reduction, ce_form, proj_scale, proj_sigma_eps, input_noise, noise_kind, noise_fraction,
            noise_steps, noise_amplitude: see the trainer's :class:`~puvae_defense.training.TrainConfig`.
    """

    def __init__(
        self,
        vae: PuVAE,
        source: nn.Module,
        *,
        rc_reduction: Reduction,
        kl_reduction: Reduction,
        ce_form: CEForm,
        proj_scale: float,
        proj_sigma_eps: float,
        input_noise: float,
        noise_kind: NoiseKind,
        noise_fraction: float,
        noise_steps: int,
        noise_amplitude: AmplitudeKind,
        need_wrong: bool,
        need_proj: bool,
        attack_models: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        if attack_models and (noise_kind not in SOURCE_ATTACKS or input_noise <= 0):
            raise ValueError(f"attack_models need attacked training inputs (noise_kind 'fgsm' or 'pgd' and "
                             f"input_noise > 0), got noise_kind {noise_kind!r}, input_noise {input_noise}")
        self.vae = vae
        self.source = source
        self.attack_models = nn.ModuleList(attack_models)
        self.rc_reduction: Reduction = rc_reduction
        self.kl_reduction: Reduction = kl_reduction
        self.ce_form: CEForm = ce_form
        self.proj_scale = proj_scale
        self.proj_sigma_eps = proj_sigma_eps
        self.input_noise = input_noise
        self.noise_kind: NoiseKind = noise_kind
        self.noise_fraction = noise_fraction
        self.noise_steps = noise_steps
        self.noise_amplitude: AmplitudeKind = noise_amplitude
        self.need_wrong = need_wrong
        self.need_proj = need_proj

    def _perturbed(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The encoder's input: the first ``round(noise_fraction * B)`` images perturbed, the rest clean."""
        count = round(self.noise_fraction * images.shape[0])
        if self.input_noise <= 0 or count == 0:
            return images
        x = images[:count]
        amplitude = torch.full((count, 1, 1, 1), self.input_noise, device=images.device)
        if self.noise_amplitude == "uniform":
            amplitude *= torch.rand_like(amplitude)
        if self.noise_kind in SOURCE_ATTACKS:
            moved = self._source_attack(x, labels[:count], amplitude)
        else:
            direction = {"sign": lambda: torch.randn_like(x).sign(), "uniform": lambda: torch.rand_like(x) * 2 - 1,
                         "gaussian": lambda: torch.randn_like(x)}[self.noise_kind]()
            moved = (x + direction * amplitude).clamp(0, 1)
        return torch.cat([moved, images[count:]])

    def _source_attack(self, images: torch.Tensor, labels: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
        """Targeted FGSM / PGD towards random wrong labels, per-image budget; the images are split
        evenly between the source and the ``attack_models``, each attacked on its own model."""
        shift = torch.randint(1, self.vae.num_classes, labels.shape, device=labels.device)
        targets = (labels + shift) % self.vae.num_classes
        models = [self.source, *self.attack_models]
        parts = zip(models, images.tensor_split(len(models)), targets.tensor_split(len(models)),
                    amplitude.tensor_split(len(models)))
        return torch.cat([self._attack_on(model, x, t, a) for model, x, t, a in parts if len(x)])

    def _attack_on(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   amplitude: torch.Tensor) -> torch.Tensor:
        """Targeted FGSM / PGD on one frozen classifier."""
        x0 = images.detach().float()
        steps, step = (1, amplitude) if self.noise_kind == "fgsm" else (self.noise_steps, 2.5 * amplitude / self.noise_steps)
        x = x0 if self.noise_kind == "fgsm" else (x0 + (torch.rand_like(x0) * 2 - 1) * amplitude).clamp(0, 1)
        with torch.autocast(images.device.type, enabled=False), torch.enable_grad():
            for _ in range(steps):
                x_var = x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model(x_var), targets), x_var)
                x = x - step * grad.sign()
                x = torch.min(torch.max(x, x0 - amplitude), x0 + amplitude).clamp(0, 1)
        return x.detach().to(images.dtype)

    def _decode(self, base: torch.Tensor, labels: torch.Tensor, sigma_eps: float):
        """Encoder head and decoder for labels ``(N,)`` given the image part ``base (N, H)``."""
        vae = self.vae
        mu, sigma = vae._encoder_head(base + vae.label_columns[labels])
        z = mu + sigma * torch.randn_like(mu) * sigma_eps
        return vae._decode_logits(z, labels), mu, sigma

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-term batch means; ``total`` is not included (weights are the trainer's)."""
        vae = self.vae
        inputs = self._perturbed(images, labels)
        base = vae._encoder_base(inputs)
        logits, mu, sigma = self._decode(base, labels, 1.0)
        terms = {
            "rc": reconstruction_bce(logits, images, self.rc_reduction).mean(),
            "kl": gaussian_kl(mu, sigma, self.kl_reduction).mean(),
            "ce": source_cross_entropy(self.source(torch.sigmoid(logits)), labels, self.ce_form).mean(),
        }
        num_classes = vae.num_classes
        if self.need_wrong:
            shift = torch.randint(1, num_classes, labels.shape, device=labels.device)
            wrong = (labels + shift) % num_classes
            wrong_logits, _, _ = self._decode(base, wrong, 1.0)
            ce = source_cross_entropy(self.source(torch.sigmoid(wrong_logits)), wrong, self.ce_form)
            terms["wrong_ce"] = ce.mean()
        if self.need_proj:
            batch = images.shape[0]
            all_labels = torch.arange(num_classes, device=labels.device).repeat(batch)
            proj_logits, _, _ = self._decode(base.repeat_interleave(num_classes, 0), all_labels, self.proj_sigma_eps)
            candidates = torch.sigmoid(proj_logits).reshape(batch, num_classes, -1)
            distances = rmse(inputs.flatten(1), candidates)
            terms["proj"] = F.cross_entropy(-self.proj_scale * distances, labels)
        return terms
