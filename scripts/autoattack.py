"""AutoAttack (RobustBench's standard suite, torchattacks' implementation) and Square alone on PuVAE.

The attacked model is the whole deterministic ``PurifiedClassifier`` (sigma_eps 0, so the
defence is not randomised and the gradient attacks need no EOT): APGD-CE, APGD-T, FAB-T with
100 iterations each as in RobustBench (torchattacks' own ``AutoAttack`` uses its default of
10), then Square with 5,000 queries, each attack on the images still classified correctly.
``--gradients bpda`` gives the gradient attacks BPDA gradients instead of the full ones.
Square uses only the model's outputs (gradient-free), so it is also run on its own.
``--squeeze`` attacks PuVAE behind 1-bit squeezing (the *PuVAE + bit squeezing* column; its
rounding passes the gradient straight through) and writes ``..._squeeze.json``.

The first ``--images`` test images are attacked in chunks of ``--chunk``; each finished chunk
is appended to a work file under ``--work`` (named by the settings and the purifier's
weights), so a run stopped by ``--time-budget`` or killed resumes where it stopped, across
sessions. The report counts the chunks finished so far (always a prefix of the test set).

    python scripts/autoattack.py --images 200 [--classifier A] [--gradients full|bpda] [--squeeze] [--time-budget 1800]

Writes docs/results/autoattack_mnist_<classifier>[_squeeze].json with robust accuracies and Wilson 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torchattacks

from puvae_defense import PurifiedClassifier, PuVAE
from puvae_defense.attacks import BPDA
from puvae_defense.baselines import BitDepthSqueeze
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.evaluation import wilson_interval
from puvae_defense.serialization import weights_fingerprint


def suite(gradient_model: torch.nn.Module, defended: torch.nn.Module, eps: float, steps: int, queries: int,
          seed: int) -> list[tuple[str, torchattacks.attack.Attack]]:
    """RobustBench's standard Linf suite, in its order (Square on the defended model's outputs only)."""
    return [
        ("APGD-CE", torchattacks.APGD(gradient_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed)),
        ("APGD-T", torchattacks.APGDT(gradient_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, n_classes=10, seed=seed)),
        ("FAB-T", torchattacks.FAB(gradient_model, norm="Linf", eps=eps, steps=steps, n_restarts=1, multi_targeted=True,
                                   n_classes=10, seed=seed)),
        ("Square", torchattacks.Square(defended, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, seed=seed)),
    ]


def attack_chunk(defended: torch.nn.Module, attacks: list, images: torch.Tensor, labels: torch.Tensor,
                 square_only: bool) -> dict[str, float]:
    """Counts of images still classified correctly after each attack of the suite, and under Square alone."""

    def correct(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return defended(x).argmax(1) == labels

    started = time.perf_counter()
    robust = correct(images)
    record: dict[str, float] = {"n": len(labels), "clean": int(robust.sum())}
    adversarial = images.clone()
    for name, attack in [] if square_only else attacks:
        todo = robust.nonzero().flatten()
        if len(todo):
            adversarial[todo] = attack(images[todo], labels[todo]).detach()
            robust = correct(adversarial)
        record[f"after {name}"] = int(robust.sum())
    square = dict(attacks)["Square"]
    record["square_alone"] = int(correct(square(images, labels)).sum())
    record["max_linf"] = float((adversarial - images).abs().max())
    record["seconds"] = time.perf_counter() - started
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=50, help="images per resumable piece of work")
    parser.add_argument("--classifier", default="A", choices=["A", "B"])
    parser.add_argument("--gradients", default="full", choices=["full", "bpda"])
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=100, help="iterations of APGD-CE, APGD-T and FAB-T")
    parser.add_argument("--queries", type=int, default=5000, help="Square's query budget")
    parser.add_argument("--square-only", action="store_true",
                        help="run only Square on its own (gradient-free), not the AutoAttack suite")
    parser.add_argument("--squeeze", action="store_true", help="1-bit squeezing before the purifier (straight-through)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; no new chunk starts once the slowest chunk so far would overrun them")
    parser.add_argument("--work", type=Path, default=Path("runs/autoattack"), help="finished chunks, for resuming")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.images < 1 or args.chunk < 1:
        parser.error("--images and --chunk must be positive")
    deadline = None if args.time_budget is None else time.time() + args.time_budget
    device = torch.device(args.device)
    test = load_dataset("mnist", "test")
    net = PaperClassifier.from_pretrained(f"mnist-classifier-{args.classifier.lower()}", device=device)
    squeeze = BitDepthSqueeze(1) if args.squeeze else None
    defended = PurifiedClassifier(net, PuVAE.from_pretrained("puvae-mnist", device=device), sigma_eps=0.0,
                                  input_transform=squeeze).eval()
    gradient_model = defended if args.gradients == "full" else BPDA(lambda x: defended.purify(x).purified,
                                                                      defended.classify_purified).eval()
    attacks = suite(gradient_model, defended, args.eps, args.steps, args.queries, args.seed)
    fingerprint = weights_fingerprint(defended.purifier)
    settings = {"classifier": args.classifier, "eps": args.eps, "gradients": args.gradients, "steps": args.steps,
                "square_queries": args.queries, "square_only": args.square_only, "seed": args.seed,
                "chunk": args.chunk, "purifier_fingerprint": fingerprint, "torchattacks": torchattacks.__version__,
                **({"input_transform": repr(squeeze)} if squeeze is not None else {})}
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / (f"mnist-{args.classifier}-{args.gradients}{'-square' if args.square_only else ''}"
                       f"{'-squeeze' if squeeze is not None else ''}-{fingerprint[:12]}.jsonl")
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = [r for r in done if r["settings"] == settings]
    for start in range(sum(r["n"] for r in done), args.images, args.chunk):  # the finished chunks are a prefix
        slowest = max((r["seconds"] for r in done), default=0.0)
        if deadline is not None and done and time.time() + slowest > deadline:
            print(f"stopping before images {start}+: --time-budget reached", file=sys.stderr)
            break
        stop = min(start + args.chunk, args.images)
        images = test.images[start:stop].to(device)
        labels = test.labels[start:stop].to(device)
        record = {"start": start, **attack_chunk(defended, attacks, images, labels, args.square_only),
                  "settings": settings}
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done.append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "settings"}), file=sys.stderr)
    done = [r for r in done if r["start"] < args.images]
    n = sum(r["n"] for r in done)
    totals = {key: sum(r[key] for r in done) for key in ["clean", *(f"after {name}" for name, _ in attacks)]
              if done and key in done[0]}
    final = totals.get("after Square")
    square_alone = sum(r["square_alone"] for r in done)
    report = {
        "command": "python " + " ".join(sys.argv), **settings, "images": n, "sigma_eps": 0.0,
        "requested_images": args.images, "work_file": str(log),
        "robust_accuracy_percent": {k: 100 * v / n for k, v in totals.items()} if n else {},
        "autoattack_percent": None if final is None or not n else 100 * final / n,
        "autoattack_wilson95": None if final is None or not n else wilson_interval(final, n),
        "square_alone_images": n, "square_alone_percent": 100 * square_alone / n if n else None,
        "square_alone_wilson95": wilson_interval(square_alone, n) if n else None,
        "max_linf": max((r["max_linf"] for r in done), default=0.0),
        "wall_seconds": sum(r["seconds"] for r in done), "device": str(device),
    }
    out = args.out or Path(f"docs/results/autoattack_mnist_{args.classifier}{'_squeeze' if squeeze is not None else ''}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
