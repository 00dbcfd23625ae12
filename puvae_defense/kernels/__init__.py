"""Closest-candidate selection with backend dispatch.

``backend="auto"`` uses the fused Triton kernel for CUDA tensors when Triton imports and
no gradient is needed, and the pure-torch reference otherwise (the CPU default and the
oracle in tests); the environment variable ``PUVAE_DEFENSE_KERNEL=torch`` makes "auto"
always pick the reference. Triton is never imported at package import time.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch

from .reference import Selection, rmse, select_closest_reference

__all__ = ["Backend", "Selection", "rmse", "select_closest", "select_closest_reference", "triton_available"]

Backend = Literal["auto", "torch", "triton"]
#: Set to ``"torch"`` to make ``backend="auto"`` use the reference everywhere.
KERNEL_ENV = "PUVAE_DEFENSE_KERNEL"
_BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def _check(inputs: torch.Tensor, candidates: torch.Tensor) -> None:
    for name, tensor in (("inputs", inputs), ("candidates", candidates)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {tensor.dtype}")
    if inputs.dim() != 2 or candidates.dim() != 3:
        raise ValueError(
            "expected inputs of shape (B, D) and candidates of shape (B, C, D), got "
            f"{tuple(inputs.shape)} and {tuple(candidates.shape)}"
        )
    if candidates.shape[0] != inputs.shape[0] or candidates.shape[2] != inputs.shape[1]:
        raise ValueError(
            f"candidates {tuple(candidates.shape)} do not match inputs {tuple(inputs.shape)}: "
            "expected (B, C, D) for inputs (B, D)"
        )
    if candidates.shape[1] == 0 or inputs.shape[1] == 0:
        raise ValueError(f"need at least one candidate and one feature, got {tuple(candidates.shape)}")
    if inputs.device != candidates.device or inputs.dtype != candidates.dtype:
        raise ValueError(
            "inputs and candidates must share device and dtype, got "
            f"{inputs.device}/{inputs.dtype} and {candidates.device}/{candidates.dtype}"
        )


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def select_closest(
    inputs: torch.Tensor, candidates: torch.Tensor, *, backend: Backend = "auto"
) -> Selection:
    """For each row, the candidate with the smallest RMSE to the input.

    Args:
        inputs: ``(B, D)`` floating tensor.
        candidates: ``(B, C, D)`` floating tensor, same device and dtype.
        backend: ``"auto"`` (Triton for CUDA tensors when available and no gradient is
            needed, torch otherwise), ``"torch"`` or ``"triton"`` (CUDA tensors, or any
            device under ``TRITON_INTERPRET=1``; no autograd).

    Returns:
        :class:`Selection` with ``selected (B, D)``, ``indices (B,)`` (lowest index on
        ties) and float32 ``distances (B, C)``.

    Example:
        >>> x = torch.rand(4, 784); cands = torch.rand(4, 10, 784)
        >>> sel = select_closest(x, cands)
        >>> sel.indices.shape, sel.distances.shape
        (torch.Size([4]), torch.Size([4, 10]))
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    _check(inputs, candidates)
    if backend == "auto":
        use_triton = (
            candidates.is_cuda
            and triton_available()
            and not _needs_grad(inputs, candidates)
            and os.environ.get(KERNEL_ENV, "auto") != "torch"
        )
        backend = "triton" if use_triton else "torch"
    if backend == "torch":
        return select_closest_reference(inputs, candidates)
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package: pip install triton")
    if not candidates.is_cuda and not _interpreting():
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got device {candidates.device}); set "
            "TRITON_INTERPRET=1 to run the kernel on the CPU interpreter, or use backend='torch'"
        )
    if _needs_grad(inputs, candidates):
        raise ValueError(
            "backend='triton' does not support autograd; use backend='torch' (or 'auto') "
            "when gradients must flow through the selection"
        )
    from .triton_select import select_closest_triton

    return select_closest_triton(inputs, candidates)
