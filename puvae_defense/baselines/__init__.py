"""The defences the PuVAE paper compares against (Table 2), each in its own module, citing its source.

- :mod:`.adversarial_training`: the classifier trained on FGSM images of itself (Goodfellow et al., 2015).
- :mod:`.magnet`: MagNet's auto-encoder reformer (Meng and Chen, 2017).

Purifiers subclass :class:`ImagePurifier` and go into :class:`~puvae_defense.PurifiedClassifier`
exactly like a PuVAE; adversarial training changes the classifier and needs no purifier.
"""

from __future__ import annotations

from .adversarial_training import fgsm_objective, fit_adversarial_classifier
from .base import ImagePurifier
from .magnet import MagNetConfig, MagNetReformer, fit_magnet

__all__ = ["ImagePurifier", "MagNetConfig", "MagNetReformer", "fgsm_objective", "fit_adversarial_classifier", "fit_magnet"]
