"""What randomized smoothing costs over the classifier it smooths (docs/smoothing.md).

For a few MNIST test images, times ``SmoothedClassifier.predict`` with ``n`` noisy copies each
against classifying the same number of noisy copies with the plain ``PurifiedClassifier``
(classifier A behind the bundled denoiser), median of interleaved repeats, and the same for
classifier A smoothed alone. The ratio is the overhead of drawing, clipping and counting.

    python benchmarks/smoothing.py [--purifier puvae-mnist-smooth] [--images 10] [--n 100] [--repeats 5]
        [--out docs/results/benchmark_smoothing_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from deploy import timed  # the deployment benchmark's interleaved timing (this folder is on sys.path)

from puvae_defense import PurifiedClassifier, SmoothedClassifier
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--purifier", default="puvae-mnist-smooth")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    net = PaperClassifier.from_pretrained("mnist-classifier-a")
    images = load_dataset("mnist", "test").images[: args.images]
    copies = images.repeat_interleave(args.n, 0)
    rows = {}
    for label, base in (("behind the denoiser", PurifiedClassifier(net, args.purifier).eval()), ("alone", net)):
        smoothed = SmoothedClassifier(base, args.sigma, batch_size=args.images * args.n)

        def plain(base=base) -> torch.Tensor:
            with torch.no_grad():
                noisy = (copies + args.sigma * torch.randn_like(copies)).clamp(0, 1)
                return base(noisy).argmax(1)

        def predict(smoothed=smoothed) -> torch.Tensor:
            return smoothed.predict(images, n=args.n)

        ms = timed({"classify the noisy copies": plain, "predict": predict}, args.repeats)
        rows[label] = {**ms, "ratio": ms["predict"] / ms["classify the noisy copies"],
                       "copies per second (predict)": 1e3 * args.images * args.n / ms["predict"]}
        print(label, json.dumps(rows[label]))
    record = {"command": "python benchmarks/smoothing.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
              "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "torch": torch.__version__, "images": args.images, "n": args.n, "sigma": args.sigma,
              "purifier": args.purifier, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
