"""Validation of user inputs, shared by the model, the wrapper and the trainer.

Every check raises ``TypeError`` or ``ValueError`` with what was expected, what was
received and how to fix it; none of them silently changes the data.
"""

from __future__ import annotations

import math
import warnings

import torch

__all__ = ["RANGE_TOLERANCE", "check_count", "check_images", "check_labels", "check_sigma", "cpu_has_bf16", "not_a_tensor",
           "warn_if_emulated_bf16"]

#: Values this far outside [0, 1] are accepted (rounding of upstream transforms).
RANGE_TOLERANCE = 1e-3


def not_a_tensor(name: str, value: object, expected: str = "of shape (B, C, H, W)") -> TypeError:
    """The error for a non-tensor input, naming its type in full (``numpy.ndarray``) and, for
    numpy arrays and lists, how to convert them."""
    kind = type(value)
    full = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"
    hint = ""
    if full.startswith("numpy."):
        hint = " (convert with torch.from_numpy(array).float(), divided by 255 for uint8 images)"
    elif isinstance(value, (list, tuple)):
        hint = " (convert with torch.tensor(...) or torch.stack(...))"
    return TypeError(f"expected a torch.Tensor for {name} {expected}, got {full}{hint}")


def check_images(
    images: object, image_shape: tuple[int, int, int], *, name: str = "images", check_values: bool = True
) -> torch.Tensor:
    """Check a ``(B, C, H, W)`` batch of floating images in [0, 1] and return it.

    Args:
        images: the user's input.
        image_shape: the expected ``(C, H, W)``.
        name: how the input is called in error messages.
        check_values: also check for NaN/Inf and the [0, 1] range (one pass over the data).
    """
    if not isinstance(images, torch.Tensor):
        raise not_a_tensor(name, images)
    if images.device.type == "meta":
        raise ValueError(f"{name} are on the meta device: they have no values (move real images to the model's device)")
    expected = "(B, " + ", ".join(str(d) for d in image_shape) + ")"
    if images.dim() != 4:
        hint = " (add a batch dimension with images.unsqueeze(0))" if images.dim() == 3 else ""
        raise ValueError(f"{name} must have shape {expected}, got {tuple(images.shape)}{hint}")
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{name} have shape {tuple(images.shape)} but this model expects {expected} "
            "(channels, height, width); resize the images or use a PuVAE trained for that shape"
        )
    if not images.is_floating_point():
        hint = " (divide uint8 images by 255)" if images.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be a floating tensor with values in [0, 1], got dtype {images.dtype}{hint}")
    if check_values and images.numel():
        values = images.detach()
        if torch.compiler.is_exporting():
            return images  # an exported graph (ONNX) has no Python to raise from: its callers check values
        if torch.compiler.is_compiling():  # the same check without a host sync, so no graph break
            torch._assert_async(
                torch.isfinite(values).all() & (values.amin() >= -RANGE_TOLERANCE) & (values.amax() <= 1 + RANGE_TOLERANCE),
                f"{name} must be finite with values in [0, 1] (checked inside a compiled graph)",
            )
            return images
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"{name} contain NaN or Inf values")
        low, high = float(values.min()), float(values.max())
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"{name} must have values in [0, 1], got min {low:.4g} and max {high:.4g}; pass "
                "unnormalized images (a torchvision Normalize belongs in preprocess=..., which is "
                "applied after purification)"
            )
    return images


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``, else a ``ValueError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_sigma(value: object, name: str = "sigma") -> float:
    """``value`` as a float if it is a finite positive number (a Gaussian noise level), else a ``ValueError``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def check_labels(labels: object, batch: int, num_classes: int, *, name: str = "labels") -> torch.Tensor:
    """Check a ``(B,)`` integer tensor of class indices in ``[0, num_classes)`` and return it."""
    if not isinstance(labels, torch.Tensor):
        raise not_a_tensor(name, labels, "of class indices")
    if labels.device.type == "meta":
        raise ValueError(f"{name} are on the meta device: they have no values")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must be in [0, {num_classes - 1}], got values from {int(labels.min())} to {int(labels.max())}"
        )
    return labels.long()


#: Arithmetic of a network's forward passes where a caller may choose it (Defense-GAN's projection,
#: :class:`~puvae_defense.SmoothedClassifier`'s base classifier): float32, or bfloat16 autocast.
PRECISIONS = ("fp32", "bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic units that oneDNN uses (AVX-512 bf16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_if_emulated_bf16(device: torch.device, what: str) -> None:
    """Warn (``RuntimeWarning``) that bf16 autocast on ``device`` is emulated, hence slow.

    On a CPU without bf16 units PyTorch still runs bf16 autocast, correctly but through a slow
    path: a 1024 x 1024 matrix product took 68x longer than in float32 on the AVX2 development
    CPU of docs/training.md. Nothing is changed; the caller keeps what it asked for.
    """
    if device.type == "cpu" and not cpu_has_bf16():
        warnings.warn(f"{what}: bf16 autocast on this CPU is emulated (it has no AVX-512 bf16 or AMX units), "
                      "which makes it many times slower than float32; use float32 on this machine",
                      RuntimeWarning, stacklevel=3)
