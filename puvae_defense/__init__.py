"""puvae-defense: purify adversarial examples with PuVAE (Hwang et al., 2019).

Example:
    >>> from puvae_defense import PurifiedClassifier
    >>> model = PurifiedClassifier(my_net, "puvae-mnist")  # doctest: +SKIP
    >>> logits = model(images)  # images in [0, 1]  # doctest: +SKIP
    >>> puvae = fit(my_dataset, source_clf)  # train a PuVAE for a custom data set  # doctest: +SKIP
"""

from __future__ import annotations

from .classifier import PurifiedClassifier
from .config import PuVAEConfig
from .hub import list_models
from .model import Projection, PuVAE
from .recipes import RECIPES, get_recipe
from .smoothing import SmoothedClassifier
from .training import TrainConfig, fit

__all__ = ["RECIPES", "Projection", "PuVAE", "PuVAEConfig", "PurifiedClassifier", "SmoothedClassifier", "TrainConfig", "__version__", "fit",
           "get_recipe", "list_models"]

__version__ = "0.1.0"
