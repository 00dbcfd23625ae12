"""Does bf16 autocast change the certificates, and how much faster is it? (docs/smoothing.md, Cost)

Classifier A behind ``puvae-mnist-smooth`` at sigma 0.5, the headline row (c) of docs/smoothing.md:

1. speed: the noisy copies of one test image (``--n``, default 10,000, in batches of 1,000) through
   the smoothed classifier in float32 and under bf16 autocast, alternated ``--repeats`` times on the
   same noise; the median seconds of each;
2. agreement: the first ``--images`` test images certified under bf16 autocast with the settings and
   the per-image seeding of the committed float32 report (``--reference``), so the two runs differ in
   the arithmetic alone: how many images get the same class, the radii's differences, and the
   certified accuracy of both on those images.

    python experiments/bf16_certify.py --json docs/results/certify_bf16_mnist.json

bf16 is a different base classifier; its certificates are valid for it, so a row is made in one
precision or the other, never mixed (``puvae-defense certify --precision``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from puvae_defense import PurifiedClassifier, SmoothedClassifier
from puvae_defense._checks import cpu_has_bf16
from puvae_defense.certification import REPORT_RADII, CertifySettings, certify_dataset, summarize
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.smoothing import Certificate

REFERENCE = Path("docs/results/certify/mnist_A_smooth_sigma0.5.json")


def _seconds_per_image(smoothed: SmoothedClassifier, image: torch.Tensor, n: int) -> float:
    torch.manual_seed(0)
    started = time.perf_counter()
    smoothed.vote_counts(image, n, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="test images to certify under bf16 (default 20)")
    parser.add_argument("--n", type=int, default=10_000, help="noisy copies of the timed image (default 10,000)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per precision (default 2)")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="the float32 report to compare with")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    reference = json.loads(args.reference.read_text())
    settings = CertifySettings(**{**reference["meta"]["settings"], "limit": args.images})
    if args.images > len(reference["images"]["radii"]):
        raise SystemExit(f"--images {args.images}: the reference certified only {len(reference['images']['radii'])}")
    net = PaperClassifier.from_pretrained("mnist-classifier-a").eval()
    base = PurifiedClassifier(net, "puvae-mnist-smooth", sigma_eps=reference["meta"]["key"]["sigma_eps"]).eval()
    smoothed = {precision: SmoothedClassifier(base, settings.sigma, batch_size=settings.batch_size, precision=precision)
                for precision in ("fp32", "bf16")}
    test = load_dataset("mnist", "test")

    image = test[0][0].unsqueeze(0)
    timings: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision, classifier in smoothed.items():
            timings[precision].append(_seconds_per_image(classifier, image, args.n))
    median = {precision: statistics.median(seconds) for precision, seconds in timings.items()}

    report = certify_dataset(smoothed["bf16"], test, settings, show_progress=False)
    ours, theirs = report["images"], {key: values[: args.images] for key, values in reference["images"].items()}
    labels = torch.tensor(theirs["labels"])
    fp32 = summarize(Certificate(torch.tensor(theirs["certified"]), torch.tensor(theirs["radii"], dtype=torch.float64)),
                     labels)
    differences = [abs(a - b) for a, b in zip(ours["radii"], theirs["radii"], strict=True)]
    results = {
        "command": "python experiments/bf16_certify.py " + " ".join(
            f"--{k} {v}" for k, v in (("images", args.images), ("n", args.n), ("repeats", args.repeats))),
        "cpu_has_bf16": cpu_has_bf16(), "threads": torch.get_num_threads(), "settings": report["meta"]["settings"],
        "seconds_per_image": {"n": args.n, **{p: [round(s, 2) for s in t] for p, t in timings.items()}},
        "speedup": round(median["fp32"] / median["bf16"], 2),
        "images": args.images,
        "same_class": sum(a == b for a, b in zip(ours["certified"], theirs["certified"], strict=True)),
        "radius_difference": {"mean": round(statistics.fmean(differences), 4), "max": round(max(differences), 4)},
        "certified_accuracy": {"fp32": fp32, "bf16": report["certified_accuracy"]},
        "bf16_seconds": round(report["meta"]["seconds"], 1),
    }
    print(f"one image, n = {args.n:,}: fp32 {median['fp32']:.1f} s, bf16 {median['bf16']:.1f} s "
          f"({results['speedup']}x); first {args.images} images: the same class on {results['same_class']}, "
          f"radius difference mean {results['radius_difference']['mean']}, max {results['radius_difference']['max']}")
    for radius in REPORT_RADII:
        key = f"{radius:g}"
        if key in fp32:
            print(f"  r = {key}: fp32 {fp32[key]}%, bf16 {report['certified_accuracy'].get(key)}%")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
