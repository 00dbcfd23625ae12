"""puvae-defense: purify adversarial examples with PuVAE (Hwang et al., 2019).

Example:
    >>> from puvae_defense import PurifiedClassifier
    >>> model = PurifiedClassifier(my_net, "puvae-mnist")  # doctest: +SKIP
    >>> logits = model(images)  # images in [0, 1]  # doctest: +SKIP
    >>> puvae = fit(my_dataset, source_clf)  # train a PuVAE for a custom data set  # doctest: +SKIP

The public names are imported on first use (PEP 562), so ``import puvae_defense`` and the
command line's ``--help`` do not load torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: Public name -> the module that defines it.
_EXPORTS = {
    "PurifiedClassifier": "classifier", "PuVAEConfig": "config", "TrainConfig": "config", "list_models": "hub",
    "Projection": "model", "PuVAE": "model", "RECIPES": "recipes", "get_recipe": "recipes",
    "SmoothedClassifier": "smoothing", "fit": "training", "Diagnosis": "diagnosis", "adapt": "diagnosis",
    "diagnose": "diagnosis",
}

__all__ = ["RECIPES", "Diagnosis", "Projection", "PuVAE", "PuVAEConfig", "PurifiedClassifier", "SmoothedClassifier",
           "TrainConfig", "__version__", "adapt", "diagnose", "fit", "get_recipe", "list_models"]

if TYPE_CHECKING:
    from .classifier import PurifiedClassifier
    from .config import PuVAEConfig, TrainConfig
    from .diagnosis import Diagnosis, adapt, diagnose
    from .hub import list_models
    from .model import Projection, PuVAE
    from .recipes import RECIPES, get_recipe
    from .smoothing import SmoothedClassifier
    from .training import fit


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: puvae_defense.attacks, ...
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'puvae_defense' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
