"""Tables 5 and 6 and Figure 5 of the paper: what each purifier costs, and what it buys within a time budget.

- **Table 5**: median seconds to purify 128 MNIST test images, PuVAE against Defense-GAN
  (L = 200, R = 20) and MagNet, in one process on the same images (the paper-size
  networks; timing does not depend on the weights, so untrained baselines are timed when no
  trained ones are given).
- **Table 6 / Figure 5** (``--images N``): accuracy of classifier A behind each purifier on
  the first N test images, clean and under the paper's gray-box attacks, at every operating
  point: PuVAE and MagNet have one each, Defense-GAN one per (L, R) of ``--grid``, each timed
  on the same 128 images. The paper's budget is 1 s on a TITAN V, 8.8x PuVAE's own 0.114 s
  there; Table 6 takes the same multiple of PuVAE's time here and gives Defense-GAN the
  largest grid setting that fits it. ``--figure`` plots accuracy against time (needs the
  ``eval`` extra). Accuracy needs trained baselines (``--magnet``, ``--defense-gan``).

    python benchmarks/defenses.py [--repeats 3] [--magnet magnet-mnist] [--defense-gan defense-gan-mnist]
        [--images 100 --accuracy-grid 10x1,25x2,50x5,100x10 --cache runs/adv_cache --figure docs/time_budget.png]
        [--device cuda --gan-repeats 5] [--out docs/results/benchmark_defenses_DEVICE.json]

Defense-GAN at L = 200, R = 20 takes seconds per image on a CPU: on a CPU keep ``--images``
small, leave L = 200, R = 20 out of ``--accuracy-grid`` (it is still timed for Table 5) and say so;
the full grid on 500+ images is a GPU job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from puvae_defense import PuVAE, PurifiedClassifier
from puvae_defense.baselines import DefenseGAN, DefenseGANConfig, MagNetReformer, load_purifier, parse_search
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.evaluation import AttackCache, EvalSettings, evaluate
from puvae_defense.kernels import KERNEL_ENV
from puvae_defense.serialization import weights_fingerprint
from projection import median_ms  # benchmarks/projection.py, beside this script

#: The paper's budget over PuVAE's time (1 s / 0.114 s on a TITAN V).
BUDGET_MULTIPLE = 1.0 / 0.114
#: Defense-GAN (L, R) operating points, cheapest first; the last is the paper's setting.
GRID = ((10, 1), (25, 2), (50, 5), (100, 10), (200, 20))


def seconds(fn, device: torch.device, repeats: int, *, warmup: bool = True) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (``projection.median_ms``: GPU work waited
    for), after one warm-up call unless ``warmup=False``."""
    if warmup:
        fn()
    return statistics.median(median_ms(fn, device, repeats)) / 1e3


def parse_grid(text: str) -> list[tuple[int, int]]:
    """``"10x1,25x2"`` -> ``[(10, 1), (25, 2)]``; anything else is an error naming the item."""
    try:
        return [parse_search(item) for item in text.split(",")]
    except ValueError as error:
        raise SystemExit(str(error)) from None


def label(steps: int, restarts: int) -> str:
    return f"defense-gan L{steps} R{restarts}"


def figure(points: list[dict], budget: float, batch: int, path: Path) -> None:
    """Accuracy against seconds per ``batch`` images, one panel per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(points[0]["accuracy"])
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.2), sharey=True)
    for ax, attack in zip([axes] if len(attacks) == 1 else axes, attacks, strict=True):
        gan = [p for p in points if p["defense"] == "defense-gan"]
        ax.plot([p["seconds"] for p in gan], [p["accuracy"][attack] for p in gan], "o-", label="Defense-GAN (L x R grid)")
        for p in points:
            if p["defense"] != "defense-gan":
                ax.plot(p["seconds"], p["accuracy"][attack], "s", label={"puvae": "PuVAE", "magnet": "MagNet"}[p["defense"]])
        ax.axvline(budget, color="grey", linestyle="--", label="budget (8.8x PuVAE)")
        ax.set_xscale("log")
        ax.set_title(attack)
        ax.set_xlabel(f"seconds per {batch} images")
    (axes if len(attacks) == 1 else axes[0]).set_ylabel("accuracy of A (%)")
    (axes if len(attacks) == 1 else axes[-1]).legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--puvae", default="puvae-mnist", help="folder or name; 'untrained' times random weights")
    parser.add_argument("--magnet", default=None, help="trained MagNet folder or name (default: untrained)")
    parser.add_argument("--defense-gan", default=None, help="trained Defense-GAN folder or name (default: untrained)")
    parser.add_argument("--gan-images", type=int, default=None,
                        help="time Defense-GAN on the first K of the --batch images and scale to --batch (default: all; "
                             "the full grid on 128 images did not finish in 30 minutes on the 2-core development CPU)")
    parser.add_argument("--gan-repeats", type=int, default=1,
                        help="timed runs of each Defense-GAN setting, median taken (default 1: L = 200, R = 20 takes "
                             "minutes on a CPU; on a GPU use more)")
    parser.add_argument("--grid", default=",".join(f"{s}x{r}" for s, r in GRID),
                        help="Defense-GAN operating points LxR, comma-separated (default: %(default)s)")
    parser.add_argument("--accuracy-grid", default=None,
                        help="the --grid points whose accuracy --images measures (default: all; on a CPU leave out "
                             "200x20, seconds per image per attack)")
    parser.add_argument("--images", type=int, default=0,
                        help="test images for Table 6 / Figure 5 (0: timing only; multiples of 500 reuse --cache)")
    parser.add_argument("--classifier", default="mnist-classifier-a")
    parser.add_argument("--cache", default=None, help="gray-box examples of `puvae-defense evaluate --cache`")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/benchmark_defenses_DEVICE.json")
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    accuracy_grid = grid if args.accuracy_grid is None else parse_grid(args.accuracy_grid)
    if not set(accuracy_grid) <= set(grid):
        raise SystemExit(f"--accuracy-grid {args.accuracy_grid} is not part of --grid {args.grid}")
    if args.images and not (args.magnet and args.defense_gan) or args.images and args.puvae == "untrained":
        raise SystemExit("--images measures accuracy: give trained --puvae, --magnet and --defense-gan")
    torch.manual_seed(0)
    test = load_dataset("mnist", "test")
    device = torch.device(args.device)
    args.out = args.out or Path(f"docs/results/benchmark_defenses_{device.type}.json")
    images = test.images[:args.batch].to(device)
    puvae = PuVAE().eval().to(device) if args.puvae == "untrained" else PuVAE.from_pretrained(args.puvae, device=device)
    magnet = load_purifier(args.magnet, device=device) if args.magnet else MagNetReformer().eval().to(device)
    gan = (load_purifier(args.defense_gan, device=device) if args.defense_gan
           else DefenseGAN(DefenseGANConfig()).eval().to(device))
    with torch.no_grad():
        times = {"puvae": seconds(lambda: puvae.project(images, 0.1), device, args.repeats),
                 "magnet": seconds(lambda: magnet.purify(images), device, args.repeats)}
        searches = {(s, r): gan.with_search(steps=s, restarts=r) for s, r in grid}
        # One warm-up for the whole grid (on its cheapest point): a second run of L = 200, R = 20 costs minutes on a CPU.
        gan_images = images[:args.gan_images or args.batch]
        scale = args.batch / gan_images.shape[0]  # the search is batched over images: its time grows linearly with them
        first = min(searches, key=lambda lr: lr[0] * lr[1])
        searches[first].purify(gan_images)
        grid_times = {(s, r): scale * seconds(lambda g=g: g.purify(gan_images), device, args.gan_repeats, warmup=False)
                      for (s, r), g in searches.items()}
    budget = BUDGET_MULTIPLE * times["puvae"]
    within = [(s, r) for (s, r), t in grid_times.items() if t <= budget]
    chosen = max(within, key=lambda lr: lr[0] * lr[1]) if within else None
    report = {
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": args.batch,
        "defense_gan_repeats": args.gan_repeats,
        **({"tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
            "selection_backend": os.environ.get(KERNEL_ENV, "auto")} if device.type == "cuda" else {}),
        "table5_seconds": {**times, "defense_gan_L200_R20": grid_times.get((200, 20))},
        "paper_table5": {"puvae": 0.11, "defense_gan": 14.80, "ratio": 134.55, "hardware": "TITAN V"},
        "defense_gan_grid_seconds": {f"{s}x{r}": t for (s, r), t in grid_times.items()},
        "defense_gan_timed_images": int(gan_images.shape[0]),
        "table6_budget_seconds": budget,
        "table6_defense_gan": None if chosen is None else {"steps": chosen[0], "restarts": chosen[1],
                                                           "seconds": grid_times[chosen]},
        "weights": {"puvae": args.puvae, "magnet": args.magnet or "untrained (timing only)",
                    "defense_gan": args.defense_gan or "untrained (timing only)"},
        "weights_fingerprint": {"puvae": weights_fingerprint(puvae), "magnet": weights_fingerprint(magnet),
                                "defense_gan": weights_fingerprint(gan)},
    }
    if (200, 20) in grid_times:
        report["ratio_defense_gan_over_puvae"] = grid_times[(200, 20)] / times["puvae"]
    if args.images:
        net = PaperClassifier.from_pretrained(args.classifier, device=device).eval()
        purifiers = {"puvae": puvae, "magnet": magnet, **{label(s, r): searches[s, r] for s, r in accuracy_grid}}
        defenses = {name: {"A": PurifiedClassifier(net, p)} for name, p in purifiers.items()}
        settings = EvalSettings(adaptive=(), limit=args.images, batch_size=500)  # the batches of Table 2's cache
        result = evaluate({"A": net}, defenses, test, settings, cache=AttackCache(args.cache) if args.cache else None,
                          progress=False)["classifiers"]["A"]
        seconds_of = {"puvae": times["puvae"], "magnet": times["magnet"],
                      **{label(s, r): t for (s, r), t in grid_times.items()}}
        points = [{"defense": name.split(" ")[0], "setting": name, "seconds": seconds_of[name],
                   "accuracy": {"clean": result["clean_through"][name],
                                **{a: cell[name] for a, cell in result["gray_box"].items()}}}
                  for name in purifiers]
        report["table6"] = {"classifier": args.classifier, "images": args.images, "points": points}
        if args.figure:
            figure(points, budget, args.batch, args.figure)
            report["figure"] = str(args.figure)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
