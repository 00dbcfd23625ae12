"""Evaluation harness: Table 2 of the paper, clean accuracy through the purifier, adaptive attacks.

Two threat models:

- **gray-box (the paper's)**: adversarial examples are computed on the target classifier
  alone, then purified; the defended accuracy is the target's accuracy on the purified
  adversarial examples.
- **white-box / adaptive (beyond the paper)**: the attacker differentiates the whole
  ``PurifiedClassifier``: untargeted PGD through the full purifier gradient, through BPDA
  (identity backward pass), with EOT over the sampling noise, on PuVAE's class-projection
  distances, and for Defense-GAN through BPDA on a projection the attacker tracks from step
  to step (:class:`~puvae_defense.baselines.TrackedProjection`, a twelfth of the cost, not stronger).

Accuracies are percentages; every random choice (targets, noise, random starts) comes from
generators seeded by ``seed``, so a rerun on the same hardware gives the same numbers. The
targets and the gray-box attacks' own randomness are drawn per batch from generators that
the purifier never touches, so gray-box adversarial examples do not depend on the purifier
and can be cached (:class:`AttackCache`): evaluating a new purifier against the paper's
attacks then costs only the purification.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import bpda, cw_l2, fgsm, ifgsm, pgd, rand_fgsm, random_targets
from .baselines.defense_gan import DefenseGAN, TrackedProjection
from .baselines.feature_squeezing import BitDepthSqueeze, squeezed_bits_attack
from .classifier import PurifiedClassifier
from .model import PuVAE
from .data import ImageDataset
from .serialization import weights_fingerprint

__all__ = [
    "ATTACK_SETTINGS",
    "AttackCache",
    "DEFENSE_NAMES",
    "defense_columns",
    "PAPER_DATASETS",
    "PAPER_TABLE6",
    "PAPER_TABLES",
    "EvalSettings",
    "EvaluationProgress",
    "defended_accuracy",
    "evaluate",
    "pack_hits",
    "results_markdown",
    "unpack_hits",
    "weights_fingerprint",
    "percent_interval",
    "wilson_interval",
]

#: Column names of the paper's tables: the defense labels of :func:`evaluate` reports.
DEFENSE_NAMES: Mapping[str, str] = {"adv-training": "Adv. Tr.", "adv-training-transfer": "Adv. Tr. (transfer)",
                                    "magnet": "MagNet", "defense-gan": "Defense-GAN", "puvae": "PuVAE",
                                    "puvae-paper-recipe": "PuVAE (paper's recipe)",
                                    "puvae+squeeze": "PuVAE + bit squeezing"}


def _paper_rows(values: str) -> dict[str, float]:
    columns = ("no_attack", "no_defense", "adv-training", "magnet", "defense-gan", "puvae")
    return dict(zip(columns, map(float, values.split()), strict=True))


#: Data set -> (its name in prose, the number of the paper's table that reports it).
PAPER_DATASETS: Mapping[str, tuple[str, int]] = {"mnist": ("MNIST", 2), "fashion-mnist": ("Fashion-MNIST", 3),
                                                  "cifar10": ("CIFAR-10", 4)}

#: Tables 2 (MNIST) and 3 (Fashion-MNIST) of the paper: (classifier, attack) -> column -> %.
#: Columns: ``no_attack``, ``no_defense`` and the defense labels of :data:`DEFENSE_NAMES`.
PAPER_TABLES: Mapping[str, Mapping[tuple[str, str], Mapping[str, float]]] = {
    "mnist": {
        ("A", "FGSM"): _paper_rows("99.51 12.46 78.57 26.90 85.29 81.33"),
        ("A", "iFGSM"): _paper_rows("99.51 0.00 91.72 72.48 87.40 92.33"),
        ("A", "RAND+FGSM"): _paper_rows("99.51 10.64 84.21 32.34 89.02 82.70"),
        ("A", "CW"): _paper_rows("99.51 0.43 18.80 18.80 90.04 90.80"),
        ("B", "FGSM"): _paper_rows("99.29 28.85 88.49 71.70 86.03 88.25"),
        ("B", "iFGSM"): _paper_rows("99.29 0.04 93.56 86.29 88.55 92.25"),
        ("B", "RAND+FGSM"): _paper_rows("99.29 6.42 88.44 41.66 89.76 85.03"),
        ("B", "CW"): _paper_rows("99.29 0.59 19.20 19.10 90.76 92.92"),
    },
    "fashion-mnist": {
        ("A", "FGSM"): _paper_rows("93.46 4.06 11.51 11.71 56.67 59.18"),
        ("A", "iFGSM"): _paper_rows("93.46 0.00 50.31 34.70 65.11 72.51"),
        ("A", "RAND+FGSM"): _paper_rows("93.46 1.60 8.72 6.96 59.52 45.13"),
        ("A", "CW"): _paper_rows("93.46 5.01 18.00 15.50 68.60 80.59"),
        ("B", "FGSM"): _paper_rows("93.54 2.75 8.00 15.30 58.20 52.46"),
        ("B", "iFGSM"): _paper_rows("93.54 0.00 46.97 41.84 66.06 71.04"),
        ("B", "RAND+FGSM"): _paper_rows("93.54 1.34 9.93 7.44 60.98 52.22"),
        ("B", "CW"): _paper_rows("93.54 4.87 16.70 16.70 67.62 79.42"),
    },
}

#: Table 6 of the paper (MNIST): accuracy (%) of each defense when purifying may take at most one
#: second (a TITAN V); defense label -> attack -> %. Adversarial training, MagNet and PuVAE repeat
#: their Table 2 cells for classifier A; only Defense-GAN, cut to the budget, differs.
PAPER_TABLE6: Mapping[str, Mapping[str, float]] = {
    **{name: {attack: PAPER_TABLES["mnist"][("A", attack)][name] for attack in ("FGSM", "iFGSM", "RAND+FGSM", "CW")}
       for name in ("adv-training", "magnet", "puvae")},
    "defense-gan": {"FGSM": 69.25, "iFGSM": 73.85, "RAND+FGSM": 71.50, "CW": 72.79},
}

_MNIST_ATTACKS: Mapping[str, Any] = {
    "eps": 0.3, "rand_alpha": 0.05, "ifgsm_step": 0.05, "ifgsm_steps": 10,
    "cw_steps": 100, "cw_lr": 0.2, "cw_initial_const": 10.0, "cw_binary_search_steps": 1, "cw_confidence": 0.0,
    "pgd_step": 0.01, "pgd_steps": 40, "eot_samples": 10, "distance_scale": 100.0,
    "bpda_track_steps": 10, "bpda_track_every_restart": True,
}
#: Attack parameters per data set (L-inf budgets from section 4 of the paper).
ATTACK_SETTINGS: Mapping[str, Mapping[str, Any]] = {
    "mnist": _MNIST_ATTACKS,
    "fashion-mnist": _MNIST_ATTACKS,
    "cifar10": {**_MNIST_ATTACKS, "eps": 0.06, "rand_alpha": 0.005, "ifgsm_step": 0.01, "pgd_step": 2 / 255},
}

PAPER_ATTACKS = ("FGSM", "iFGSM", "RAND+FGSM", "CW")
ADAPTIVE_ATTACKS = ("PGD (full gradient)", "PGD + BPDA", "PGD + BPDA (tracked)", "PGD + EOT", "PGD on the distances",
                    "Search over squeezed bits")
#: Adaptive attacks that only some purifiers have (the others skip them): PuVAE's class-projection
#: rule, Defense-GAN's search that an attacker can continue from step to step.
_PURIFIER_SPECIFIC = {"PGD on the distances": PuVAE, "PGD + BPDA (tracked)": DefenseGAN}


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
        overrides: attack parameters that replace the data set's (keys and types of
            :data:`ATTACK_SETTINGS`; the report records the parameters used).
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
        if self.limit is not None and self.limit < 1 or self.batch_size < 1 or self.adaptive_limit < 0:
            raise ValueError(f"limit (None or >= 1), batch_size (>= 1) and adaptive_limit (>= 0) count images; got "
                             f"{self.limit}, {self.batch_size} and {self.adaptive_limit}")
        if not self.sigma_eps >= 0:
            raise ValueError(f"sigma_eps must be >= 0, got {self.sigma_eps}")
        defaults = ATTACK_SETTINGS[self.dataset]
        if unknown := sorted(set(self.overrides) - set(defaults)):
            raise ValueError(f"unknown attack parameters {unknown}; known: {sorted(defaults)}")
        for key, value in self.overrides.items():
            expected = type(defaults[key])
            if not (isinstance(value, expected) or (expected is float and type(value) is int)) or (
                    expected is not bool and isinstance(value, bool)):
                raise ValueError(f"attack parameter {key} must be of type {expected.__name__} (default {defaults[key]!r}), "
                                 f"got {value!r}")
            if expected is int and value < 1 or expected is float and not value >= 0:
                raise ValueError(f"attack parameter {key} must be {'>= 1' if expected is int else '>= 0'}, got {value!r}")

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


class EvaluationProgress:
    """An evaluation's progress on disk after every batch, so that a stopped run resumes.

    The file (JSON, written atomically) holds per classifier the images done, the counts,
    per-image results and timings so far and the state of every defense's noise generator,
    the wall-clock seconds spent on what it records and the devices its pieces ran on: the
    resumed run gives the numbers of the run that was not stopped, its time is the sum of its
    pieces (work lost after a piece's last batch is not counted; it is done again) and its device
    is every device that did some of the work (a piece that only writes the report adds none). It belongs to one run (settings but the
    image count, attack parameters, every model's weights and configuration); another run's
    file is an error, not a silent mix. The image count may grow between runs when the run
    stopped on a whole batch.

    Args:
        path: the JSON file (created on the first batch).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._key: dict[str, Any] | None = None
        self._state: dict[str, Any] = {}
        self.seconds_before: float | None = 0.0
        """Wall-clock seconds of the earlier pieces; ``None`` for a file written before they were recorded."""
        self.devices: list[str] = []
        """The devices the recorded batches ran on, first used first (none for a file written before they were recorded)."""

    def bind(self, key: dict[str, Any]) -> None:
        """Tie the file to one run; a file written by another run raises ``ValueError``."""
        self._key = json.loads(json.dumps(key, sort_keys=True))
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("key") != self._key:
                differ = sorted(k for k in self._key if saved.get("key", {}).get(k) != self._key[k])
                raise ValueError(f"{self.path} holds the progress of another evaluation (different {', '.join(differ)}); "
                                 "use another file or delete it")
            self._state = saved["classifiers"]
            self.seconds_before = saved.get("seconds")
            self.devices = list(saved.get("devices", []))

    def resume(self, name: str, size: int, batch_size: int, gens: Mapping[str, torch.Generator]
               ) -> tuple[int, dict[str, int], dict[str, float], dict[str, list[bool]] | None]:
        """``(images done, counts, timings, per-image results)`` of classifier ``name`` (the last
        ``None`` for a file written before they were recorded); sets ``gens`` to where they were."""
        state = self._state.get(name)
        if state is None:
            return 0, {"clean": 0}, {}, {}
        done = state["done"]
        if done > size:
            raise ValueError(f"{self.path}: classifier {name} has {done} images done, more than the {size} asked for")
        if done < size and done % batch_size:
            raise ValueError(f"{self.path}: classifier {name} stopped after a partial batch ({done} images, batches of "
                             f"{batch_size}); it cannot grow to {size} images with the same batches")
        for label, encoded in state["generators"].items():
            gens[label].set_state(torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.uint8))
        hits = {key: unpack_hits(bits) for key, bits in state["hits"].items()} if "hits" in state else None
        return done, dict(state["counts"]), dict(state["timings"]), hits

    def save(self, name: str, done: int, counts: Mapping[str, int], timings: Mapping[str, float],
             gens: Mapping[str, torch.Generator], seconds: float | None,
             hits: Mapping[str, Sequence[bool]] | None = None, device: str | None = None) -> None:
        """Record classifier ``name`` after ``done`` images, ``seconds`` into the whole run (``None``:
        unknown), with the per-image results when they are known and the device of the batch."""
        if device is not None and device not in self.devices:
            self.devices.append(device)
        self._state[name] = {"done": done, "counts": dict(counts), "timings": dict(timings),
                             **({} if hits is None else {"hits": {key: pack_hits(bits) for key, bits in hits.items()}}),
                             "generators": {label: base64.b64encode(g.get_state().numpy().tobytes()).decode()
                                            for label, g in gens.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        record = {"key": self._key, "classifiers": self._state, **({} if seconds is None else {"seconds": seconds}),
                  **({"devices": self.devices} if self.devices else {})}
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, self.path)


def _run_key(classifiers: Mapping[str, nn.Module], defenses: Mapping[str, Mapping[str, PurifiedClassifier]],
             settings: EvalSettings, transfer: Collection[str]) -> dict[str, Any]:
    """What determines an evaluation's numbers, but the image count (``EvaluationProgress``)."""
    fingerprints: dict[int, str] = {}

    def fingerprint(module: nn.Module) -> str:
        return fingerprints.setdefault(id(module), weights_fingerprint(module))

    return {
        "settings": {"attacks": list(settings.attacks), "adaptive": list(settings.adaptive),
                     "adaptive_limit": settings.adaptive_limit, "batch_size": settings.batch_size,
                     "sigma_eps": settings.sigma_eps, "seed": settings.seed, "dataset": settings.dataset},
        "attack_params": settings.params,
        "classifiers": {name: fingerprint(net) for name, net in classifiers.items()},
        "defenses": {label: {name: {"classifier": fingerprint(m.classifier), "purifier": fingerprint(m.purifier),
                                    "config": repr(getattr(m.purifier, "config", None)), "sigma_eps": m.sigma_eps,
                                    "input_transform": repr(m.input_transform)}
                             for name, m in models.items()} for label, models in defenses.items()},
        "transfer": sorted(transfer),
    }


def _batch_generator(seed: int, start: int, stream: int) -> torch.Generator:
    """A generator for one batch and one purpose, independent of every other draw."""
    return torch.Generator().manual_seed(seed * 1_000_003 + start * 101 + stream)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(1) == labels).sum())


def _defended_logits(defended: PurifiedClassifier, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        return defended.classify_purified(defended.purify(images, generator=generator).purified)


def _device_name(device: torch.device) -> str:
    """A report's name for ``device``: the GPU's model, or the CPU's architecture and threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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


def _attack_target(classifier: nn.Module, model: PurifiedClassifier, transfer: bool = False) -> nn.Module:
    """The network a gray-box attacker differentiates: the defense's own classifier, or the
    undefended one for a transfer attack."""
    if transfer or model.classifier is classifier:
        return classifier
    if model.preprocess is not None:
        raise ValueError("a defense with its own classifier (e.g. adversarial training) and a preprocess cannot be "
                         "attacked gray-box: pass the classifier with its preprocessing as one module")
    return model.classifier


def _applies(attack: str, model: PurifiedClassifier) -> bool:
    """Whether ``attack`` applies to the defense (see ``_PURIFIER_SPECIFIC``; the search over squeezed
    bits needs 1-bit squeezing in front of the purifier)."""
    if attack == "Search over squeezed bits":
        return isinstance(model.input_transform, BitDepthSqueeze) and model.input_transform.bits == 1
    kind = _PURIFIER_SPECIFIC.get(attack)
    return kind is None or isinstance(model.purifier, kind)


def evaluate(
    classifiers: Mapping[str, nn.Module],
    defenses: Mapping[str, Mapping[str, PurifiedClassifier]],
    dataset: ImageDataset,
    settings: EvalSettings | None = None,
    *,
    cache: AttackCache | None = None,
    transfer: Collection[str] = (),
    progress: bool = True,
    checkpoint: EvaluationProgress | None = None,
) -> dict[str, Any]:
    """Run the gray-box table and the adaptive attacks for several defenses on the same images.

    Gray-box examples are computed on each defense's own classifier: the undefended one for
    the purifiers (computed once per batch and shared by all of them), the defense's
    classifier when it brings its own (adversarial training). Adaptive attacks run on each
    defense as a whole; "PGD on the distances" only on PuVAE defenses (others have no
    distances; their cell is absent).

    Args:
        classifiers: name -> undefended target classifier (eval mode), e.g. ``{"A": net_a}``.
        defenses: defense label -> classifier name -> that classifier's defended model, e.g.
            ``{"puvae": {"A": PurifiedClassifier(net_a, vae)}}``; labels of :data:`DEFENSE_NAMES`
            are compared with the paper's columns. Every defense covers every classifier.
        dataset: test images (the paper: the full 10,000-image MNIST test set).
        settings: what to run; default everything on all images.
        cache: reuse gray-box adversarial examples computed by an earlier run (same
            classifier weights, attack parameters, seed and batches); the numbers are the
            same with or without it.
        transfer: labels of defenses that bring their own classifier but whose gray-box
            examples are computed on the undefended one (a transfer attack: the attacker does
            not know the classifier was retrained), e.g. ``{"adv-training-transfer"}``.
        progress: tqdm progress bars.
        checkpoint: record the progress after every batch and resume from it (a stopped run,
            or the same run on more images); the numbers are those of one uninterrupted run.

    Returns:
        ``{"classifiers": {name: {"n", "clean_accuracy", "clean_through": {defense: %},
        "gray_box": {attack: {"no_defense": %, defense: %}}, "adaptive": {defense: {attack: %}},
        "adaptive_n", "attack_seconds", "per_image"}}, "meta": {...}}``; ``per_image`` maps every
        count's key (``"clean"``, ``"clean/<defense>"``, ``"<attack>/<defense or no_defense>"``,
        ``"<defense>/<adaptive attack>"``) to which images were classified right, in the order
        of the test set (:func:`unpack_hits`), so that attacks can be compared image by image
        and their worst case taken; a run resumed from a file without them has none.
    """
    from tqdm.auto import tqdm

    if not defenses:
        raise ValueError("no defense to evaluate")
    if unknown := sorted(set(transfer) - set(defenses)):
        raise ValueError(f"transfer names defenses {unknown} that are not evaluated; defenses: {sorted(defenses)}")
    for label, models in defenses.items():
        if set(models) != set(classifiers):
            raise ValueError(f"defense {label!r} covers classifiers {sorted(models)}, expected {sorted(classifiers)}")
    settings = settings or EvalSettings()
    params = settings.params
    device = _device_of(next(iter(next(iter(defenses.values())).values())))
    device_name = _device_name(device)
    size = len(dataset) if settings.limit is None else min(settings.limit, len(dataset))
    adaptive_size = min(settings.adaptive_limit, size)
    started = time.perf_counter()
    report: dict[str, Any] = {"classifiers": {}}
    if checkpoint is not None:
        checkpoint.bind(_run_key(classifiers, defenses, settings, transfer))
    before = 0.0 if checkpoint is None else checkpoint.seconds_before

    def elapsed() -> float | None:
        """Seconds into the whole run, earlier pieces included (``None`` when they were not recorded)."""
        return None if before is None else before + time.perf_counter() - started

    resumed: dict[str, int] = {}
    for name, classifier in classifiers.items():
        models = {label: models[name] for label, models in defenses.items()}
        targets_of = {label: _attack_target(classifier, model, label in transfer) for label, model in models.items()}
        adaptive = {label: [a for a in settings.adaptive if _applies(a, model)] for label, model in models.items()}
        # One noise generator per defense: a defense's numbers do not depend on the others in the run.
        gens = {label: torch.Generator().manual_seed(settings.seed) for label in models}
        first = 0
        counts: dict[str, int] = {"clean": 0}
        timings: dict[str, float] = {}
        hits: dict[str, list[bool]] | None = {}  # per image, right or not; None when a resumed file lacks them
        if checkpoint is not None:
            first, counts, timings, hits = checkpoint.resume(name, size, settings.batch_size, gens)
            if first:
                resumed[name] = first
        score = partial(_score, counts, hits)
        bar = tqdm(total=size, initial=first, desc=f"classifier {name}", disable=not progress)
        for start in range(first, size, settings.batch_size):
            x = dataset.images[start : start + min(settings.batch_size, size - start)].to(device)
            y = dataset.labels[start : start + x.shape[0]].to(device)
            bar.set_postfix_str("clean", refresh=True)  # the bar moves within the first batch, stage by stage
            with torch.no_grad():
                clean_logits = classifier(x)
            score("clean", clean_logits, y)
            targets = random_targets(y, clean_logits.shape[1], _batch_generator(settings.seed, start, 0))
            for label, model in models.items():
                score(f"clean/{label}", _defended_logits(model, x, gens[label]), y)
            for attack in settings.attacks:
                bar.set_postfix_str(attack, refresh=True)
                examples: dict[int, torch.Tensor] = {}  # one set per attacked network, shared by its defenses
                for target in (classifier, *targets_of.values()):
                    if id(target) not in examples:
                        tic = time.perf_counter()
                        examples[id(target)] = _gray_box_examples(attack, params, target, x, y, targets, settings.seed,
                                                                  start, cache)
                        _count(timings, attack, time.perf_counter() - tic)
                with torch.no_grad():
                    score(f"{attack}/no_defense", classifier(examples[id(classifier)]), y)
                for label, model in models.items():
                    x_adv = examples[id(targets_of[label])]
                    score(f"{attack}/{label}", _defended_logits(model, x_adv, gens[label]), y)
            if start < adaptive_size:
                x_a, y_a = x[: adaptive_size - start], y[: adaptive_size - start]
                for label, model in models.items():
                    for attack in adaptive[label]:
                        bar.set_postfix_str(f"{label}: {attack}", refresh=True)
                        tic = time.perf_counter()
                        x_adv = _adaptive_attack(attack, model, x_a, y_a, params, gens[label])
                        _count(timings, f"{label}/{attack}", time.perf_counter() - tic)
                        score(f"{label}/{attack}", _defended_logits(model, x_adv, gens[label]), y_a)
            if checkpoint is not None:
                checkpoint.save(name, start + x.shape[0], counts, timings, gens, elapsed(), hits, device_name)
            bar.update(x.shape[0])
        bar.close()
        percent = partial(_percent, counts, n=size)
        report["classifiers"][name] = {
            "n": size,
            "clean_accuracy": percent("clean"),
            "clean_through": {label: percent(f"clean/{label}") for label in models},
            "gray_box": {a: {"no_defense": percent(f"{a}/no_defense"), **{label: percent(f"{a}/{label}") for label in models}}
                         for a in settings.attacks},
            "adaptive": {label: {a: percent(f"{label}/{a}", n=adaptive_size) for a in adaptive[label]}
                         for label in models if adaptive[label]} if adaptive_size else {},
            "adaptive_n": adaptive_size if settings.adaptive else 0,
            "attack_seconds": timings,
            **({} if hits is None else {"per_image": {key: pack_hits(bits) for key, bits in hits.items()}}),
        }
    report["meta"] = {
        "defenses": list(defenses),
        "transfer": sorted(transfer),
        "settings": {"attacks": list(settings.attacks), "adaptive": list(settings.adaptive), "limit": settings.limit,
                     "adaptive_limit": settings.adaptive_limit, "batch_size": settings.batch_size,
                     "sigma_eps": settings.sigma_eps, "seed": settings.seed, "dataset": settings.dataset},
        "attack_params": params,
        "wall_seconds": time.perf_counter() - started if before is None else elapsed(),
        **({"resumed": {"file": str(checkpoint.path), "images_done_before": resumed, "whole_run_timed": before is not None}}
           if resumed and checkpoint else {}),
        "device": " + ".join(checkpoint.devices) if checkpoint is not None and checkpoint.devices else device_name,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return report


def _gray_box_examples(attack: str, params: Mapping[str, Any], target: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       targets: torch.Tensor, seed: int, start: int, cache: AttackCache | None) -> torch.Tensor:
    """One batch's gray-box examples on ``target``, from the cache when it has them."""
    stream = 1 + PAPER_ATTACKS.index(attack)

    def compute() -> torch.Tensor:
        return _gray_box_attack(attack, params)(target, x, y, targets, _batch_generator(seed, start, stream))

    return compute() if cache is None else cache.get_or_compute(target, attack, params, seed, start, x, compute)


def _percent(counts: Mapping[str, int], key: str, n: int) -> float:
    return 100.0 * counts.get(key, 0) / n


def _score(counts: dict[str, int], hits: dict[str, list[bool]] | None, key: str, logits: torch.Tensor,
           labels: torch.Tensor) -> None:
    """Count the images ``logits`` classify right under ``key``, and remember which (``hits``)."""
    right = (logits.argmax(1) == labels).cpu()
    counts[key] = counts.get(key, 0) + int(right.sum())
    if hits is not None:
        hits.setdefault(key, []).extend(right.tolist())


def pack_hits(bits: Sequence[bool]) -> str:
    """Per-image results as ``"<n>:<hex>"``, four images per hex digit, the first image the
    highest bit (a report's ``per_image``; :func:`unpack_hits` reads it back).

    Example:
        >>> pack_hits([True, False, True, True, True])
        '5:b8'
        >>> unpack_hits('5:b8')
        [True, False, True, True, True]
    """
    text = "".join("1" if bit else "0" for bit in bits)
    text += "0" * (-len(text) % 4)
    return f"{len(bits)}:" + "".join(f"{int(text[i : i + 4], 2):x}" for i in range(0, len(text), 4))


def unpack_hits(packed: str) -> list[bool]:
    """The per-image results of :func:`pack_hits`; a malformed string raises ``ValueError``."""
    size, sep, digits = packed.partition(":")
    if not sep or not size.isdigit() or len(digits) != -(-int(size) // 4):
        raise ValueError(f"per-image results must read '<n>:<hex digits>' with n/4 digits, got {packed[:40]!r}")
    bits = "".join(f"{int(d, 16):04b}" for d in digits)
    return [b == "1" for b in bits[: int(size)]]


def _count(counts: dict[str, Any], key: str, value: float) -> None:
    counts[key] = counts.get(key, 0) + value


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
    if attack == "PGD + BPDA (tracked)":
        if not _applies(attack, model):
            raise ValueError(f"'PGD + BPDA (tracked)' continues Defense-GAN's search; {type(model.purifier).__name__} has none")
        track = TrackedProjection(model.purifier, steps=params["bpda_track_steps"],
                                  every_restart=params["bpda_track_every_restart"], generator=generator)
        return pgd(bpda(track, model.classify_purified), images, labels, **common)
    if attack == "PGD on the distances":
        return pgd(distance_logits(model, params["distance_scale"]), images, labels, **common)
    if attack == "Search over squeezed bits":
        if not _applies(attack, model):
            raise ValueError("'Search over squeezed bits' attacks 1-bit squeezing; this defense has none in front")
        return squeezed_bits_attack(squeezed_margin(model), images, labels, eps=params["eps"], generator=generator)
    return pgd(model, images, labels, eot_samples=params["eot_samples"], **common)


def squeezed_margin(model: PurifiedClassifier) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The defense's decision margin on already squeezed (binary or relaxed) images, for
    :func:`~puvae_defense.baselines.feature_squeezing.squeezed_bits_attack`: behind PuVAE the
    projection's own rule (RMSE to the true class's projection minus the nearest other's,
    deterministic projection), else the classifier's best wrong logit minus its true one.
    Positive: the defense is fooled."""
    def margin(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(model.purifier, PuVAE):
            scores = -model.purifier.project(images, 0.0, max_batch=model.max_batch, backend=model.backend).distances
        else:
            scores = model.classify_purified(model.purifier.purify(images)).float()
        true = scores.gather(1, labels[:, None]).squeeze(1)
        other = scores.scatter(1, labels[:, None], float("-inf")).amax(1)
        return other - true

    return margin


def distance_logits(model: PurifiedClassifier, scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The purifier's own decision rule as logits: ``-scale * RMSE`` to each class projection.

    An attacker who knows PuVAE can attack this rule directly: whichever class it picks,
    the target classifier then sees that class's projection. Unlike the gradient through
    the chosen candidate, this gradient does not vanish when the projections barely depend
    on the input. Only a PuVAE has such a rule; a baseline purifier is an error.
    """
    if not _applies("PGD on the distances", model):
        raise ValueError(f"'PGD on the distances' attacks PuVAE's class projection; {type(model.purifier).__name__} has none")
    return lambda images: -scale * model.purify(images).distances  # type: ignore[operator]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for ``z = 1.96``) of ``correct`` out of ``n``, in percent.

    Example:
        >>> [round(v, 1) for v in wilson_interval(100, 100)]
        [96.3, 100.0]
    """
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (100 * (centre - half), 100 * (centre + half))


def percent_interval(percent: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval (percent) of an accuracy given in percent of ``n`` images."""
    return wilson_interval(round(percent * n / 100), n)


#: Below this many images, ``results_markdown`` gives every accuracy its 95% Wilson interval.
SMALL_N = 1000


def _interval(percent: float, n: int | None) -> str:
    """`` [low-high]`` (the 95% Wilson interval) when ``n`` is below :data:`SMALL_N`, else nothing."""
    if n is None or n >= SMALL_N:
        return ""
    low, high = percent_interval(percent, n)
    return f" [{low:.1f}-{high:.1f}]"


def _cell(ours: float, paper: float | None, n: int | None = None) -> str:
    if paper is None:
        return f"{ours:.2f}{_interval(ours, n)}"
    return f"{ours:.2f}{_interval(ours, n)} ({paper:.2f}, {ours - paper:+.2f})"


def defense_columns(labels: Sequence[str]) -> list[str]:
    """Defense labels in the paper's column order (Adv. Tr., MagNet, Defense-GAN, PuVAE), others after."""
    known = [label for label in DEFENSE_NAMES if label in labels]
    return known + [label for label in labels if label not in DEFENSE_NAMES]


def results_markdown(report: Mapping[str, Any], *,
                     paper: Mapping[tuple[str, str], Mapping[str, float]] | None = None) -> str:
    """Markdown tables of a report: the gray-box table with one column per defense (its first
    row per classifier is clean accuracy), then the adaptive attacks per defense.

    Cells read ``ours (paper, ours - paper)`` where the paper has a value, ``-`` where the
    report has none (merged reports); ``paper`` defaults to the paper's table for the
    report's data set (:data:`PAPER_TABLES`). Measured on fewer than :data:`SMALL_N` images, every
    accuracy carries its 95% Wilson interval, ``ours [low-high]``.
    """
    if paper is None:
        paper = PAPER_TABLES.get(report["meta"]["settings"]["dataset"], {})
    labels = defense_columns(report["meta"]["defenses"])
    lines = [
        "| Classifier | Attack | No Attack | No Defense | " + " | ".join(DEFENSE_NAMES.get(d, d) for d in labels) + " |",
        "|---|---|---|---|" + "---|" * len(labels),
    ]
    for name, result in report["classifiers"].items():
        n = result.get("n")
        clean = _cell(result["clean_accuracy"], None, n)
        subset = result.get("subset", {})  # defense -> n, where a merged report measured it on fewer images
        mark = {d: f", n = {subset[d]:,}" if d in subset else "" for d in labels}
        size = {d: subset.get(d, n) for d in labels}
        lines.append(f"| {name} | no attack | {clean} | {clean} | "
                     + " | ".join(_cell(result["clean_through"][d], None, size[d]) + mark[d] if d in result["clean_through"]
                                  else "-" for d in labels) + " |")
        for attack, cell in result["gray_box"].items():
            ref = paper.get((name, attack), {})
            values = [_cell(result["clean_accuracy"], ref.get("no_attack"), n), _cell(cell["no_defense"], ref.get("no_defense"), n)]
            values += [_cell(cell[d], ref.get(d), size[d]) + mark[d] if d in cell else "-" for d in labels]
            lines.append(f"| {name} | {attack} | " + " | ".join(values) + " |")
    adaptive_rows = [(name, d, result["adaptive"][d], result["adaptive_n"])
                     for name, result in report["classifiers"].items() for d in labels if d in result["adaptive"]]
    if adaptive_rows:
        attacks = [a for a in ADAPTIVE_ATTACKS if any(a in row for _, _, row, _ in adaptive_rows)]
        lines += ["", "| Classifier | Defense | n | " + " | ".join(attacks) + " |", "|---|---|---|" + "---|" * len(attacks)]
        for name, label, row, n in adaptive_rows:
            values = " | ".join(_cell(row[a], None, n) if a in row else "-" for a in attacks)
            lines.append(f"| {name} | {DEFENSE_NAMES.get(label, label)} | {n} | {values} |")
    return "\n".join(lines) + "\n"
