"""Pure-torch closest-candidate selection: the specification of the fused kernel.

Given inputs ``x`` of shape ``(B, D)`` and candidates of shape ``(B, C, D)``, compute the
root mean square error between each input and each of its candidates, pick the
candidate with the smallest error (eq. 15-16 of the PuVAE paper; ties go to the lowest
class index) and return it. This path is differentiable: gradients reach the chosen
candidate (and the input, through the distances).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Selection", "select_closest_reference"]


class Selection(NamedTuple):
    """Result of a closest-candidate selection.

    Attributes:
        selected: ``(B, D)`` the winning candidate of each row, in the candidates' dtype.
        indices: ``(B,)`` int64 index of the winning candidate (lowest index on ties).
        distances: ``(B, C)`` float32 RMSE between each input and each candidate.
    """

    selected: torch.Tensor
    indices: torch.Tensor
    distances: torch.Tensor


def rmse(inputs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """RMSE ``(B, C)`` between ``inputs (B, D)`` and ``candidates (B, C, D)``, in float32."""
    diff = candidates.float() - inputs.float().unsqueeze(1)
    return diff.square().mean(dim=-1).sqrt()


def select_closest_reference(inputs: torch.Tensor, candidates: torch.Tensor) -> Selection:
    """Pick, for every row, the candidate closest to the input in RMSE.

    Args:
        inputs: ``(B, D)`` floating tensor.
        candidates: ``(B, C, D)`` floating tensor on the same device.

    Returns:
        A :class:`Selection`; ``torch.argmin`` returns the first minimum, so ties go to
        the lowest candidate index.
    """
    distances = rmse(inputs, candidates)
    indices = distances.argmin(dim=1)
    rows = torch.arange(candidates.shape[0], device=candidates.device)
    return Selection(candidates[rows, indices], indices, distances)
