"""What a PuVAE training epoch costs, with and without bfloat16 autocast.

Trains the paper-size PuVAE for one epoch on the first ``--images`` training images of
``--dataset`` with a named recipe, once per precision (``--amp``), interleaved over
``--repeats`` rounds after a short warm-up epoch of each, against an untrained source
classifier (the time of a step does not depend on the weights). Reports the median seconds
per batch of each precision and what that makes of an epoch on 50,000 images, so a long run
can be sized before it starts (a run cut by a session's end is lost when its checkpoints
are).

    python benchmarks/training.py [--dataset fashion-mnist] [--recipe robust] [--images 2560]
        [--repeats 2] [--amp off bf16] [--out docs/results/benchmark_training_cpu.json]

On a CPU bfloat16 autocast pays only where the CPU has bf16 units (``cpu_flags`` in the
results). The numbers are for planning; the loss curves of the two precisions are not compared
here (docs/training.md says which precision each shipped model was trained in).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from puvae_defense.classifiers import ClassifierConfig, PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.recipes import RECIPES, get_recipe
from puvae_defense.training import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy import cpu_flags  # noqa: E402

#: Images of a full training epoch in our splits (the first 50,000 training images).
EPOCH_IMAGES = 50_000


def epoch_seconds(train: torch.utils.data.Dataset, source: torch.nn.Module, recipe: str, amp: str,
                  device: torch.device) -> float:
    """Wall seconds of the training loop of one epoch over ``train`` (validation off)."""
    vae = fit(train, source, recipe=get_recipe(recipe).replace(epochs=1, amp=amp), device=device,
              progress=False)
    return vae.training_history[0].seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--recipe", default="robust", choices=sorted(RECIPES))
    parser.add_argument("--images", type=int, default=2560, help="training images per timed epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=["off", "bf16", "fp16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/benchmark_training_DEVICE.json")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be positive")
    device = torch.device(args.device)
    train = load_dataset(args.dataset, "train").subset(0, args.images)
    source = PaperClassifier(ClassifierConfig("source")).to(device).eval()
    batch_size = get_recipe(args.recipe).batch_size
    batches = -(-args.images // batch_size)
    # The first epoch of a precision in a process also pays for building its kernels: one warm-up
    # epoch of two batches per precision, reported apart.
    warmup = {amp: epoch_seconds(train.subset(0, min(args.images, 2 * batch_size)), source, args.recipe, amp, device)
              for amp in args.amp}
    seconds: dict[str, list[float]] = {amp: [] for amp in args.amp}
    for _ in range(args.repeats):
        for amp in args.amp:
            seconds[amp].append(epoch_seconds(train, source, args.recipe, amp, device))
            print(f"amp={amp}: {seconds[amp][-1]:.1f} s for {args.images} images", flush=True)
    per_batch = {amp: statistics.median(values) / batches for amp, values in seconds.items()}
    result = {
        "command": "python benchmarks/training.py " + " ".join(sys.argv[1:]),
        "dataset": args.dataset, "recipe": args.recipe, "images": args.images, "batch_size": batch_size,
        "repeats": args.repeats, "warmup_seconds_two_batches": warmup, "seconds": seconds,
        "median_seconds_per_batch": per_batch,
        "projected_seconds_per_50k_epoch": {amp: s * EPOCH_IMAGES / batch_size for amp, s in per_batch.items()},
        "environment": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                        "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu_flags": cpu_flags()},
    }
    out = args.out or Path("docs/results") / f"benchmark_training_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["projected_seconds_per_50k_epoch"], indent=1))


if __name__ == "__main__":
    main()
