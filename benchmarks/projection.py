"""Time PuVAE purification: batched projection against the naive per-class loop.

For each image shape (1x28x28 and 3x32x32) the paper-size model purifies a batch of
128 random images; both methods run in the same process on the same inputs, interleaved,
several times, and must return the same labels. Writes a JSON file with median
milliseconds per batch, the speed-up, achieved GFLOP/s against a measured matrix-multiply
rate, and the environment. On CUDA it also times the Triton and torch selection backends.

Usage:
    python benchmarks/projection.py                      # CPU, writes docs/results/benchmark_projection_cpu.json
    python benchmarks/projection.py --device cuda --out $OUT/benchmark_projection_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from puvae_defense import PuVAE, PuVAEConfig, PurifiedClassifier
from puvae_defense.classifiers import ClassifierConfig, PaperClassifier
from puvae_defense.kernels import KERNEL_ENV, triton_available


def multiply_adds(config: PuVAEConfig) -> tuple[int, int]:
    """(label-independent, per-class) multiply-adds of one image's projection."""
    c, h, w = config.image_shape
    k2 = config.conv_kernel**2
    trunk = h * w * k2 * config.conv_channels * (c + (config.num_convs - 1) * config.conv_channels)
    shared = trunk + config.trunk_features * config.encoder_hidden[0]
    widths = config.encoder_hidden
    per_class = sum(a * b for a, b in zip(widths[:-1], widths[1:])) + widths[-1] * 2 * config.latent_dim
    per_class += config.latent_dim * config.decoder_hidden
    sizes = config.decoder_sizes
    channels = [config.decoder_seed_channels] + [config.deconv_channels] * (config.num_deconvs - 1) + [c]
    for i in range(config.num_deconvs):
        hi, wi = sizes[i]
        per_class += hi * wi * channels[i] * channels[i + 1] * config.deconv_kernel**2
    return shared, per_class


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    times = median_ms(lambda: a @ b, device, repeats)
    return 2 * size**3 / (statistics.median(times) * 1e-3) / 1e9


def _with_tf32(fn: Callable[[], object]) -> object:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        return fn()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def _with_bf16(fn: Callable[[], object]) -> object:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return fn()


def bench_shape(shape: tuple[int, int, int], device: torch.device, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    config = PuVAEConfig(image_shape=shape)
    model = PuVAE(config).to(device).eval()
    x = torch.rand(batch, *shape, device=device)
    shared, per_class = multiply_adds(config)
    classes = config.num_classes
    methods: dict[str, Callable[[], object]] = {
        "batched": lambda: model.project(x, sigma_eps=0.1),
        "per_class_loop": lambda: model.project_per_class(x, sigma_eps=0.1),
    }
    arch = "A" if shape[0] == 1 else "C"
    defended = PurifiedClassifier(PaperClassifier(ClassifierConfig(arch, shape)).to(device).eval(), model)
    methods["purified_classifier_end_to_end"] = lambda: defended(x)
    if device.type == "cuda":
        methods["batched_torch_select"] = lambda: model.project(x, sigma_eps=0.1, backend="torch")
        if triton_available():  # named, so that the row holds whatever $PUVAE_DEFENSE_KERNEL says
            methods["batched_triton_select"] = lambda: model.project(x, sigma_eps=0.1, backend="triton")
        methods["batched_tf32"] = lambda: _with_tf32(lambda: model.project(x, sigma_eps=0.1))
        methods["batched_bf16_autocast"] = lambda: _with_bf16(lambda: model.project(x, sigma_eps=0.1))
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.no_grad():
        same = torch.equal(model.project(x, 0.0).labels, model.project_per_class(x, 0.0).labels)
        for fn in methods.values():  # warm-up
            fn()
            fn()
        for _ in range(repeats):  # interleaved, so drifts hit both alike
            for name, fn in methods.items():
                times[name] += median_ms(fn, device, 1)
    medians = {name: statistics.median(t) for name, t in times.items()}
    flops = {"batched": 2 * batch * (shared + classes * per_class),
             "per_class_loop": 2 * batch * classes * (shared + per_class)}
    result = {
        "image_shape": list(shape),
        "batch": batch,
        "repeats": repeats,
        "same_labels_at_sigma_eps_0": same,
        "median_ms": medians,
        "all_ms": times,
        "speedup_batched_vs_loop": medians["per_class_loop"] / medians["batched"],
        "multiply_adds_per_image": {"label_independent": shared, "per_class": per_class,
                                    "batched": shared + classes * per_class,
                                    "per_class_loop": classes * (shared + per_class)},
        "achieved_gflops": {name: flops[name] / (medians[name] * 1e-3) / 1e9 for name in flops},
        "purified_classifier_images_per_second": batch / (medians["purified_classifier_end_to_end"] * 1e-3),
        "end_to_end_classifier": arch,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    gemm = matmul_gflops(device)
    report = {
        "command": "python benchmarks/projection.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "fp32_matmul_gflops_2048": gemm,
        "selection_backend": os.environ.get(KERNEL_ENV, "auto"),  # what "batched" and the end-to-end rows used
        "note": "median wall time per batch of random images, paper-size PuVAE, sigma_eps=0.1, fp32 (no TF32)",
        "cases": [bench_shape(shape, device, args.batch, args.repeats) for shape in [(1, 28, 28), (3, 32, 32)]],
    }
    for case in report["cases"]:
        case["batched_fraction_of_matmul_rate"] = case["achieved_gflops"]["batched"] / gemm
    out = args.out or Path(__file__).resolve().parent.parent / "docs" / "results" / f"benchmark_projection_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'shape':>10} {'batched ms':>11} {'loop ms':>9} {'speed-up':>8} {'GFLOP/s':>8} {'img/s e2e':>10} (matmul {gemm:.0f})")
    for case in report["cases"]:
        med = case["median_ms"]
        print(f"{'x'.join(map(str, case['image_shape'])):>10} {med['batched']:11.2f} {med['per_class_loop']:9.2f} "
              f"{case['speedup_batched_vs_loop']:8.2f} {case['achieved_gflops']['batched']:8.1f} "
              f"{case['purified_classifier_images_per_second']:10.0f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
