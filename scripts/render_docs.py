"""Fill the generated sections of README.md and docs/evaluation.md from the results files.

Numbers are never copied by hand: they come from docs/results/*.json (written by
`puvae-defense evaluate` and benchmarks/projection.py) and from the registry. Each
generated section sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`.

Usage: python scripts/render_docs.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from puvae_defense import hub
from puvae_defense.evaluation import results_markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def models_table() -> str:
    lines = ["| name | what | measured (test set) |", "|---|---|---|"]
    for name in hub.list_models():
        entry = hub.get_entry(name)
        metrics = ", ".join(f"{k.removeprefix('test_').replace('_', ' ')} {v:.2f}%"
                            for k, v in entry.metrics.items() if k.startswith("test_"))
        lines.append(f"| `{name}` | {entry.description.split('.')[0]} | {metrics} |")
    return "\n".join(lines)


def headline() -> str:
    table2, adaptive = _load("table2_mnist.json"), _load("adaptive_mnist.json")
    if table2 is None:
        return "_Not evaluated yet: run `puvae-defense evaluate` (docs/evaluation.md)._"
    meta = table2["meta"]
    lines = [
        f"Table 2 of the paper, reproduced on the full MNIST test set (n = {table2['classifiers']['A']['n']:,}) with the "
        f"shipped models; `{meta['command']}` ({meta['device']}, {meta['wall_seconds'] / 60:.0f} min). "
        "Cells read *ours (paper, difference)*; the last column is the target's accuracy on purified "
        "clean images, which the paper does not report.",
        "",
        results_markdown(table2).strip(),
    ]
    if adaptive is not None:
        m = adaptive["meta"]
        lines += [
            "",
            f"Adaptive white-box attacks on the whole `PurifiedClassifier` (untargeted PGD, eps 0.3, "
            f"{m['attack_params']['pgd_steps']} steps of {m['attack_params']['pgd_step']}, random start; EOT over "
            f"{m['attack_params']['eot_samples']} noise draws), robust accuracy on the first n test images; "
            f"`{m['command']}` ({m['device']}, {m['wall_seconds'] / 60:.0f} min). The paper reports none of these.",
            "",
            "\n".join(results_markdown(adaptive).strip().splitlines()[2:]).strip(),
        ]
    return "\n".join(lines)


def speed() -> str:
    bench = _load("benchmark_projection_cpu.json")
    if bench is None:
        return "_Run `python benchmarks/projection.py`._"
    lines = [
        f"`{bench['command']}` on {bench['device']} ({bench['threads']} threads, torch {bench['torch']}; "
        f"measured fp32 matrix-multiply rate {bench['fp32_matmul_gflops_2048']:.0f} GFLOP/s), paper-size PuVAE, "
        "batches of 128 random images, median of interleaved repeats:",
        "",
        "| image | batched projection | naive per-class loop | speed-up | GFLOP/s (share of matmul rate) | PurifiedClassifier end to end |",
        "|---|---|---|---|---|---|",
    ]
    for case in bench["cases"]:
        med = case["median_ms"]
        lines.append(
            f"| {'x'.join(map(str, case['image_shape']))} | {med['batched']:.0f} ms | {med['per_class_loop']:.0f} ms | "
            f"{case['speedup_batched_vs_loop']:.1f}x | {case['achieved_gflops']['batched']:.0f} "
            f"({100 * case['batched_fraction_of_matmul_rate']:.0f}%) | {case['purified_classifier_images_per_second']:.0f} images/s "
            f"(classifier {case['end_to_end_classifier']}) |"
        )
    dg = bench.get("defense_gan_comparison")
    if dg:
        lines += ["", f"A Defense-GAN-style search (L = {dg['steps']} gradient steps, R = {dg['restarts']} restarts, the "
                  f"paper's Defense-GAN settings, over a generator the size of PuVAE's decoder; timing only) took "
                  f"{dg['defense_gan_style_seconds']:.0f} s for the same 128 images: {dg['ratio']:.0f}x PuVAE's "
                  f"{dg['puvae_batched_seconds'] * 1e3:.0f} ms (the paper: 14.8 s vs 0.114 s on a TITAN V, 130x)."]
    lines += ["", "No GPU timing: no GPU was available to this project's sessions when the models were trained "
              "and evaluated (`scripts/device_session.sh` records one when a GPU is lent)."]
    return "\n".join(lines)


def _replace(path: Path, name: str, body: str) -> None:
    text = path.read_text()
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no generated section {name!r}")
    path.write_text(pattern.sub(lambda m: m.group(1) + body + m.group(2), text))


def main() -> None:
    _replace(ROOT / "README.md", "models", models_table())
    _replace(ROOT / "README.md", "results", headline())
    _replace(ROOT / "README.md", "speed", speed())
    _replace(ROOT / "docs" / "evaluation.md", "results", headline())
    print("rendered README.md and docs/evaluation.md")


if __name__ == "__main__":
    main()
