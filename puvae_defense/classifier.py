"""``PurifiedClassifier``: any image classifier behind a PuVAE purifier (Figure 1 of the paper)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import check_images
from .baselines.base import ImagePurifier
from .kernels import Backend
from .model import Projection, PuVAE, check_sigma_eps

if TYPE_CHECKING:
    from .diagnosis import Diagnosis

__all__ = ["PurifiedClassifier", "SETTINGS_NAME"]

#: The file of a saved ``PurifiedClassifier`` that holds its settings (beside ``purifier/`` and ``classifier/``).
SETTINGS_NAME = "purified_classifier.json"


class PurifiedClassifier(nn.Module):
    """Purify inputs with PuVAE, then classify the purified images (eq. 17).

    ``forward`` returns the wrapped classifier's logits on the purified images. The
    wrapper never changes the classifier's weights or its train/eval mode by itself
    (``.train()`` / ``.eval()`` called on the wrapper propagate, as for any module);
    it follows ``.to(device)`` / ``.to(dtype)``, works under ``torch.no_grad()`` and is
    differentiable: gradients flow through the chosen candidate (a full-gradient attack
    sees the purifier; use :mod:`puvae_defense.attacks` for BPDA and EOT).

    Args:
        classifier: the target model ``M_t``; takes ``(B, C, H, W)`` and returns logits.
        purifier: a :class:`~puvae_defense.model.PuVAE`, a folder written by
            ``save_pretrained``, a registered name such as ``"puvae-mnist"`` or a Hub
            repo id; or a baseline purifier (:class:`~puvae_defense.baselines.ImagePurifier`,
            e.g. MagNet's reformer), which ``purify`` returns without labels or distances.
        sigma_eps: noise scale of the projection (paper: 0.1; 0 is deterministic).
        preprocess: applied to the purified images before the classifier, e.g. a
            torchvision ``Normalize`` (inputs stay in [0, 1]; normalization goes here).
        input_transform: applied to the checked inputs before the purifier, e.g.
            :class:`~puvae_defense.baselines.BitDepthSqueeze` (Feature Squeezing). It is
            another defense composed with the purifier: report its results as such.
        max_batch: largest number of (image, class) pairs decoded at once.
        backend: selection kernel backend (``"auto"``, ``"torch"``, ``"triton"``).
        check_num_classes: raise if the classifier's output width differs from the
            purifier's number of classes (both must index the same label set).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        >>> model = PurifiedClassifier(net, PuVAE(), sigma_eps=0.0)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        purifier: PuVAE | ImagePurifier | str | os.PathLike[str],
        *,
        sigma_eps: float = 0.1,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_batch: int | None = None,
        backend: Backend = "auto",
        check_num_classes: bool = True,
    ) -> None:
        super().__init__()
        if not callable(classifier):
            raise TypeError(f"classifier must be a callable nn.Module, got {type(classifier).__name__}")
        sigma_eps = check_sigma_eps(sigma_eps)  # before loading anything
        if isinstance(purifier, (str, os.PathLike)):
            from .baselines import load_purifier

            purifier = load_purifier(purifier)
        if not isinstance(purifier, (PuVAE, ImagePurifier)):
            raise TypeError(
                "purifier must be a PuVAE, a baseline ImagePurifier, a weights folder, a registered name or a Hub "
                f"repo id, got {type(purifier).__name__}"
            )
        for name, transform in (("preprocess", preprocess), ("input_transform", input_transform)):
            if transform is not None and not callable(transform):
                raise TypeError(f"{name} must be callable, got {type(transform).__name__}")
        self.classifier = classifier
        self.purifier = purifier
        self.preprocess = preprocess
        self.input_transform = input_transform
        self.sigma_eps = sigma_eps
        self.max_batch = max_batch
        self.backend: Backend = backend
        self.check_num_classes = check_num_classes

    @property
    def num_classes(self) -> int | None:
        """Number of classes of the purifier (``None`` for a purifier that does not classify)."""
        return self.purifier.num_classes if isinstance(self.purifier, PuVAE) else None

    def purify(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> Projection:
        """Project ``images`` (``(B, C, H, W)`` in [0, 1]) onto every class; see :meth:`PuVAE.project`.

        For a baseline purifier, ``labels`` and ``distances`` of the result are ``None``.
        With an ``input_transform``, the checked images are transformed first.
        """
        if self.input_transform is not None:
            shape = self.purifier.image_shape if isinstance(self.purifier, ImagePurifier) else self.purifier.config.image_shape
            images = self.input_transform(check_images(images, shape))
        if isinstance(self.purifier, ImagePurifier):
            return Projection(self.purifier.purify(images, generator), None, None)
        return self.purifier.project(
            images, self.sigma_eps, generator, max_batch=self.max_batch, backend=self.backend
        )

    def classify_purified(self, purified: torch.Tensor) -> torch.Tensor:
        """Apply ``preprocess`` and the classifier to already purified images."""
        inputs = self.preprocess(purified) if self.preprocess is not None else purified
        logits = self.classifier(inputs)
        if self.check_num_classes and self.num_classes is not None and isinstance(logits, torch.Tensor) and logits.dim() == 2:
            if logits.shape[1] != self.num_classes:
                raise ValueError(
                    f"the classifier returns {logits.shape[1]} logits but the purifier projects onto "
                    f"{self.num_classes} classes; they must share one label set (pass "
                    "check_num_classes=False if the mismatch is intended)"
                )
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the classifier on the purified ``images`` (``(B, C, H, W)`` in [0, 1])."""
        return self.classify_purified(self.purify(images).purified)

    def check(self, dataset: Dataset[Any], *, tolerance: float = 1.0, limit: int | None = 1000, seed: int = 0) -> Diagnosis:
        """Measure on your labelled images what the purifier costs this classifier; warn when it is too much.

        Runs :func:`puvae_defense.diagnose` with this wrapper's classifier, purifier, ``preprocess``
        and ``sigma_eps``: a ``UserWarning`` names the drop and the next step when the purifier
        costs more than ``tolerance`` points of accuracy, so a classifier that misreads the
        purifier's outputs is never used silently. Print the result for the full report.

        Args:
            dataset: ``(image (C, H, W) in [0, 1], label)`` pairs, e.g. your validation split.
            tolerance: the largest acceptable drop, in points.
            limit: use the first ``limit`` images (None: all).
            seed: seeds the projection's sampling noise.
        """
        from .diagnosis import diagnose

        if self.input_transform is not None:
            raise ValueError("check() measures the purifier alone; this PurifiedClassifier also has an input_transform "
                             "(another defense): call puvae_defense.diagnose on a wrapper without it")
        return diagnose(self.classifier, self.purifier, dataset, limit=limit, sigma_eps=self.sigma_eps,
                        preprocess=self.preprocess, tolerance=tolerance, seed=seed)

    def save_pretrained(self, directory: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> Path:
        """Save the defended model as one folder: ``purifier/``, ``classifier/`` (when it is one of
        this library's models; otherwise pass it again to :meth:`from_pretrained`) and the settings
        (``sigma_eps``, ``max_batch``, ``backend``, 1-bit squeezing) in ``purified_classifier.json``.

        Args:
            directory: created if needed.
            dtype: store the weights in this dtype (``torch.float16`` halves the files).

        Raises:
            ValueError: a ``preprocess`` or an ``input_transform`` other than
                :class:`~puvae_defense.baselines.BitDepthSqueeze` (code cannot be saved as data: save
                without it and pass it to :meth:`from_pretrained`).
        """
        from .baselines import BitDepthSqueeze
        from .serialization import PretrainedMixin

        if self.preprocess is not None:
            raise ValueError("a preprocess cannot be saved (it is code): save without it and pass "
                             "preprocess=... to PurifiedClassifier.from_pretrained")
        if self.input_transform is not None and not isinstance(self.input_transform, BitDepthSqueeze):
            raise ValueError(f"the input_transform {type(self.input_transform).__name__} cannot be saved; only "
                             "BitDepthSqueeze can")
        if not isinstance(self.purifier, PretrainedMixin):
            raise TypeError(f"the purifier {type(self.purifier).__name__} has no weights to save")
        directory = Path(directory)
        self.purifier.save_pretrained(directory / "purifier", dtype=dtype)
        saves_classifier = isinstance(self.classifier, PretrainedMixin)
        if saves_classifier:
            self.classifier.save_pretrained(directory / "classifier", dtype=dtype)  # type: ignore[union-attr]
        squeeze = self.input_transform
        settings = {"format_version": 1, "sigma_eps": self.sigma_eps, "max_batch": self.max_batch, "backend": self.backend,
                    "check_num_classes": self.check_num_classes, "classifier_saved": saves_classifier,
                    "squeeze_bits": squeeze.bits if isinstance(squeeze, BitDepthSqueeze) else None}
        (directory / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        classifier: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str | None = None,
    ) -> PurifiedClassifier:
        """Load a folder written by :meth:`save_pretrained` (in eval mode).

        Args:
            directory: the folder.
            classifier: the classifier, when the folder holds none (or to replace the saved one).
            preprocess: applied between purifier and classifier, as in the constructor.
            device: where the modules go.
        """
        from .baselines import BitDepthSqueeze, load_purifier
        from .classifiers import PaperClassifier

        directory = Path(directory)
        path = directory / SETTINGS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {SETTINGS_NAME}: not a folder written by PurifiedClassifier.save_pretrained")
        try:
            settings = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ValueError(f"corrupt {path}: {type(err).__name__}") from None
        if not isinstance(settings, dict) or settings.get("format_version") != 1:
            raise ValueError(f"{path} is not a format_version 1 PurifiedClassifier settings file")
        if classifier is None:
            if not settings.get("classifier_saved"):
                raise ValueError(f"{directory} holds no classifier (it was not one of this library's models): pass "
                                 "classifier=...")
            classifier = PaperClassifier.from_pretrained(directory / "classifier", device=device)
        bits = settings.get("squeeze_bits")
        model = cls(classifier, load_purifier(directory / "purifier", device=device), sigma_eps=settings["sigma_eps"],
                    preprocess=preprocess, input_transform=BitDepthSqueeze(bits) if bits else None,
                    max_batch=settings.get("max_batch"), backend=settings.get("backend", "auto"),
                    check_num_classes=settings.get("check_num_classes", True))
        return model.eval()
