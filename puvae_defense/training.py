"""``fit``: train a PuVAE on any labelled image data set (section 3.1 of the paper).

The loss is ``lambda_rc * L_RC + lambda_kl * L_KL + lambda_ce * L_CE`` (eq. 9-13) with
``sigma_eps = 1`` and a frozen source classifier, plus the optional terms of
:class:`~puvae_defense.losses.PuVAEObjective`. Training is single-process by default and
DistributedDataParallel when launched by ``torchrun``; checkpoints are safetensors files
written atomically, and a run resumes from the latest one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from ._checks import check_images, warn_if_emulated_bf16
from .checkpoints import load_checkpoint, read_metadata, resume, save_checkpoint
from .config import PuVAEConfig, TrainConfig
from .data import ImageDataset
from .losses import PuVAEObjective
from .model import PuVAE
from .serialization import WEIGHTS_NAME, sha256_of, weights_fingerprint

__all__ = ["EpochStats", "FitWarning", "TrainConfig", "evaluate_purifier", "fit", "latent_spread"]

#: Fewest training images per class below which ``fit`` warns that the data set is too small for
#: the paper-size PuVAE (tens of millions of parameters; MNIST has 5,000 per class).
MIN_IMAGES_PER_CLASS = 100
#: ``fit`` warns when the source classifier, or the purifier after training, is right on fewer than
#: this many points above chance on the validation images.
ABOVE_CHANCE = {"source": 20.0, "purifier": 10.0}


class FitWarning(UserWarning):
    """``fit`` ran but its result is doubtful: too little data, a weak source, a purifier near chance."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    """Metrics of one epoch: training loss terms (batch means) and validation results.

    Validation (on the first ``val_size`` images of ``val_dataset``): ``val_rmse`` of the
    decoding of ``mu`` with the true label, ``val_kl`` in nats per image, ``val_source_acc``
    of the source classifier on that decoding, ``val_projection_acc`` (eq. 15 picks the
    true class) and ``val_purified_acc`` (source classifier on the purified image), both
    with ``sigma_eps = 0.1``. Accuracies are percentages; NaN when there is no validation.
    """

    epoch: int
    seconds: float
    train: Mapping[str, float]
    val_rmse: float = math.nan
    val_kl: float = math.nan
    val_source_acc: float = math.nan
    val_projection_acc: float = math.nan
    val_purified_acc: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {**dataclasses.asdict(self), "train": dict(self.train)}


# ---------------------------------------------------------------------------- checks
def _labels_of(dataset: Dataset[Any]) -> torch.Tensor:
    """All labels of a data set, read from an attribute when there is one."""
    for attribute in ("labels", "targets"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            return torch.as_tensor(values)
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        return torch.as_tensor(tensors[1])
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def _check_dataset(dataset: Dataset[Any], name: str, image_shape: tuple[int, ...] | None) -> tuple[tuple[int, int, int], torch.Tensor]:
    """Check items' format and values on a sample, all labels; returns ``(image_shape, labels)``."""
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError(f"{name} is empty")
    sample_indices = sorted({int(i) for i in torch.linspace(0, size - 1, min(size, 64))})
    for index in sample_indices:
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{name}[{index}] must be an (image, label) pair, got {type(item).__name__}")
        image, label = item
        if image_shape is None:
            if not isinstance(image, torch.Tensor) or image.dim() != 3:
                raise ValueError(f"{name}[{index}] image must be a tensor (C, H, W), got {getattr(image, 'shape', type(image))}")
            image_shape = tuple(image.shape)
        check_images(image.unsqueeze(0) if isinstance(image, torch.Tensor) else image, image_shape,  # type: ignore[arg-type]
                     name=f"{name}[{index}] image")
        if isinstance(label, torch.Tensor):
            label = label.item() if label.numel() == 1 else label
        if not isinstance(label, int) or isinstance(label, bool):
            raise ValueError(f"{name}[{index}] label must be an integer class index, got {label!r}")
    labels = _labels_of(dataset)
    if labels.dtype.is_floating_point or labels.shape != (size,):
        raise ValueError(f"{name} labels must be {size} integer class indices")
    return image_shape, labels.long()  # type: ignore[return-value]


def _frozen_classifier(model: nn.Module, role: str, device: torch.device) -> nn.Module:
    """A frozen copy (eval mode, no gradient) of a classifier the trainer only reads."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{role} must be an nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).to(device).eval().requires_grad_(False)


def _check_source(
    source: nn.Module, image_shape: tuple[int, int, int], num_classes: int, device: torch.device,
    init_name: str | None = None, role: str = "the source classifier",
) -> None:
    with torch.no_grad():
        logits = source(torch.rand(2, *image_shape, device=device))
    if init_name is not None and isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] != num_classes:
        raise ValueError(f"{role} returns {logits.shape[1]} logits but the initial PuVAE {init_name!r} "
                         f"has {num_classes} classes")
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"{role} must return (B, {num_classes}) logits for images {image_shape}, got {got}"
        )


# ---------------------------------------------------------------------------- data
def _batches(
    dataset: Dataset[Any], indices: torch.Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in the order of ``indices``; in-memory data sets are sliced directly."""
    if isinstance(dataset, ImageDataset):
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield dataset.images[idx].to(device, non_blocking=True), dataset.labels[idx].to(device, non_blocking=True)
        return
    batches = [indices[i : i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=default_collate)
    for images, labels in loader:
        yield images.to(device), torch.as_tensor(labels).to(device)


def _epoch_indices(size: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    if world > 1:  # same shards as DistributedSampler: pad to a multiple of world, stride by rank
        padded = math.ceil(size / world) * world
        order = torch.cat([order, order[: padded - size]])
        order = order[rank::world]
    return order


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_purifier(
    vae: PuVAE,
    source: nn.Module,
    dataset: Dataset[Any],
    *,
    limit: int | None = None,
    batch_size: int = 250,
    sigma_eps: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Validation metrics of a PuVAE (see :class:`EpochStats` for their meaning)."""
    device = torch.device(device) if device is not None else vae.encoder_in.weight.device
    was_training = vae.training
    vae.eval()
    size = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    sums = {"rmse": 0.0, "kl": 0.0, "source": 0, "projection": 0, "purified": 0}
    for images, labels in _batches(dataset, torch.arange(size), batch_size, device):
        mu, sigma = vae.encode(images, labels)
        recon = vae.decode(mu, labels)
        sums["rmse"] += float((recon - images).flatten(1).square().mean(1).sqrt().sum())
        sums["kl"] += float((0.5 * (mu.square() + sigma.square() - 2 * sigma.log() - 1)).sum())
        sums["source"] += int((source(recon).argmax(1) == labels).sum())
        projection = vae.project(images, sigma_eps, generator)
        sums["projection"] += int((projection.labels == labels).sum())
        sums["purified"] += int((source(projection.purified).argmax(1) == labels).sum())
    vae.train(was_training)
    return {
        "val_rmse": sums["rmse"] / size,
        "val_kl": sums["kl"] / size,
        "val_source_acc": 100.0 * sums["source"] / size,
        "val_projection_acc": 100.0 * sums["projection"] / size,
        "val_purified_acc": 100.0 * sums["purified"] / size,
    }


@torch.no_grad()
def latent_spread(vae: PuVAE, data: ImageDataset, limit: int = 1000) -> dict[str, float]:
    """How much of the within-class variation of the inputs survives encode/decode(mu).

    Mean per-pixel standard deviation within each class, averaged over classes, for the
    inputs and for their reconstructions. A reconstruction spread near 0 means the latent
    code was ignored (posterior collapse): every projection onto class c is the same image.
    """
    images, labels = data.images[:limit], data.labels[:limit]
    device = vae.encoder_in.weight.device
    mu, _ = vae.encode(images.to(device), labels.to(device))
    recon = vae.decode(mu, labels.to(device)).float().cpu()

    def spread(x: torch.Tensor) -> float:
        return float(torch.stack([x[labels == c].std(0).mean() for c in labels.unique()]).mean())

    return {"input": spread(images), "reconstruction": spread(recon)}


# ---------------------------------------------------------------------------- checkpoints
def _save_checkpoint(
    directory: Path,
    vae: PuVAE,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    step: int,
    recipe: TrainConfig,
    history: list[EpochStats],
    origin: dict[str, str] | None = None,
    attack_models: list[str] | None = None,
) -> Path:
    """Model, optimizer, RNG state and progress after ``epoch`` (see :mod:`.checkpoints`)."""
    return save_checkpoint(directory, epoch, {"model": vae}, {"optimizer": optimizer}, {
        "attack_models": json.dumps(attack_models or []),
        "epoch": str(epoch),
        "step": str(step),
        "recipe": json.dumps(dataclasses.asdict(recipe)),
        "puvae_config": json.dumps(vae.config.to_dict()),
        "history": json.dumps([h.to_dict() for h in history]),
        "init": json.dumps(origin),
    })


def _load_checkpoint(
    path: Path, vae: PuVAE, optimizer: torch.optim.Optimizer, recipe: TrainConfig, origin: dict[str, str] | None = None,
    attack_models: list[str] | None = None,
) -> tuple[int, int, list[EpochStats]]:
    metadata = read_metadata(path)
    saved = json.loads(metadata["recipe"])
    current = dataclasses.asdict(recipe)
    differ = sorted(k for k in current if k != "epochs" and saved.get(k) != current[k])
    if differ or json.loads(metadata["puvae_config"]) != vae.config.to_dict():
        raise ValueError(
            f"{path.parent} holds a run with other settings ({differ or 'PuVAE config'}); resume with the same "
            "settings or use another checkpoint_dir"
        )
    saved_origin = json.loads(metadata.get("init", "null"))
    if saved_origin != origin:
        raise ValueError(
            f"{path.parent} holds a run that started from {saved_origin or 'random weights'}, not from "
            f"{origin or 'random weights'}; resume with the same init or use another checkpoint_dir"
        )
    saved_attackers = json.loads(metadata["attack_models"]) if "attack_models" in metadata else None
    if saved_attackers is not None and saved_attackers != (attack_models or []):  # older checkpoints: unrecorded
        raise ValueError(
            f"{path.parent} holds a run trained with other attack_models (weight fingerprints {saved_attackers}, now "
            f"{attack_models or []}); resume with the same attack_models or use another checkpoint_dir"
        )
    load_checkpoint(path, {"model": vae}, {"optimizer": optimizer})
    history = [EpochStats(**h) for h in json.loads(metadata["history"])]
    return int(metadata["epoch"]), int(metadata["step"]), history


# ---------------------------------------------------------------------------- distributed
def _distributed_setup(device: torch.device | str | None) -> tuple[int, int, torch.device, bool]:
    """``(rank, world, device, initialised_here)``; DDP when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        resolved = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, resolved, False
    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
    rank = dist.get_rank()
    if device is not None:
        resolved = torch.device(device)
    elif torch.cuda.is_available():
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        resolved = torch.device("cpu")
    return rank, dist.get_world_size(), resolved, initialised_here


def _lr_factor(recipe: TrainConfig, step: int, total_steps: int) -> float:
    if recipe.lr_schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _kl_weight(recipe: TrainConfig, progress_epochs: float) -> float:
    if recipe.kl_warmup_epochs <= 0:
        return recipe.lambda_kl
    return recipe.lambda_kl * min(1.0, progress_epochs / recipe.kl_warmup_epochs)


# ---------------------------------------------------------------------------- fit
def fit(
    dataset: Dataset[Any],
    source_clf: nn.Module,
    *,
    config: PuVAEConfig | None = None,
    recipe: TrainConfig | str | None = None,
    init: PuVAE | str | os.PathLike[str] | None = None,
    attack_models: Sequence[nn.Module] = (),
    val_dataset: Dataset[Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    strict: bool = False,
    **options: Any,
) -> PuVAE:
    """Train a PuVAE on a labelled image data set.

    Args:
        dataset: map-style data set of ``(image (C, H, W) floats in [0, 1], int label)``.
        source_clf: the source classifier ``M_s`` (returns ``(B, num_classes)`` logits).
            It is copied and frozen (eval mode, no gradient); the caller's module is untouched.
        config: PuVAE layer sizes; default the paper's sizes for the data set's image
            shape and class count (``classes`` attribute, else the source's output width).
        recipe: a :class:`TrainConfig` or the name of one in :data:`puvae_defense.recipes.RECIPES`:
            ``"robust"`` (the default, ours, chosen on validation) or ``"paper"`` (the paper's
            settings, read literally); with ``init``, ``"finetune"`` is the default.
        init: start from a trained PuVAE instead of random weights: a :class:`PuVAE` (copied;
            the caller's module is never modified), a weights folder, a registered name such
            as ``"puvae-mnist"`` or a Hub repo id. The data set's image shape and classes must
            match it. ``training_init`` of the result records where it came from.
        attack_models: more classifiers whose targeted FGSM / PGD images the encoder sees
            (``noise_kind`` ``"fgsm"`` or ``"pgd"``): the attacked share of every batch is split
            evenly between the source and these, each image attacked on its own model (ensemble
            adversarial training). They are copied and frozen and take no part in any loss term.
            Never pass the classifiers you will report or select with.
        val_dataset: evaluated after every epoch (first ``val_size`` images).
        checkpoint_dir: write a checkpoint after every epoch and resume from the latest.
        device: default CUDA when available (under torchrun: ``cuda:LOCAL_RANK``).
        progress: show a tqdm bar with the loss terms (rank 0 only).
        strict: raise instead of warning (:class:`FitWarning`) when the run cannot be trusted: fewer
            than ``MIN_IMAGES_PER_CLASS`` images per class from scratch, a source classifier or (after training)
            a purifier whose validation accuracy is near chance.
        **options: any :class:`TrainConfig` field, overriding ``recipe``: ``epochs``,
            ``batch_size``, ``lr``, ``lambda_rc``, ``lambda_kl``, ``lambda_ce``, ``seed``, ...

    Returns:
        The trained PuVAE in eval mode, with ``training_history`` (a tuple of
        :class:`EpochStats`) and ``training_init`` (``None``, or a dict naming the initial
        model and its sha256) attached.

    Raises:
        ValueError / TypeError: bad data, labels, shapes or options, before training starts.
    """
    from tqdm.auto import tqdm

    from .recipes import DEFAULT_RECIPE, FINETUNE_RECIPE, get_recipe

    if recipe is None or isinstance(recipe, str):
        recipe = get_recipe(recipe if recipe is not None else FINETUNE_RECIPE if init is not None else DEFAULT_RECIPE)
    elif not isinstance(recipe, TrainConfig):
        raise TypeError(f"recipe must be a TrainConfig or a recipe name, got {type(recipe).__name__}")
    recipe = recipe.replace(**options)
    rank, world, device, initialised_here = _distributed_setup(device)
    if recipe.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device, got {device}; use amp='bf16' on a CPU")
    if recipe.amp == "bf16":
        warn_if_emulated_bf16(device, "fit(amp='bf16')")
    initial, origin = _initial_model(init) if init is not None else (None, None)
    if initial is not None:
        if config is not None and config != initial.config:
            raise ValueError(f"config= differs from the layer sizes of the initial PuVAE {origin['name']!r}; "
                             "leave config out when fine-tuning")
        config = initial.config
    # With an initial model its own check names the mismatch, so the generic shape check is skipped.
    image_shape, labels = _check_dataset(dataset, "dataset", config.image_shape if config and initial is None else None)
    if initial is not None:
        _check_matches_init(dataset, image_shape, labels, config, origin["name"])
    num_classes = config.num_classes if config else _infer_classes(dataset, source_clf, image_shape, device)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        if config is None and not getattr(dataset, "classes", None):  # the class count came from the source's logits
            raise ValueError(f"the source classifier returns {num_classes} logits but the dataset labels range from "
                             f"{int(labels.min())} to {int(labels.max())}: give a source classifier with one logit per "
                             "class (or config=PuVAEConfig(num_classes=...))")
        raise ValueError(
            f"dataset labels range from {int(labels.min())} to {int(labels.max())}, outside [0, {num_classes - 1}]"
        )
    if val_dataset is not None:
        _check_dataset(val_dataset, "val_dataset", image_shape)
    config = config or PuVAEConfig.for_images(image_shape, num_classes)
    source = _frozen_classifier(source_clf, "source_clf", device)
    _check_source(source, image_shape, num_classes, device, init_name=origin["name"] if origin else None)
    _check_inputs_can_train(len(dataset), num_classes, source, val_dataset, recipe.val_size, device, strict,
                            from_scratch=initial is None)
    attackers = [_frozen_classifier(model, f"attack_models[{i}]", device) for i, model in enumerate(attack_models)]
    for index, attacker in enumerate(attackers):
        _check_source(attacker, image_shape, num_classes, device, role=f"attack_models[{index}]")
    attacker_digests = [weights_fingerprint(attacker) for attacker in attackers]

    torch.manual_seed(recipe.seed)
    vae = (initial if initial is not None else PuVAE(config)).to(device).train()
    vae.trunk.requires_grad_(not recipe.freeze_trunk)
    optimizer = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=recipe.lr)
    objective: nn.Module = PuVAEObjective(
        vae, source, rc_reduction=recipe.rc_reduction, kl_reduction=recipe.kl_reduction, ce_form=recipe.ce_form, proj_scale=recipe.proj_scale,
        proj_sigma_eps=recipe.proj_sigma_eps, input_noise=recipe.input_noise, noise_kind=recipe.noise_kind,
        noise_fraction=recipe.noise_fraction, noise_steps=recipe.noise_steps, noise_amplitude=recipe.noise_amplitude,
        need_wrong=recipe.lambda_wrong_ce > 0, need_proj=recipe.lambda_proj > 0, attack_models=attackers,
    )
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(recipe.seed * 7919 + rank)  # per-rank sampling noise

    start_epoch, step, history = 0, 0, []
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        resumed = resume(directory, lambda path: _load_checkpoint(path, vae, optimizer, recipe, origin, attacker_digests))
        if resumed is not None:
            start_epoch, step, history = resumed
            logger.info("resuming from %s (epoch %d)", directory, start_epoch)

    size = len(dataset)  # type: ignore[arg-type]
    steps_per_epoch = math.ceil(math.ceil(size / world) / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    weights = {"rc": recipe.lambda_rc, "ce": recipe.lambda_ce, "wrong_ce": recipe.lambda_wrong_ce, "proj": recipe.lambda_proj}
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if recipe.amp == "bf16" else torch.float16)
        if recipe.amp != "off" else nullcontext()
    )
    scaler = torch.amp.GradScaler("cuda") if recipe.amp == "fp16" else None
    try:
        for epoch in range(start_epoch, recipe.epochs):
            started = time.perf_counter()
            sums: dict[str, float] = {}
            indices = _epoch_indices(size, recipe.seed, epoch, rank, world)
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress or rank != 0, leave=False)
            for batch_index, (images, targets) in enumerate(_batches(dataset, indices, recipe.batch_size, device)):
                check_images(images, image_shape, name="training batch")
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * _lr_factor(recipe, step, total_steps)
                with autocast:
                    terms = objective(images, targets)
                terms = {key: value.float() for key, value in terms.items()}
                kl_weight = _kl_weight(recipe, epoch + batch_index / steps_per_epoch)
                total = kl_weight * terms["kl"] + sum(weights[k] * v for k, v in terms.items() if k != "kl")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(total).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    total.backward()
                    optimizer.step()
                step += 1
                values = {key: value.item() for key, value in {"total": total, **terms}.items()}
                if not math.isfinite(values["total"]):
                    raise FloatingPointError(f"training diverged at epoch {epoch + 1}, step {step}: loss {values['total']}")
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.update()
                bar.set_postfix({k: f"{v / (batch_index + 1):.4g}" for k, v in sums.items()})
            bar.close()
            stats = EpochStats(epoch + 1, time.perf_counter() - started, {k: v / steps_per_epoch for k, v in sums.items()})
            if rank == 0 and val_dataset is not None and recipe.val_size > 0:
                metrics = evaluate_purifier(vae, source, val_dataset, limit=recipe.val_size, seed=recipe.seed)
                stats = dataclasses.replace(stats, **metrics)
            history.append(stats)
            if rank == 0:
                logger.info("epoch %d: %s", epoch + 1, json.dumps(stats.to_dict()))
                if directory is not None:
                    _save_checkpoint(directory, vae, optimizer, epoch=epoch + 1, step=step, recipe=recipe,
                                     history=history, origin=origin, attack_models=attacker_digests)
            if world > 1:
                dist.barrier()
    finally:
        if initialised_here:
            dist.destroy_process_group()
    if history and not math.isnan(history[-1].val_purified_acc):
        _check_outcome(history[-1], num_classes, strict)
    vae.eval().requires_grad_(True)
    vae.training_history = tuple(history)
    vae.training_init = origin
    vae.training_recipe = recipe
    return vae


def _doubt(message: str, strict: bool) -> None:
    if strict:
        raise ValueError(message + " (strict=True)")
    warnings.warn(message, FitWarning, stacklevel=3)


@torch.no_grad()
def _check_inputs_can_train(size: int, num_classes: int, source: nn.Module, val_dataset: Dataset[Any] | None,
                            val_size: int, device: torch.device, strict: bool, *, from_scratch: bool) -> None:
    """Before training: enough images per class (from scratch; fine-tuning needs fewer), and a source
    classifier that reads the validation images."""
    if from_scratch and size < MIN_IMAGES_PER_CLASS * num_classes:
        _doubt(f"the data set has {size} images for {num_classes} classes, fewer than {MIN_IMAGES_PER_CLASS} per class: "
               "the paper-size PuVAE may not learn them (docs/training.md, 'Train a PuVAE on your own data'); fine-tune a trained PuVAE "
               "(init=...) or a smaller PuVAEConfig", strict)
    if val_dataset is None or val_size == 0:
        return
    correct = total = 0
    for images, labels in _batches(val_dataset, torch.arange(min(val_size, len(val_dataset))), 250, device):  # type: ignore[arg-type]
        correct += int((source(images).argmax(1) == labels).sum())
        total += len(labels)
    accuracy, chance = 100.0 * correct / total, 100.0 / num_classes
    if accuracy < chance + ABOVE_CHANCE["source"]:
        _doubt(f"the source classifier is right on {accuracy:.1f}% of the validation images (chance {chance:.1f}%): "
               "a PuVAE trained against it learns little about the classes; train the source classifier first", strict)


def _check_outcome(last: EpochStats, num_classes: int, strict: bool) -> None:
    """After training: the purifier must do better than chance on the validation images."""
    chance = 100.0 / num_classes
    if last.val_purified_acc < chance + ABOVE_CHANCE["purifier"]:
        _doubt(f"after training, the source classifier is right on {last.val_purified_acc:.1f}% of the purified "
               f"validation images (chance {chance:.1f}%): the PuVAE did not learn these images; train longer, give "
               "more images, fine-tune a trained PuVAE (init=...) or use a PuVAEConfig for the image size", strict)


def _initial_model(init: PuVAE | str | os.PathLike[str]) -> tuple[PuVAE, dict[str, str]]:
    """A private copy of the model to fine-tune and a record of where it came from."""
    if isinstance(init, PuVAE):
        return copy.deepcopy(init).float(), {"name": "PuVAE module", "fingerprint": weights_fingerprint(init)}
    if not isinstance(init, (str, os.PathLike)):
        raise TypeError(f"init must be a PuVAE, a weights folder, a registered name or a Hub repo id, got {type(init).__name__}")
    from .hub import resolve_folder

    folder = resolve_folder(init, model_type="puvae")
    return PuVAE.from_pretrained(folder), {"name": str(init), "sha256": sha256_of(folder / WEIGHTS_NAME)}


def _check_matches_init(
    dataset: Dataset[Any], image_shape: tuple[int, int, int], labels: torch.Tensor, config: PuVAEConfig, name: str
) -> None:
    """The data set (its checked image shape and labels) must fit the initial PuVAE; say what differs."""
    if image_shape != config.image_shape:
        raise ValueError(f"dataset images are {image_shape} but the initial PuVAE {name!r} takes {config.image_shape}; "
                         "resize the images (or train from scratch without init)")
    classes = getattr(dataset, "classes", None)
    if classes and len(classes) != config.num_classes:
        raise ValueError(f"dataset has {len(classes)} classes but the initial PuVAE {name!r} has {config.num_classes}")
    if int(labels.max()) >= config.num_classes or int(labels.min()) < 0:
        raise ValueError(f"dataset labels range from {int(labels.min())} to {int(labels.max())} but the initial PuVAE "
                         f"{name!r} has {config.num_classes} classes")


def _infer_classes(dataset: Dataset[Any], source: nn.Module, image_shape: tuple[int, int, int], device: torch.device) -> int:
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    with torch.no_grad():
        logits = copy.deepcopy(source).to(device).eval()(torch.rand(1, *image_shape, device=device))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("cannot infer the number of classes: give config=PuVAEConfig(num_classes=...)")
    return int(logits.shape[1])
