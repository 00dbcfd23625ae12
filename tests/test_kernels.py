"""The fused Triton selection kernel against its torch reference (CPU interpreter or CUDA)."""

from __future__ import annotations

import os

import pytest
import torch

from puvae_defense.kernels import select_closest, select_closest_reference, triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not triton_available() or (DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="needs triton (and TRITON_INTERPRET=1 without a GPU)",
)


def _random_case(batch: int, classes: int, dim: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.rand(batch, dim, generator=gen)
    candidates = torch.rand(batch, classes, dim, generator=gen)
    return inputs.to(DEVICE, dtype), candidates.to(DEVICE, dtype)


@needs_triton
@pytest.mark.parametrize("dim", [784, 3072])
@pytest.mark.parametrize("batch", [1, 7, 33])
@pytest.mark.parametrize("classes", [2, 10, 100])
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-6), (torch.float16, 1e-5)])
def test_triton_matches_reference(dim, batch, classes, dtype, atol) -> None:
    inputs, candidates = _random_case(batch, classes, dim, dtype, seed=dim + batch + classes)
    ref = select_closest_reference(inputs, candidates)
    out = select_closest(inputs, candidates, backend="triton")
    # Distances are accumulated in float32 by both; only the summation order differs.
    torch.testing.assert_close(out.distances, ref.distances, atol=atol, rtol=1e-5)
    assert out.distances.dtype == torch.float32
    assert torch.equal(out.indices, ref.indices)
    assert out.selected.dtype == dtype
    assert torch.equal(out.selected, ref.selected)  # a copy of the winner, bit for bit


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_ties_go_to_the_lowest_index(backend) -> None:
    inputs, candidates = _random_case(5, 10, 784, torch.float32, seed=3)
    candidates[:, 7] = candidates[:, 3]  # classes 3 and 7 identical ...
    candidates[:, 3] = inputs * 0.999 + 0.0005  # ... and both closest after this line
    candidates[:, 7] = candidates[:, 3]
    out = select_closest(inputs, candidates, backend=backend)
    assert out.indices.tolist() == [3] * 5


@needs_triton
def test_triton_empty_batch_and_strided_inputs() -> None:
    inputs, candidates = _random_case(0, 10, 784, torch.float32, seed=0)
    out = select_closest(inputs, candidates, backend="triton")
    assert out.selected.shape == (0, 784) and out.distances.shape == (0, 10)
    wide = torch.rand(4, 1000, device=DEVICE)[:, :784]  # non-contiguous rows
    cands = torch.rand(4, 10, 784, device=DEVICE)
    torch.testing.assert_close(
        select_closest(wide, cands, backend="triton").distances, select_closest_reference(wide, cands).distances
    )


def test_reference_semantics() -> None:
    inputs = torch.zeros(2, 4)
    candidates = torch.tensor([[[1.0, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]], [[0, 0, 0, 2.0], [3.0, 0, 0, 0]]])
    out = select_closest_reference(inputs, candidates)
    torch.testing.assert_close(out.distances, torch.tensor([[1.0, 0.5], [1.0, 1.5]]))
    assert out.indices.tolist() == [1, 0]
    assert torch.equal(out.selected, candidates[[0, 1], [1, 0]])


def test_auto_uses_reference_for_cpu_and_for_gradients() -> None:
    inputs = torch.rand(3, 16, requires_grad=True)
    candidates = torch.rand(3, 4, 16, requires_grad=True)
    out = select_closest(inputs, candidates)
    out.selected.sum().backward()
    grad = candidates.grad
    assert grad is not None
    chosen = torch.zeros(3, 4, dtype=torch.bool)
    chosen[torch.arange(3), out.indices] = True
    assert torch.all(grad[chosen] == 1) and torch.all(grad[~chosen] == 0)


def test_triton_refuses_autograd() -> None:
    if not triton_available():
        pytest.skip("needs triton")
    # On a CUDA machine the CPU interpreter is off, so the tensors must be where the kernel runs
    # (else the device check answers first).
    inputs = torch.rand(2, 8, device=DEVICE, requires_grad=True)
    with pytest.raises(ValueError, match="autograd"):
        select_closest(inputs, torch.rand(2, 3, 8, device=DEVICE), backend="triton")


def test_triton_on_cpu_without_interpreter(monkeypatch) -> None:
    if not triton_available():
        pytest.skip("needs triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        select_closest(torch.rand(2, 8), torch.rand(2, 3, 8), backend="triton")


@pytest.mark.parametrize(
    ("inputs", "candidates", "error", "message"),
    [
        (torch.rand(2, 8), torch.rand(2, 8), ValueError, r"\(B, C, D\)"),
        (torch.rand(2, 8), torch.rand(3, 4, 8), ValueError, "do not match"),
        (torch.rand(2, 8), torch.rand(2, 4, 7), ValueError, "do not match"),
        (torch.rand(2, 8), torch.rand(2, 4, 8).double(), ValueError, "dtype"),
        (torch.ones(2, 8, dtype=torch.long), torch.rand(2, 4, 8), TypeError, "floating"),
        ([0.0], torch.rand(2, 4, 8), TypeError, "torch.Tensor"),
        (torch.rand(2, 8), torch.rand(2, 0, 8), ValueError, "at least one candidate"),
    ],
)
def test_bad_arguments(inputs, candidates, error, message) -> None:
    with pytest.raises(error, match=message):
        select_closest(inputs, candidates)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        select_closest(torch.rand(2, 8), torch.rand(2, 3, 8), backend="cuda")  # type: ignore[arg-type]
