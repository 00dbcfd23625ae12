"""Table 5 of the paper: seconds to purify 128 MNIST images, PuVAE against Defense-GAN and MagNet.

All three purifiers run in one process on the same 128 test images (the paper-size networks;
timing does not depend on the weights, so untrained baselines are timed when no trained
ones are given). Also the time budget of Table 6: 8.8x PuVAE's time (the paper's 1 s on a
TITAN V against PuVAE's 0.114 s), and the largest Defense-GAN L x R that fits it.

    python benchmarks/defenses.py [--repeats 3] [--steps 200] [--restarts 20] [--out docs/results/benchmark_defenses_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from puvae_defense import PuVAE
from puvae_defense.baselines import DefenseGAN, DefenseGANConfig, MagNetReformer, load_purifier
from puvae_defense.data import load_dataset

#: The paper's budget over PuVAE's time (1 s / 0.114 s on a TITAN V).
BUDGET_MULTIPLE = 1.0 / 0.114


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="Defense-GAN's L")
    parser.add_argument("--restarts", type=int, default=20, help="Defense-GAN's R")
    parser.add_argument("--magnet", default=None, help="trained MagNet folder or name (default: untrained)")
    parser.add_argument("--defense-gan", default=None, help="trained Defense-GAN folder or name (default: untrained)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/benchmark_defenses_cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    images = load_dataset("mnist", "test").images[:args.batch]
    puvae = PuVAE.from_pretrained("puvae-mnist")
    magnet = load_purifier(args.magnet) if args.magnet else MagNetReformer().eval()
    gan = load_purifier(args.defense_gan) if args.defense_gan else DefenseGAN(DefenseGANConfig()).eval()
    with torch.no_grad():
        times = {
            "puvae": seconds(lambda: puvae.project(images, 0.1), args.repeats),
            "magnet": seconds(lambda: magnet.purify(images), args.repeats),
            "defense_gan": seconds(lambda: gan.project(images, steps=args.steps, restarts=args.restarts), 1),
        }
        budget = BUDGET_MULTIPLE * times["puvae"]
        per_code_step = times["defense_gan"] / (args.steps * args.restarts)
        fits = [(steps, restarts) for steps in (10, 25, 50, 100, 200) for restarts in (1, 2, 5, 10, 20)
                if steps * restarts * per_code_step <= budget]
        steps, restarts = max(fits, key=lambda lr: (lr[0] * lr[1], lr[0])) if fits else (1, 1)
        within = seconds(lambda: gan.project(images, steps=steps, restarts=restarts), 1)
    report = {
        "command": "python " + " ".join(sys.argv), "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": args.batch,
        "seconds": times, "defense_gan_settings": {"steps": args.steps, "restarts": args.restarts},
        "ratio_defense_gan_over_puvae": times["defense_gan"] / times["puvae"],
        "paper_table5": {"puvae": 0.11, "defense_gan": 14.80, "ratio": 134.55, "hardware": "TITAN V"},
        "table6_budget_seconds": budget, "table6_defense_gan": {"steps": steps, "restarts": restarts, "seconds": within},
        "weights": {"magnet": args.magnet or "untrained (timing only)", "defense_gan": args.defense_gan or "untrained (timing only)"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
