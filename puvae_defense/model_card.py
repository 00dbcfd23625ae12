"""Model cards (``README.md`` with Hugging Face YAML metadata) for published weights folders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_metric", "model_card"]


def _yaml_list(key: str, values: Sequence[str]) -> list[str]:
    return [f"{key}:"] + [f"- {v}" for v in values]


_PURIFIER_TAGS = {"puvae": ["variational-autoencoder"], "magnet": ["autoencoder", "magnet"],
                  "defense-gan": ["gan", "defense-gan"]}


def format_metric(value: float) -> str:
    """Two decimals (percentages), or three significant digits for values under 0.1 (an MSE of
    0.0051 would read 0.01)."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.1 else f"{value:.3g}"


def model_card(
    *,
    name: str,
    model_type: str,
    dataset: str,
    description: str,
    metrics: Mapping[str, float],
    training: Mapping[str, Any],
    body: str = "",
    license_id: str = "mit",
    load_as: str | None = None,
) -> str:
    """Render a model card.

    Args:
        name: registry name (``"puvae-mnist"``).
        model_type: ``"puvae"``, ``"magnet"``, ``"defense-gan"`` (purifiers) or ``"classifier"``.
        dataset: Hub data set id (``"mnist"``).
        description: one paragraph on what the model is.
        metrics: measured values (percentages unless the key says otherwise).
        training: facts about training (command, epochs, wall time, hardware, ...).
        body: more Markdown (results, limits).
        license_id: SPDX id of the weights' licence.
        load_as: what the usage example loads the model by (default ``name``): the folder for a
            model that is not a registered name, which ``from_pretrained(name)`` would not find.
    """
    from ._version import __version__

    purifier = model_type in ("puvae", "magnet", "defense-gan")
    source = name if load_as is None else load_as
    usage = (
        "from puvae_defense import PurifiedClassifier\n"
        f'model = PurifiedClassifier(my_net, "{source}")  # my_net: your classifier, inputs in [0, 1]\n'
        "logits = model(images)"
        if purifier
        else "from puvae_defense.classifiers import PaperClassifier\n"
        f'net = PaperClassifier.from_pretrained("{source}")\n'
        "logits = net(images)  # images: (B, 1, 28, 28) in [0, 1]"
    )
    front = ["---", "library_name: puvae-defense", f"license: {license_id}"]
    front += _yaml_list("datasets", [dataset])
    front += _yaml_list("tags", ["adversarial-robustness", "pytorch", "safetensors"]
                        + (["purification", *_PURIFIER_TAGS[model_type]] if purifier else ["image-classification"]))
    front += _yaml_list("metrics", ["accuracy"])
    if not purifier:
        front.append("pipeline_tag: image-classification")
    front.append("---")
    lines = [*front, "", f"# {name}", "", description, "", "## Usage", "", "```python", usage, "```", "",
             "## Metrics (measured)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {format_metric(value)} |" for key, value in metrics.items()]
    lines += ["", "## Training", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in training.items()]
    lines += ["", f"Written by puvae-defense {__version__}. Paper: Hwang et al., *PuVAE: A Variational "
              "Autoencoder to Purify Adversarial Examples*, arXiv:1903.00585.", ""]
    if body:
        lines += [body.strip(), ""]
    return "\n".join(lines)
