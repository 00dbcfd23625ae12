"""The purifier as a preprocessing defence of the Adversarial Robustness Toolbox (ART).

``PuVAEPreprocessor`` puts PuVAE in front of any ART PyTorch estimator, so ART's attacks and
metrics run against the defended model::

    from art.estimators.classification import PyTorchClassifier
    from puvae_defense.art import PuVAEPreprocessor

    classifier = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                   nb_classes=10, clip_values=(0, 1),
                                   preprocessing_defences=[PuVAEPreprocessor("puvae-mnist")])

Gradients: with ``bpda=False`` (default) ART differentiates through the projection (the
chosen candidate), like a full-gradient attack on :class:`~puvae_defense.PurifiedClassifier`;
with ``bpda=True`` the backward pass through the purifier is the identity (BPDA, Athalye et
al. 2018): the classifier's gradient at the purified images is passed to the input unchanged.

Needs ``adversarial-robustness-toolbox`` (the optional extra ``interop``).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .model import PuVAE

try:
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError('puvae_defense.art needs the Adversarial Robustness Toolbox: pip install "puvae-defense[interop]"') from err

__all__ = ["PuVAEPreprocessor"]


class PuVAEPreprocessor(PreprocessorPyTorch):
    """PuVAE purification as an ART ``PreprocessorPyTorch``.

    Args:
        purifier: a :class:`PuVAE`, a weights folder, a registered name or a Hub repo id.
        sigma_eps: projection noise (paper 0.1; 0 is deterministic).
        bpda: estimate the defence's gradient with the identity (BPDA) instead of
            differentiating the projection.
        device_type: ``"cpu"`` or ``"gpu"`` (as ART's other preprocessors).
        apply_fit, apply_predict: ART's switches for training and prediction.
    """

    def __init__(
        self,
        purifier: PuVAE | str | os.PathLike[str],
        *,
        sigma_eps: float = 0.1,
        bpda: bool = False,
        device_type: str = "cpu",
        apply_fit: bool = False,
        apply_predict: bool = True,
    ) -> None:
        super().__init__(device_type=device_type, is_fitted=True, apply_fit=apply_fit, apply_predict=apply_predict)
        if isinstance(purifier, (str, os.PathLike)):
            purifier = PuVAE.from_pretrained(purifier)
        if not isinstance(purifier, PuVAE):
            raise TypeError(f"purifier must be a PuVAE, a weights folder, a registered name or a Hub repo id, got "
                            f"{type(purifier).__name__}")
        if not isinstance(sigma_eps, (int, float)) or isinstance(sigma_eps, bool) or not sigma_eps >= 0:
            raise ValueError(f"sigma_eps must be a non-negative number, got {sigma_eps!r}")
        self.purifier = purifier.to(self.device).eval()
        self.sigma_eps = float(sigma_eps)
        self.bpda = bool(bpda)

    def forward(self, x: torch.Tensor, y: Any | None = None) -> tuple[torch.Tensor, Any | None]:
        """Purified images (same dtype as ``x``) and the labels unchanged.

        ART differentiates this method: through the projection, or with ``bpda`` through the
        identity (the value is the purified images, the backward pass skips the purifier).
        """
        images = x.to(self.purifier.encoder_in.weight.dtype)
        if self.bpda:
            with torch.no_grad():
                purified = self.purifier.project(images, self.sigma_eps).purified.to(x.dtype)
            return x + (purified - x).detach(), y
        return self.purifier.project(images, self.sigma_eps).purified.to(x.dtype), y

    def estimate_forward(self, x: torch.Tensor, y: Any | None = None) -> torch.Tensor:
        """The same as :meth:`forward` (it is already differentiable, or BPDA's straight-through)."""
        return self.forward(x, y)[0]

    def fit(self, x: Any, y: Any = None, **kwargs: Any) -> None:
        """Nothing to fit: the purifier is trained with :func:`puvae_defense.fit`."""
