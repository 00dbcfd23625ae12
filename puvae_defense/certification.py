"""Certifying a data set with randomized smoothing: resumable runs, reports and their table.

:func:`certify_dataset` runs Cohen et al.'s ``CERTIFY`` (:class:`~puvae_defense.smoothing.SmoothedClassifier`)
on the first images of a data set, one image at a time with the smoothing noise and the global
random generator (which a base classifier's own sampling, such as PuVAE's ``sigma_eps``, draws from)
seeded by the image's index, so a stopped run resumes from its progress file and gives the numbers
of a run that was never stopped. The report holds every image's label and radius; the certified accuracy at a
radius is the share of images certified with the right label at that radius or more.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .data import ImageDataset
from .evaluation import _device_name
from .smoothing import ABSTAIN, Certificate, SmoothedClassifier, certified_accuracy, certified_right, radius_bound

__all__ = ["CertifySettings", "PairedComparison", "REPORT_RADII", "certification_markdown", "certify_dataset",
           "compare_reports", "comparison_markdown", "sign_test", "summarize"]

#: The radii of the report's table (Cohen et al.'s MNIST figures reach 2.0 at sigma 0.5 and 1.0).
REPORT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)

#: Seconds between two writes of the progress file.
_SAVE_EVERY = 10.0


@dataclass(frozen=True)
class CertifySettings:
    """One certification run.

    Attributes:
        sigma: the smoothing noise.
        n0, n, alpha: Cohen et al.'s ``CERTIFY`` parameters (selection copies, estimation copies, failure rate).
        limit: certify the first ``limit`` images of the data set.
        seed: image ``i``'s noise comes from a generator seeded with ``seed * 1_000_003 + i``.
        batch_size: noisy copies classified at once.
    """

    sigma: float
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    limit: int = 200
    seed: int = 0
    batch_size: int = 1000

    def __post_init__(self) -> None:
        # The smoothing classes check sigma, n0, n, alpha and batch_size; limit and seed are ours.
        SmoothedClassifier(lambda x: x, self.sigma, batch_size=self.batch_size)
        radius_bound(self.sigma, self.n, self.alpha)
        for name in ("n0", "n", "limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n0 > self.n:
            raise ValueError(f"n0 ({self.n0}) must not exceed n ({self.n})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


def certify_dataset(
    smoothed: SmoothedClassifier,
    dataset: ImageDataset,
    settings: CertifySettings,
    *,
    key: Mapping[str, Any] | None = None,
    progress_file: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Certify the first ``settings.limit`` images of ``dataset``.

    Args:
        smoothed: the smoothed classifier (its ``sigma`` must be ``settings.sigma``).
        dataset: labelled images in [0, 1].
        settings: the run's parameters.
        key: what else identifies the run (model names and weight fingerprints): a progress
            file written under another key or other settings is an error, never mixed in.
        progress_file: JSON written every few seconds; the same call resumes from it.
        device: where the images go.
        show_progress: a progress bar over the images.

    Returns:
        The report: ``meta`` (settings, key, device, seconds), ``images`` (true labels,
        certified labels, radii) and ``certified_accuracy`` (radius -> %) at :data:`REPORT_RADII`.
    """
    from tqdm.auto import tqdm

    if smoothed.sigma != settings.sigma:
        raise ValueError(f"the smoothed classifier's sigma {smoothed.sigma} differs from the settings' {settings.sigma}")
    if settings.limit > len(dataset):
        raise ValueError(f"limit {settings.limit} exceeds the {len(dataset)} images of the data set")
    run_key = json.loads(json.dumps({"settings": {k: v for k, v in asdict(settings).items() if k != "limit"},
                                     "seeding": "per image, smoothing noise and the global RNG",
                                     **(dict(key) if key else {})}, sort_keys=True))
    path = Path(progress_file) if progress_file is not None else None
    labels: list[int] = []
    radii: list[float] = []
    seconds_before = 0.0
    devices: list[str] = []
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") != run_key:
            raise ValueError(f"{path} holds the progress of another certification run; use another file or delete it")
        labels, radii = saved["labels"], saved["radii"]
        seconds_before, devices = saved["seconds"], saved["devices"]
        if len(labels) > settings.limit:
            raise ValueError(f"{path} has {len(labels)} images done, more than the {settings.limit} asked for")
    device = torch.device(device)
    here = _device_name(device)
    started = last_save = time.perf_counter()

    def save() -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        record = {"key": run_key, "labels": labels, "radii": radii, "devices": devices,
                  "seconds": seconds_before + time.perf_counter() - started}
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, path)

    bar = tqdm(total=settings.limit, initial=len(labels), desc=f"certify sigma={settings.sigma}", unit="image",
               disable=not show_progress)
    for index in range(len(labels), settings.limit):
        if here not in devices:
            devices.append(here)
        seed = settings.seed * 1_000_003 + index
        generator = torch.Generator(device=device).manual_seed(seed)
        torch.manual_seed(seed)  # a base classifier's own randomness (PuVAE's sigma_eps) is seeded per image too
        image = dataset.images[index : index + 1].to(device)
        label, radius = smoothed.certify(image, n0=settings.n0, n=settings.n, alpha=settings.alpha, generator=generator)
        labels.append(int(label[0]))
        radii.append(float(radius[0]))
        bar.update()
        if time.perf_counter() - last_save > _SAVE_EVERY:
            save()
            last_save = time.perf_counter()
    bar.close()
    save()
    truth = dataset.labels[: settings.limit]
    certificate = Certificate(torch.tensor(labels, dtype=torch.long), torch.tensor(radii, dtype=torch.float64))
    return {
        "meta": {"settings": asdict(settings), "key": run_key, "devices": devices,
                 "seconds": seconds_before + time.perf_counter() - started, "torch": torch.__version__,
                 "largest_radius": radius_bound(settings.sigma, settings.n, settings.alpha)},
        "images": {"labels": truth.tolist(), "certified": labels, "radii": radii},
        "certified_accuracy": summarize(certificate, truth),
    }


def summarize(certificate: Certificate, labels: torch.Tensor, radii: Sequence[float] = REPORT_RADII) -> dict[str, float]:
    """Certified accuracy (%) at each radius (keys formatted ``"0.25"``), and the abstention rate."""
    summary = {f"{radius:g}": certified_accuracy(certificate, labels, radius) for radius in radii}
    summary["abstained"] = 100.0 * float((certificate.labels == ABSTAIN).double().mean())
    return summary


def certification_markdown(rows: Iterable[tuple[str, Mapping[str, Any]]], radii: Sequence[float] = REPORT_RADII) -> str:
    """A table of certified accuracy, one row per ``(label, report)``, one column per radius.

    A radius beyond what a report's ``n`` can certify (:func:`~puvae_defense.smoothing.radius_bound`)
    is shown as a dash: no image can reach it, whatever the classifier.
    """
    header = "| configuration | sigma | images | " + " | ".join(f"r = {r:g}" for r in radii) + " | abstained |"
    lines = [header, "|" + "---|" * (len(radii) + 4)]
    for label, report in rows:
        settings, accuracy = report["meta"]["settings"], report["certified_accuracy"]
        largest = report["meta"]["largest_radius"]
        cells = [f"{accuracy[f'{r:g}']:.1f}" if r <= largest else "-" for r in radii]
        lines.append(f"| {label} | {settings['sigma']:g} | {settings['limit']} | " + " | ".join(cells)
                     + f" | {accuracy['abstained']:.1f} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PairedComparison:
    """Two certification reports on the same images, compared at one radius.

    Attributes:
        radius: the L2 radius.
        images: how many images both reports certified (their common first images).
        first: certified accuracy (%) of the first report on those images at ``radius``.
        second: the same for the second report.
        only_first: images the first report certifies with the right class at ``radius`` and the second does not.
        only_second: images the second certifies and the first does not.
        p_value: exact two-sided sign test (McNemar's exact test) on those discordant images: the chance
            of a split at least this uneven if either report were as likely to win each of them.
    """

    radius: float
    images: int
    first: float
    second: float
    only_first: int
    only_second: int
    p_value: float


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the chance of a split of ``wins + losses`` fair coin flips at least
    as uneven as ``wins`` to ``losses`` (1.0 when there is nothing to split)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be counts, got {wins} and {losses}")
    total = wins + losses
    tail = sum(math.comb(total, k) for k in range(min(wins, losses) + 1)) / 2**total
    return min(1.0, 2.0 * tail)


def _report_images(report: Any, which: str) -> tuple[list[int], list[int], list[float], float]:
    """A report's labels, certified classes, radii and largest certifiable radius, or a clear error."""
    try:
        images = report["images"]
        labels, certified, radii = list(images["labels"]), list(images["certified"]), list(images["radii"])
        largest = float(report["meta"]["largest_radius"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"the {which} report is not a certification report (images.labels, images.certified, "
                         "images.radii and meta.largest_radius, as certify_dataset writes them)") from None
    if not len(labels) == len(certified) == len(radii):
        raise ValueError(f"the {which} report has {len(labels)} labels, {len(certified)} classes and {len(radii)} radii")
    return labels, certified, radii, largest


def compare_reports(first: Mapping[str, Any], second: Mapping[str, Any],
                    radii: Sequence[float] = REPORT_RADII) -> list[PairedComparison]:
    """Compare two certification reports image by image on the images both certified.

    Two rows of a table of certified accuracy measured on the same images are paired: most images
    are certified by both or by neither, and only the images one certifies and the other does not
    say which is better. This counts them at each radius and tests the split (:func:`sign_test`),
    a sharper comparison than two independent intervals. Radii beyond what either report's ``n``
    can certify are left out.

    Raises:
        ValueError: when either is not a certification report or has no image, or when the reports'
            first images do not carry the same labels (not the same data set).
    """
    labels, certified_first, radii_first, largest_first = _report_images(first, "first")
    other, certified_second, radii_second, largest_second = _report_images(second, "second")
    count = min(len(labels), len(other))
    if count == 0:
        raise ValueError("a report to compare has no certified image")
    if labels[:count] != other[:count]:
        raise ValueError("the two reports' first images carry different labels: not the same images")
    truth = torch.tensor(labels[:count])
    ours = Certificate(torch.tensor(certified_first[:count]), torch.tensor(radii_first[:count], dtype=torch.float64))
    theirs = Certificate(torch.tensor(certified_second[:count]), torch.tensor(radii_second[:count], dtype=torch.float64))
    comparisons = []
    for radius in (r for r in radii if r <= min(largest_first, largest_second)):
        hits_first, hits_second = certified_right(ours, truth, radius), certified_right(theirs, truth, radius)
        only_first, only_second = int((hits_first & ~hits_second).sum()), int((hits_second & ~hits_first).sum())
        comparisons.append(PairedComparison(
            radius=radius, images=count, first=certified_accuracy(ours, truth, radius),
            second=certified_accuracy(theirs, truth, radius), only_first=only_first, only_second=only_second,
            p_value=sign_test(only_first, only_second)))
    return comparisons


def comparison_markdown(comparisons: Sequence[PairedComparison], first: str = "first", second: str = "second") -> str:
    """A table of :func:`compare_reports`' result, one row per radius."""
    lines = [f"| r | images | {first} (%) | {second} (%) | difference (points) | only {first} | only {second} | p (sign test) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c.radius:g} | {c.images} | {c.first:.1f} | {c.second:.1f} | {c.first - c.second:+.1f} | "
              f"{c.only_first} | {c.only_second} | {c.p_value:.3g} |" for c in comparisons]
    return "\n".join(lines) + "\n"
