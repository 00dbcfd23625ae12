"""Fused distance / argmin / gather Triton kernel for closest-candidate selection.

One program handles one input row: it streams the ``C`` candidates of that row through
registers in ``BLOCK_D``-wide slices, accumulates squared differences in float32, turns
them into RMSEs, takes the argmin (lowest index on ties, as ``torch.argmin``) and copies
the winning candidate to the output. Inputs are read once, candidates once, the winner
twice. Semantics are those of :func:`puvae_defense.kernels.reference.select_closest_reference`.

Triton is imported only when this module is imported, which happens on first use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import Selection

__all__ = ["select_closest_triton"]


@triton.jit
def _select_closest_kernel(
    x_ptr,  # (B, D) inputs
    cand_ptr,  # (B, C, D) candidates
    out_ptr,  # (B, D) selected candidate
    idx_ptr,  # (B,) int64 winning index
    dist_ptr,  # (B, C) float32 distances
    C,
    D,
    stride_xb,
    stride_cb,
    stride_cc,
    stride_ob,
    stride_db,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    classes = tl.arange(0, BLOCK_C)
    class_mask = classes < C
    offsets = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, D, BLOCK_D):
        cols = start + offsets
        col_mask = cols < D
        x = tl.load(x_ptr + row * stride_xb + cols, mask=col_mask, other=0.0).to(tl.float32)
        tile_ptr = cand_ptr + row * stride_cb + classes[:, None] * stride_cc + cols[None, :]
        tile_mask = class_mask[:, None] & col_mask[None, :]
        cand = tl.load(tile_ptr, mask=tile_mask, other=0.0).to(tl.float32)
        diff = tl.where(tile_mask, cand - x[None, :], 0.0)
        acc += tl.sum(diff * diff, axis=1)
    dist = tl.sqrt(acc / D)
    tl.store(dist_ptr + row * stride_db + classes, dist, mask=class_mask)
    dist = tl.where(class_mask, dist, float("inf"))
    best = tl.min(dist, axis=0)
    winner = tl.min(tl.where(dist == best, classes, BLOCK_C), axis=0)
    tl.store(idx_ptr + row, winner.to(tl.int64))
    for start in range(0, D, BLOCK_D):
        cols = start + offsets
        col_mask = cols < D
        src = tl.load(cand_ptr + row * stride_cb + winner * stride_cc + cols, mask=col_mask)
        tl.store(out_ptr + row * stride_ob + cols, src, mask=col_mask)


def _block_d(block_c: int) -> int:
    # Keep a candidate tile at about 8K elements so it stays in registers.
    return max(16, min(1024, 8192 // block_c))


def select_closest_triton(inputs: torch.Tensor, candidates: torch.Tensor) -> Selection:
    """Triton implementation of closest-candidate selection (no autograd).

    Args:
        inputs: ``(B, D)`` float16/bfloat16/float32 tensor, last dimension contiguous.
        candidates: ``(B, C, D)`` tensor of the same dtype and device, last dimension
            contiguous.

    Returns:
        A :class:`~puvae_defense.kernels.reference.Selection`.
    """
    inputs = inputs if inputs.stride(-1) == 1 else inputs.contiguous()
    candidates = candidates if candidates.stride(-1) == 1 else candidates.contiguous()
    batch, num_candidates, dim = candidates.shape
    selected = torch.empty((batch, dim), dtype=candidates.dtype, device=candidates.device)
    indices = torch.empty((batch,), dtype=torch.int64, device=candidates.device)
    distances = torch.empty((batch, num_candidates), dtype=torch.float32, device=candidates.device)
    if batch == 0:
        return Selection(selected, indices, distances)
    block_c = triton.next_power_of_2(num_candidates)
    _select_closest_kernel[(batch,)](
        inputs,
        candidates,
        selected,
        indices,
        distances,
        num_candidates,
        dim,
        inputs.stride(0),
        candidates.stride(0),
        candidates.stride(1),
        selected.stride(0),
        distances.stride(0),
        BLOCK_C=block_c,
        BLOCK_D=_block_d(block_c),
    )
    return Selection(selected, indices, distances)
