"""The defences the PuVAE paper compares against (Table 2), each in its own module, citing its source.

- :mod:`.adversarial_training`: the classifier trained on FGSM images of itself (Goodfellow et al., 2015).
- :mod:`.magnet`: MagNet's auto-encoder reformer (Meng and Chen, 2017).
- :mod:`.defense_gan`: Defense-GAN's projection onto a WGAN generator (Samangouei et al., 2018).
- :mod:`.feature_squeezing`: bit-depth squeezing (Xu et al., 2018), an input transform to put
  in front of a purifier (``PurifiedClassifier(..., input_transform=BitDepthSqueeze(1))``).

Purifiers subclass :class:`ImagePurifier` and go into :class:`~puvae_defense.PurifiedClassifier`
exactly like a PuVAE; adversarial training changes the classifier and needs no purifier.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .adversarial_training import fgsm_objective, fit_adversarial_classifier
from .base import ImagePurifier
from .defense_gan import Critic, DefenseGAN, DefenseGANConfig, GANSearch, TrackedProjection, fit_defense_gan, parse_search
from .feature_squeezing import BitDepthSqueeze
from .magnet import MagNetConfig, MagNetReformer, fit_magnet

__all__ = ["BitDepthSqueeze", "NoPurifier", "load_purifier", "Critic", "DefenseGAN", "DefenseGANConfig", "GANSearch", "ImagePurifier", "MagNetConfig", "MagNetReformer", "fgsm_objective",
           "fit_adversarial_classifier", "fit_defense_gan", "fit_magnet", "parse_search", "TrackedProjection"]


class NoPurifier(ImagePurifier):
    """The identity: a classifier behind it is undefended, or defended by its own training
    (adversarial training), and runs through the same harness as the purifiers."""

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28)) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)  # type: ignore[assignment]
        self.register_buffer("_device_marker", torch.zeros(0), persistent=False)

    def _purify(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return images


def load_purifier(name_or_path: str | os.PathLike[str], *, device: torch.device | str | None = None):
    """Any purifier by folder, registered name or Hub repo id, of the class its ``config.json`` names.

    ``"none"`` is :class:`NoPurifier`. PuVAE folders give a :class:`~puvae_defense.PuVAE`, MagNet
    folders a :class:`MagNetReformer`, Defense-GAN folders a :class:`DefenseGAN`.
    """
    from ..hub import get_entry, is_registered_name, model_class

    if str(name_or_path) == "none":
        return NoPurifier().to(device)
    purifier_types = ("puvae", "magnet", "defense-gan")
    path = Path(name_or_path)
    folder = path.parent if path.is_file() else path
    if is_registered_name(name_or_path):  # before any folder of the same name, which never shadows it
        model_type = get_entry(str(name_or_path)).model_type
    elif (folder / "config.json").is_file():
        try:
            payload = json.loads((folder / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ValueError(f"corrupt {folder / 'config.json'}: not valid JSON ({type(err).__name__})") from None
        model_type = payload.get("model_type") if isinstance(payload, dict) else None
    else:
        model_type = "puvae"  # a Hub repo id: the library's own models
    if model_type not in purifier_types:
        raise ValueError(f"{name_or_path} holds a {model_type!r} model, not a purifier ({sorted(purifier_types)})")
    return model_class(model_type).from_pretrained(name_or_path, device=device)
