"""Deployment options of the shipped puvae-mnist, timed in one run on one machine.

For 128 MNIST test images: eager float32 (the reference), the module cast to bfloat16,
bfloat16 autocast, ``torch.compile`` (inductor; compile time reported apart) and the ONNX
export run by onnxruntime, each as a median over interleaved repeats; then the throughput of
purifying the whole test set (``purify_dataset``), and, over the whole test set, how often the
bfloat16 paths choose the class float32 chooses (sigma_eps 0, so only precision differs) and
classifier A's accuracy behind each.

    python benchmarks/deploy.py [--repeats 7] [--agreement-limit N] [--out docs/results/benchmark_deploy_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from puvae_defense import PuVAE
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.purification import purify_dataset


def cpu_flags() -> list[str]:
    """The bf16/AMX/AVX-512 flags of this CPU (Linux), which decide whether bfloat16 can be fast."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx") or f in ("avx512f", "avx2"))


def timed(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each method, interleaved so drifts hit all alike (two warm-up calls each)."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():
        fn()
        fn()
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def agreement(purifier: PuVAE, classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Over all images, sigma_eps 0: classes chosen by each bf16 path vs float32, and A's accuracy behind each."""
    bf16 = PuVAE(purifier.config).to(torch.bfloat16).eval()
    bf16.load_state_dict(purifier.state_dict())
    chosen: dict[str, list[torch.Tensor]] = {"fp32": [], "bf16_module": [], "bf16_autocast": []}
    correct = dict.fromkeys(chosen, 0)
    with torch.no_grad():
        for start in range(0, len(labels), 500):
            x, y = images[start:start + 500], labels[start:start + 500]
            outs = {"fp32": purifier.project(x, 0.0), "bf16_module": bf16.project(x.bfloat16(), 0.0)}
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs["bf16_autocast"] = purifier.project(x, 0.0)
            for name, out in outs.items():
                chosen[name].append(out.labels)
                correct[name] += int((classifier(out.purified.float()).argmax(1) == y).sum())
    reference = torch.cat(chosen["fp32"])
    return {
        "images": len(labels),
        "same_class_as_fp32_percent": {n: 100 * float((torch.cat(c) == reference).float().mean()) for n, c in chosen.items()
                                       if n != "fp32"},
        "classifier_A_accuracy_percent": {n: 100 * c / len(labels) for n, c in correct.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--limit", type=int, default=None, help="test images for the throughput (default all)")
    parser.add_argument("--agreement-limit", type=int, default=None,
                        help="test images for the bf16 agreement (default all; bf16 is slow on CPUs without bf16 units)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/benchmark_deploy_cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    test = load_dataset("mnist", "test")
    if args.limit:
        test = test.subset(0, args.limit)
    purifier = PuVAE.from_pretrained("puvae-mnist")
    classifier = PaperClassifier.from_pretrained("mnist-classifier-a")
    x = test.images[:args.batch]
    bf16 = PuVAE(purifier.config).to(torch.bfloat16).eval()
    bf16.load_state_dict(purifier.state_dict())
    x_bf16 = x.bfloat16()

    def autocast() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return purifier.project(x, 0.1)

    started = time.perf_counter()
    compiled = torch.compile(purifier.project)
    with torch.no_grad():
        compiled(x, 0.1)
    compile_seconds = time.perf_counter() - started
    methods: dict[str, Callable[[], object]] = {
        "eager_fp32": lambda: purifier.project(x, 0.1),
        "bf16_module": lambda: bf16.project(x_bf16, 0.1),
        "bf16_autocast": autocast,
        "compiled_fp32": lambda: compiled(x, 0.1),
    }
    onnx: dict[str, object] = {}
    try:
        from puvae_defense.export import OnnxModel, compare_onnx, export_onnx

        with tempfile.TemporaryDirectory() as folder:
            runner = OnnxModel(export_onnx(purifier, Path(folder) / "puvae.onnx"))
        methods["onnxruntime_fp32_sigma0"] = lambda: runner(x)
        methods["eager_fp32_sigma0"] = lambda: purifier.project(x, 0.0)
        onnx = compare_onnx(purifier, runner, test.images)
    except ImportError as err:
        onnx = {"skipped": str(err)}
    with torch.no_grad():
        medians = timed(methods, args.repeats)
        throughput = purify_dataset(purifier, test, batch_size=500, progress=False)
        n = args.agreement_limit or len(test)
        agree = agreement(purifier, classifier, test.images[:n], test.labels[:n])
    report = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "device": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "batch": args.batch,
        "repeats": args.repeats,
        "median_ms": medians,
        "speedup_vs_eager_fp32": {k: medians["eager_fp32"] / v for k, v in medians.items()},
        "compile_seconds": compile_seconds,
        "onnx_vs_torch": onnx,
        "purify_dataset": {"images": len(throughput.labels), "batch_size": 500, "seconds": throughput.seconds,
                           "images_per_second": throughput.images_per_second},
        "bf16_agreement": agree,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
