"""Evaluation harness: Table 2 of the paper, clean accuracy through the purifier, adaptive attacks.

Two threat models:

- **gray-box (the paper's)**: adversarial examples are computed on the target classifier
  alone, then purified; the defended accuracy is the target's accuracy on the purified
  adversarial examples.
- **white-box / adaptive (beyond the paper)**: the attacker differentiates the whole
  ``PurifiedClassifier``: untargeted PGD through the full purifier gradient, through BPDA
  (identity backward pass) and with EOT over the sampling noise.

Accuracies are percentages; every random choice (targets, noise, random starts) comes from
generators seeded by ``seed``, so a rerun on the same hardware gives the same numbers. The
targets and the gray-box attacks' own randomness are drawn per batch from generators that
the purifier never touches, so gray-box adversarial examples do not depend on the purifier
and can be cached (:class:`AttackCache`): evaluating a new purifier against the paper's
attacks then costs only the purification.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import bpda, cw_l2, fgsm, ifgsm, pgd, rand_fgsm, random_targets
from .classifier import PurifiedClassifier
from .model import PuVAE
from .data import ImageDataset
from .serialization import weights_fingerprint

__all__ = [
    "ATTACK_SETTINGS",
    "AttackCache",
    "PAPER_TABLE2",
    "EvalSettings",
    "defended_accuracy",
    "evaluate",
    "results_markdown",
    "weights_fingerprint",
]

#: Table 2 of the paper (MNIST): (classifier, attack) -> (no attack, no defense, PuVAE), %.
PAPER_TABLE2: Mapping[tuple[str, str], tuple[float, float, float]] = {
    ("A", "FGSM"): (99.51, 12.46, 81.33),
    ("A", "iFGSM"): (99.51, 0.00, 92.33),
    ("A", "RAND+FGSM"): (99.51, 10.64, 82.70),
    ("A", "CW"): (99.51, 0.43, 90.80),
    ("B", "FGSM"): (99.29, 28.85, 88.25),
    ("B", "iFGSM"): (99.29, 0.04, 92.25),
    ("B", "RAND+FGSM"): (99.29, 6.42, 85.03),
    ("B", "CW"): (99.29, 0.59, 92.92),
}

_MNIST_ATTACKS: Mapping[str, Any] = {
    "eps": 0.3, "rand_alpha": 0.05, "ifgsm_step": 0.05, "ifgsm_steps": 10,
    "cw_steps": 100, "cw_lr": 0.2, "cw_initial_const": 10.0, "cw_binary_search_steps": 1, "cw_confidence": 0.0,
    "pgd_step": 0.01, "pgd_steps": 40, "eot_samples": 10, "distance_scale": 100.0,
}
#: Attack parameters per data set (L-inf budgets from section 4 of the paper).
ATTACK_SETTINGS: Mapping[str, Mapping[str, Any]] = {
    "mnist": _MNIST_ATTACKS,
    "fashion-mnist": _MNIST_ATTACKS,
    "cifar10": {**_MNIST_ATTACKS, "eps": 0.06, "rand_alpha": 0.005, "ifgsm_step": 0.01, "pgd_step": 2 / 255},
}

PAPER_ATTACKS = ("FGSM", "iFGSM", "RAND+FGSM", "CW")
ADAPTIVE_ATTACKS = ("PGD (full gradient)", "PGD + BPDA", "PGD + EOT", "PGD on the distances")


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate.

    Attributes:
        attacks: gray-box attacks, a subset of ``("FGSM", "iFGSM", "RAND+FGSM", "CW")``.
        adaptive: adaptive attacks, a subset of ``ADAPTIVE_ATTACKS``.
        limit: first ``limit`` test images for the gray-box cells (None: all).
        adaptive_limit: first images for the adaptive attacks.
        batch_size: images per batch.
        sigma_eps: the purifier's sampling noise (paper: 0.1).
        seed: seeds targets, noise and random starts.
        dataset: key of :data:`ATTACK_SETTINGS`.
    """

    attacks: tuple[str, ...] = PAPER_ATTACKS
    adaptive: tuple[str, ...] = ADAPTIVE_ATTACKS
    limit: int | None = None
    adaptive_limit: int = 1000
    batch_size: int = 500
    sigma_eps: float = 0.1
    seed: int = 0
    dataset: str = "mnist"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.attacks) - set(PAPER_ATTACKS)) + sorted(set(self.adaptive) - set(ADAPTIVE_ATTACKS))
        if unknown:
            raise ValueError(f"unknown attacks {unknown}; choose from {PAPER_ATTACKS + ADAPTIVE_ATTACKS}")
        if self.dataset not in ATTACK_SETTINGS:
            raise ValueError(f"no attack settings for {self.dataset!r}; known: {sorted(ATTACK_SETTINGS)}")

    @property
    def params(self) -> dict[str, Any]:
        """The attack parameters in use."""
        return {**ATTACK_SETTINGS[self.dataset], **self.overrides}


def _gray_box_attack(name: str, params: Mapping[str, Any]) -> Callable[..., torch.Tensor]:
    eps = params["eps"]
    if name == "FGSM":
        return lambda m, x, y, t, g: fgsm(m, x, t, eps=eps, targeted=True)
    if name == "iFGSM":
        return lambda m, x, y, t, g: ifgsm(m, x, t, eps=eps, step_size=params["ifgsm_step"],
                                           steps=params["ifgsm_steps"], targeted=True)
    if name == "RAND+FGSM":
        return lambda m, x, y, t, g: rand_fgsm(m, x, t, eps=eps, alpha=params["rand_alpha"], targeted=True, generator=g)
    return lambda m, x, y, t, g: cw_l2(m, x, y, steps=params["cw_steps"], lr=params["cw_lr"],
                                       initial_const=params["cw_initial_const"],
                                       binary_search_steps=params["cw_binary_search_steps"],
                                       confidence=params["cw_confidence"])


class AttackCache:
    """Gray-box adversarial examples on disk, keyed by everything that determines them.

    The key hashes the target classifier's weights, the attack and its parameters, the
    seed, the batch's position and the batch's pixels; a hit returns exactly what the
    attack would compute, a change to any of them is a miss. Files are safetensors
    (float32, no pickle) written atomically.

    Args:
        directory: where the files live (created on first write).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._fingerprints: dict[int, str] = {}

    def _fingerprint(self, classifier: nn.Module) -> str:
        key = id(classifier)
        if key not in self._fingerprints:
            self._fingerprints[key] = weights_fingerprint(classifier)
        return self._fingerprints[key]

    def path(self, classifier: nn.Module, attack: str, params: Mapping[str, Any], seed: int, start: int,
             images: torch.Tensor) -> Path:
        """The file that holds (or will hold) this batch's adversarial examples."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"classifier": self._fingerprint(classifier), "attack": attack, "params": dict(params),
                                  "seed": seed, "start": start, "shape": list(images.shape)}, sort_keys=True).encode())
        digest.update(images.detach().float().cpu().contiguous().numpy().tobytes())
        return self.directory / f"{attack.replace('+', 'p')}-{digest.hexdigest()[:32]}.safetensors"

    def get_or_compute(self, classifier: nn.Module, attack: str, params: Mapping[str, Any], seed: int, start: int,
                       images: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached examples, or ``compute()`` stored for next time."""
        from safetensors.torch import load_file, save_file

        path = self.path(classifier, attack, params, seed, start, images)
        if path.is_file():
            return load_file(str(path))["images"].to(images.device)
        result = compute()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"images": result.detach().float().cpu().contiguous()}, str(tmp))
        os.replace(tmp, path)
        return result


def _batch_generator(seed: int, start: int, stream: int) -> torch.Generator:
    """A generator for one batch and one purpose, independent of every other draw."""
    return torch.Generator().manual_seed(seed * 1_000_003 + start * 101 + stream)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(1) == labels).sum())


def _defended_logits(defended: PurifiedClassifier, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        return defended.classify_purified(defended.purify(images, generator=generator).purified)


def _device_of(defended: PurifiedClassifier) -> torch.device:
    """Where the purifier's weights are (the harness moves images there)."""
    tensors = [*defended.purifier.parameters(), *defended.purifier.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


def defended_accuracy(
    defended: PurifiedClassifier,
    dataset: ImageDataset,
    *,
    attack: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    seed: int = 0,
    batch_size: int = 500,
) -> float:
    """Accuracy (%) of a defended classifier on a data set, optionally attacked first.

    Args:
        defended: the purifier and the classifier.
        dataset: labelled images.
        attack: ``(images, labels, generator) -> adversarial images`` (gray-box: computed on
            whatever model the callable closes over).
        seed: seeds the generator shared by the attack and the purifier's noise.
        batch_size: images per batch.
    """
    device = _device_of(defended)
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(dataset), batch_size):
        x = dataset.images[start : start + batch_size].to(device)
        y = dataset.labels[start : start + batch_size].to(device)
        if attack is not None:
            x = attack(x, y, generator)
        correct += _correct(_defended_logits(defended, x, generator), y)
    return 100.0 * correct / len(dataset)


def evaluate(
    classifiers: Mapping[str, nn.Module],
    defended: Mapping[str, PurifiedClassifier],
    dataset: ImageDataset,
    settings: EvalSettings | None = None,
    *,
    cache: AttackCache | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the gray-box table and the adaptive attacks; returns a JSON-ready dict.

    Args:
        classifiers: name -> undefended target classifier (eval mode), e.g. ``{"A": net_a}``.
        defended: name -> the same classifier behind the purifier.
        dataset: test images (the paper: the full 10,000-image MNIST test set).
        settings: what to run; default everything on all images.
        cache: reuse gray-box adversarial examples computed by an earlier run (same
            classifier weights, attack parameters, seed and batches); the numbers are the
            same with or without it.
        progress: tqdm progress bars.
    """
    from tqdm.auto import tqdm

    settings = settings or EvalSettings()
    params = settings.params
    device = _device_of(next(iter(defended.values())))
    size = len(dataset) if settings.limit is None else min(settings.limit, len(dataset))
    adaptive_size = min(settings.adaptive_limit, size)
    started = time.perf_counter()
    report: dict[str, Any] = {"classifiers": {}}
    for name, classifier in classifiers.items():
        model = defended[name]
        counts = {"clean": 0, "clean_through_puvae": 0}
        counts.update({f"{a}/no_defense": 0 for a in settings.attacks})
        counts.update({f"{a}/puvae": 0 for a in settings.attacks})
        counts.update({a: 0 for a in settings.adaptive})
        timings: dict[str, float] = {}
        gen = torch.Generator().manual_seed(settings.seed)
        bar = tqdm(total=size, desc=f"classifier {name}", disable=not progress)
        for start in range(0, size, settings.batch_size):
            x = dataset.images[start : start + min(settings.batch_size, size - start)].to(device)
            y = dataset.labels[start : start + x.shape[0]].to(device)
            with torch.no_grad():
                clean_logits = classifier(x)
            counts["clean"] += _correct(clean_logits, y)
            targets = random_targets(y, clean_logits.shape[1], _batch_generator(settings.seed, start, 0))
            counts["clean_through_puvae"] += _correct(_defended_logits(model, x, gen), y)
            for attack in settings.attacks:
                stream = 1 + PAPER_ATTACKS.index(attack)
                tic = time.perf_counter()
                compute = lambda: _gray_box_attack(attack, params)(  # noqa: B023, E731
                    classifier, x, y, targets, _batch_generator(settings.seed, start, stream))  # noqa: B023
                x_adv = compute() if cache is None else cache.get_or_compute(
                    classifier, attack, params, settings.seed, start, x, compute)
                timings[attack] = timings.get(attack, 0.0) + time.perf_counter() - tic
                with torch.no_grad():
                    counts[f"{attack}/no_defense"] += _correct(classifier(x_adv), y)
                counts[f"{attack}/puvae"] += _correct(_defended_logits(model, x_adv, gen), y)
            if start < adaptive_size:
                x_a, y_a = x[: adaptive_size - start], y[: adaptive_size - start]
                for attack in settings.adaptive:
                    tic = time.perf_counter()
                    x_adv = _adaptive_attack(attack, model, x_a, y_a, params, gen)
                    timings[attack] = timings.get(attack, 0.0) + time.perf_counter() - tic
                    counts[attack] += _correct(_defended_logits(model, x_adv, gen), y_a)
            bar.update(x.shape[0])
        bar.close()
        report["classifiers"][name] = {
            "n": size,
            "clean_accuracy": 100.0 * counts["clean"] / size,
            "clean_through_puvae": 100.0 * counts["clean_through_puvae"] / size,
            "gray_box": {a: {"no_defense": 100.0 * counts[f"{a}/no_defense"] / size,
                             "puvae": 100.0 * counts[f"{a}/puvae"] / size} for a in settings.attacks},
            "adaptive": {a: 100.0 * counts[a] / adaptive_size for a in settings.adaptive},
            "adaptive_n": adaptive_size if settings.adaptive else 0,
            "attack_seconds": timings,
        }
    report["meta"] = {
        "settings": {"attacks": list(settings.attacks), "adaptive": list(settings.adaptive), "limit": settings.limit,
                     "adaptive_limit": settings.adaptive_limit, "batch_size": settings.batch_size,
                     "sigma_eps": settings.sigma_eps, "seed": settings.seed, "dataset": settings.dataset},
        "attack_params": params,
        "wall_seconds": time.perf_counter() - started,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return report


def _adaptive_attack(
    attack: str,
    model: PurifiedClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    params: Mapping[str, Any],
    generator: torch.Generator,
) -> torch.Tensor:
    common = {"eps": params["eps"], "step_size": params["pgd_step"], "steps": params["pgd_steps"], "generator": generator}
    if attack == "PGD (full gradient)":
        return pgd(model, images, labels, **common)
    if attack == "PGD + BPDA":
        purify = lambda x: model.purify(x).purified  # noqa: E731
        return pgd(bpda(purify, model.classify_purified), images, labels, **common)
    if attack == "PGD on the distances":
        return pgd(distance_logits(model, params["distance_scale"]), images, labels, **common)
    return pgd(model, images, labels, eot_samples=params["eot_samples"], **common)


def distance_logits(model: PurifiedClassifier, scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The purifier's own decision rule as logits: ``-scale * RMSE`` to each class projection.

    An attacker who knows PuVAE can attack this rule directly: whichever class it picks,
    the target classifier then sees that class's projection. Unlike the gradient through
    the chosen candidate, this gradient does not vanish when the projections barely depend
    on the input. Only a PuVAE has such a rule; a baseline purifier is an error.
    """
    if not isinstance(model.purifier, PuVAE):
        raise ValueError(f"'PGD on the distances' attacks PuVAE's class projection; {type(model.purifier).__name__} has none")
    return lambda images: -scale * model.purify(images).distances  # type: ignore[operator]


def _cell(ours: float, paper: float | None) -> str:
    if paper is None:
        return f"{ours:.2f}"
    return f"{ours:.2f} ({paper:.2f}, {ours - paper:+.2f})"


def results_markdown(report: Mapping[str, Any], *, paper: Mapping[tuple[str, str], tuple[float, float, float]] | None = None) -> str:
    """Markdown tables of a report; cells read ``ours (paper, ours - paper)`` where the paper has a value."""
    paper = PAPER_TABLE2 if paper is None else paper
    lines = [
        "| Classifier | Attack | No Attack | No Defense | PuVAE | Clean through PuVAE |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in report["classifiers"].items():
        for attack, cell in result["gray_box"].items():
            ref = paper.get((name, attack))
            lines.append(
                f"| {name} | {attack} | {_cell(result['clean_accuracy'], ref[0] if ref else None)} | "
                f"{_cell(cell['no_defense'], ref[1] if ref else None)} | {_cell(cell['puvae'], ref[2] if ref else None)} | "
                f"{result['clean_through_puvae']:.2f} |"
            )
    adaptive_rows = [(n, r) for n, r in report["classifiers"].items() if r["adaptive"]]
    if adaptive_rows:
        attacks: Sequence[str] = list(adaptive_rows[0][1]["adaptive"])
        lines += ["", "| Classifier | n | " + " | ".join(attacks) + " |", "|---|---|" + "---|" * len(attacks)]
        for name, result in adaptive_rows:
            lines.append(f"| {name} | {result['adaptive_n']} | " + " | ".join(f"{result['adaptive'][a]:.2f}" for a in attacks) + " |")
    return "\n".join(lines) + "\n"
