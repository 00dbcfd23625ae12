"""Can a calibrated decision rule over the ten candidates beat the paper's nearest-in-RMSE?

On the first ``--n`` validation images (clean, and targeted FGSM at eps 0.3 with random wrong
targets computed on the held-out selection classifier), records for every image and class:
the RMSE of the sampled projection (sigma_eps 0.1, the noise :meth:`PuVAE.project` uses), the
RMSE of the mu-decoding, the L1 distance of the sampled projection, the KL of the class's
posterior, and the class the selector reads on the sampled projection. Rules are then fitted
on the clean images of the second half (``--n // 2`` onwards) and scored on the first half,
clean and attacked: how often the rule picks the true class (projection accuracy) and how
often the selector reads the chosen candidate right (what the defense would give).

The rules: the argmin of each distance; RMSE plus a KL weight (a fixed grid); a per-class
offset on the RMSE with a learned scale (a logistic fit of ``-s * rmse + b``); and linear
heads on the stacked, standardised features. Validation split only.

Gated rules also read the selector's class on the *input* (what a defense that holds the target
classifier could consult before purifying): take the input's class when its candidate is within
``tau`` in RMSE of the nearest (a grid in :data:`GATE_MARGINS`), or when the selector's softmax
confidence on the input is at least ``p`` (:data:`GATE_CONFIDENCES`), else the nearest. The FGSM is
computed on the undefended selector, so this is the gray-box trade-off only: an attacker who knows
the gate needs only to bring the wrong class within the margin, which can only lower the FGSM column.

Usage:
    python experiments/decision_rule_probe.py hub/puvae-fashion-mnist --dataset fashion-mnist \\
        --n 10000 --cache runs/rule-probe/fashion.pt --out runs/rule-probe/fashion.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from puvae_defense import PuVAE
from puvae_defense.attacks import fgsm, random_targets
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.losses import gaussian_kl
from puvae_defense.selection import default_selector_path

FEATURES = ("rmse", "rmse_mu", "l1", "kl")
KL_WEIGHTS = (1e-4, 3e-4, 1e-3, 3e-3)
GATE_MARGINS = (0.002, 0.005, 0.01, 0.02, 0.05)
GATE_CONFIDENCES = (0.999, 0.99, 0.9)
CHUNK = 100
FIT_STEPS = 500

Rule = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # features -> chosen class per image


@torch.no_grad()
def candidate_features(vae: PuVAE, selector: torch.nn.Module, images: torch.Tensor,
                       generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per image and class ``(B, C)``: the distances of :data:`FEATURES`, the selector's reading of
    each candidate, and the selector's logits on the input itself (``input``)."""
    b, c = images.shape[0], vae.num_classes
    sampled = vae.candidates(images, 0.1, generator).reshape(b, c, -1).float()
    flat = images.reshape(b, 1, -1).float()
    pairs, pair_labels = images.repeat_interleave(c, 0), torch.arange(c).repeat(b)
    mu, sigma = vae.encode(pairs, pair_labels)
    decoded_mu = vae.decode(mu, pair_labels).reshape(b, c, -1).float()
    return {"rmse": (sampled - flat).pow(2).mean(-1).sqrt(),
            "rmse_mu": (decoded_mu - flat).pow(2).mean(-1).sqrt(),
            "l1": (sampled - flat).abs().mean(-1),
            "kl": gaussian_kl(mu, sigma, "sum").view(b, c),
            "read": selector(sampled.reshape(b * c, *images.shape[1:])).argmax(-1).view(b, c),
            "input": selector(images).float()}


def fit_offset_rule(rmse: torch.Tensor, labels: torch.Tensor) -> tuple[Rule, dict[str, object]]:
    """Per-class offsets on the RMSE: ``argmax(-s * rmse + b)``, ``s`` and ``b`` by logistic fit."""
    scale = torch.tensor(100.0, requires_grad=True)
    bias = torch.zeros(rmse.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([scale, bias], lr=0.05)
    for _ in range(2 * FIT_STEPS):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(-scale * rmse + bias, labels).backward()
        optimizer.step()
    scale, bias = scale.detach(), bias.detach()
    offsets = (bias - bias.mean()) / scale  # in RMSE units: how much nearer a class is made to look
    return (lambda f: (-scale * f["rmse"] + bias).argmax(1)), {"scale": float(scale),
                                                                "rmse_offsets": [round(float(o), 4) for o in offsets]}


def fit_linear_rule(features: dict[str, torch.Tensor], labels: torch.Tensor, names: tuple[str, ...],
                    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> Rule:
    """A linear head from the standardised, concatenated features ``names`` to the class."""
    def stack(f: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([transform(f[name]) for name in names], 1)
    x = stack(features)
    mean, std = x.mean(0), x.std(0) + 1e-8
    head = torch.nn.Linear(x.shape[1], features["rmse"].shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(FIT_STEPS):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head((x - mean) / std), labels).backward()
        optimizer.step()
    return lambda f: head((stack(f) - mean) / std).argmax(1).detach()


def margin_gate(tau: float) -> Rule:
    """The input's class when its candidate is within ``tau`` in RMSE of the nearest, else the nearest."""
    def rule(f: dict[str, torch.Tensor]) -> torch.Tensor:
        (nearest_rmse, nearest), own = f["rmse"].min(1), f["input"].argmax(1)
        gap = f["rmse"].gather(1, own[:, None])[:, 0] - nearest_rmse
        return torch.where(gap <= tau, own, nearest)
    return rule


def confidence_gate(p: float) -> Rule:
    """The input's class when the selector's softmax confidence on the input is at least ``p``, else the nearest."""
    def rule(f: dict[str, torch.Tensor]) -> torch.Tensor:
        confidence, own = f["input"].softmax(1).max(1)
        return torch.where(confidence >= p, own, f["rmse"].argmin(1))
    return rule


def percent(right: torch.Tensor) -> float:
    """The share of ``True`` in a boolean tensor, in percent to two decimals."""
    return round(100 * float(right.float().mean()), 2)


def score(rule: Rule, features: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """Projection accuracy and the selector's accuracy on the chosen candidate (%)."""
    chosen = rule(features)
    read = features["read"].gather(1, chosen[:, None])[:, 0]
    return {"projection": percent(chosen == labels), "selector": percent(read == labels)}


def half(features: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
    return {name: value[part] for name, value in features.items()}


def compare_rules(clean: dict[str, torch.Tensor], attacked: dict[str, torch.Tensor],
                  labels: torch.Tensor) -> dict[str, object]:
    """Fit every rule on the clean second half, score it on the first half, clean and attacked."""
    n = len(labels)
    fit_part, test_part = slice(n // 2, n), slice(0, n // 2)
    fit_features, fit_labels = half(clean, fit_part), labels[fit_part]
    rules: dict[str, Rule] = {f"argmin {name}": (lambda f, name=name: f[name].argmin(1)) for name in FEATURES[:3]}
    for weight in KL_WEIGHTS:
        rules[f"argmin rmse + {weight:g} kl"] = lambda f, w=weight: (f["rmse"] + w * f["kl"]).argmin(1)
    rules["per-class rmse offsets"], offsets = fit_offset_rule(fit_features["rmse"], fit_labels)
    rules["linear(rmse)"] = fit_linear_rule(fit_features, fit_labels, ("rmse",))
    rules["linear(log rmse)"] = fit_linear_rule(fit_features, fit_labels, ("rmse",), torch.log)
    rules["linear(rmse, kl)"] = fit_linear_rule(fit_features, fit_labels, ("rmse", "kl"))
    rules["linear(all four)"] = fit_linear_rule(fit_features, fit_labels, FEATURES)
    for tau in GATE_MARGINS:
        rules[f"input's class if within {tau:g} rmse of the nearest"] = margin_gate(tau)
    for p in GATE_CONFIDENCES:
        rules[f"input's class if the selector's confidence >= {p:g}"] = confidence_gate(p)
    rules["input's class (the gate always open)"] = lambda f: f["input"].argmax(1)
    test_labels = labels[test_part]
    rules["true class (not available to a defense)"] = lambda f: test_labels
    scored = {"clean": half(clean, test_part), "fgsm": half(attacked, test_part)}
    return {"fit_images": n - n // 2, "scored_images": n // 2, "offset_fit": offsets,
            "selector_undefended": {kind: percent(f["input"].argmax(1) == test_labels) for kind, f in scored.items()},
            "rules": {name: {kind: score(rule, f, test_labels) for kind, f in scored.items()}
                      for name, rule in rules.items()}}


def collect(vae: PuVAE, selector: torch.nn.Module, dataset: str, n: int) -> dict[str, object]:
    """Features of the first ``n`` validation images, clean and under the selector's targeted FGSM."""
    val = load_dataset(dataset, "val").subset(0, n)
    targets = random_targets(val.labels, vae.num_classes, torch.Generator().manual_seed(1))
    noise = torch.Generator().manual_seed(0)
    clean: list[dict[str, torch.Tensor]] = []
    attacked: list[dict[str, torch.Tensor]] = []
    start_time = time.time()
    for start in range(0, n, CHUNK):
        x, t = val.images[start:start + CHUNK], targets[start:start + CHUNK]
        adversarial = fgsm(selector, x, t, eps=0.3, targeted=True)
        clean.append(candidate_features(vae, selector, x, noise))
        attacked.append(candidate_features(vae, selector, adversarial, noise))
        print(f"{start + len(x)}/{n} images, {time.time() - start_time:.0f} s", flush=True)
    def merge(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return {"labels": val.labels[:n], "clean": merge(clean), "fgsm": merge(attacked)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="PuVAE folder or registered name")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--selector", default=None,
                        help="held-out selection classifier (default selectors/heldout-cw, with -<dataset> "
                             "for data sets other than MNIST)")
    parser.add_argument("--n", type=int, default=2000, help="validation images (half to fit, half to score)")
    parser.add_argument("--cache", type=Path, default=None, help="features file: reused when present, else written")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (also printed)")
    args = parser.parse_args()
    if args.n < 2:
        parser.error(f"--n must be at least 2 (half to fit, half to score), got {args.n}")
    if args.cache is not None and args.cache.exists():
        data = torch.load(args.cache)
        if len(data["labels"]) != args.n:
            parser.error(f"--cache {args.cache} holds {len(data['labels'])} images, not --n {args.n}")
        if "input" not in data["clean"]:
            parser.error(f"--cache {args.cache} predates the gated rules (no selector logits on the inputs): "
                         "delete it to collect again")
    else:
        vae = PuVAE.from_pretrained(args.model).float().eval()
        selector = PaperClassifier.from_pretrained(args.selector or default_selector_path(args.dataset)).float().eval()
        data = collect(vae, selector, args.dataset, args.n)
        if args.cache is not None:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(data, args.cache)
    torch.manual_seed(0)  # the linear heads' initialisation
    report = {"model": args.model, "dataset": args.dataset, "n": args.n,
              **compare_rules(data["clean"], data["fgsm"], data["labels"])}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
