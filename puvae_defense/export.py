"""ONNX export of a purifier or a whole ``PurifiedClassifier``, and a checked onnxruntime runner.

The exported graph is the deterministic projection (``sigma_eps = 0``: decode ``mu``), with a
dynamic batch dimension. ONNX graphs cannot raise, so :class:`OnnxModel` checks inputs (shape,
dtype, finite values in [0, 1]) before running them, with the same errors as the torch modules.

Needs the optional extra ``deploy`` (``onnx``, ``onnxscript``, ``onnxruntime``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._checks import check_images
from .classifier import PurifiedClassifier
from .model import PuVAE

if TYPE_CHECKING:
    import numpy as np

__all__ = ["OnnxModel", "compare_onnx", "export_onnx"]

_EXTRA_HINT = 'install the optional extra: pip install "puvae-defense[deploy]"'


class _DeterministicProjection(nn.Module):
    """``images -> (purified, labels, distances)`` of :meth:`PuVAE.project` with ``sigma_eps = 0``."""

    def __init__(self, purifier: PuVAE) -> None:
        super().__init__()
        self.purifier = purifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.purifier.project(images, 0.0, backend="torch")
        return out.purified, out.labels, out.distances


def export_onnx(
    model: PurifiedClassifier | PuVAE,
    path: str | os.PathLike[str],
    *,
    example_batch: int = 8,
    opset_version: int | None = None,
) -> Path:
    """Write ``model`` as an ONNX file with a dynamic batch dimension.

    Args:
        model: a :class:`PurifiedClassifier` built with ``sigma_eps=0`` (the graph's output is
            its logits), or a :class:`PuVAE` (outputs ``purified``, ``labels``, ``distances`` of
            the deterministic projection). Exported from a float32 CPU copy; ``model`` is not changed.
        path: the ``.onnx`` file to write (parent folders are created).
        example_batch: batch size of the example used for tracing (any size works at run time).
        opset_version: ONNX opset (default: the exporter's).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a ``PurifiedClassifier`` with ``sigma_eps > 0`` (sampled projections have no
            ONNX equivalent that reproduces torch's random numbers).
        TypeError: ``model`` is neither.
        ImportError: the ``deploy`` extra is not installed.
    """
    if isinstance(model, PurifiedClassifier):
        if model.sigma_eps != 0:
            raise ValueError(
                f"this PurifiedClassifier samples its projections (sigma_eps={model.sigma_eps}); ONNX export needs the "
                "deterministic projection: build it with sigma_eps=0"
            )
        module: nn.Module = copy.deepcopy(model)
        purifier = module.purifier  # type: ignore[assignment]
        output_names = ["logits"]
    elif isinstance(model, PuVAE):
        purifier = copy.deepcopy(model)
        module = _DeterministicProjection(purifier)
        output_names = ["purified", "labels", "distances"]
    else:
        raise TypeError(f"model must be a PurifiedClassifier or a PuVAE, got {type(model).__name__}")
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail early with the extra's name)
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx and onnxscript: {_EXTRA_HINT}") from err
    if not isinstance(example_batch, int) or example_batch < 2:
        raise ValueError(f"example_batch must be an integer >= 2, got {example_batch!r}")
    module = module.to("cpu", torch.float32).eval()
    example = torch.rand(example_batch, *purifier.config.image_shape, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamic_shapes={"images": {0: batch}}, input_names=["images"],
            output_names=output_names, opset_version=opset_version, verbose=False,
        )
    program.save(str(path))
    return path


class OnnxModel:
    """An exported model run by onnxruntime, with the torch modules' input checks.

    Args:
        path: a file written by :func:`export_onnx`.
        providers: onnxruntime execution providers (default: CPU).

    Example:
        >>> runner = OnnxModel("puvae-mnist-a.onnx")                # doctest: +SKIP
        >>> logits = runner(images)                                # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise ImportError(f"running an ONNX model needs onnxruntime: {_EXTRA_HINT}") from err
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such ONNX file: {path}")
        self.session = onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.image_shape = tuple(int(d) for d in spec.shape[1:])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run a ``(B, C, H, W)`` batch of floats in [0, 1]; one array, or one per output of a PuVAE graph."""
        if isinstance(images, torch.Tensor):
            tensor = images
        elif type(images).__module__ == "numpy":
            tensor = torch.from_numpy(images)  # type: ignore[arg-type]
        else:
            raise TypeError(f"images must be a torch.Tensor or a numpy array (B, C, H, W), got {type(images).__name__}")
        check_images(tensor, self.image_shape)  # type: ignore[arg-type]
        outputs = self.session.run(None, {self.input_name: tensor.detach().float().cpu().numpy()})
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def compare_onnx(model: PurifiedClassifier | PuVAE, runner: OnnxModel, images: torch.Tensor, *, batch_size: int = 500) -> dict[str, float]:
    """How closely an exported model follows the torch one on ``images``.

    Returns:
        ``images``, ``decision_agreement`` (percent of images where both pick the same class:
        the logits' argmax, or the projection's label for a PuVAE) and ``max_abs_diff`` of the
        first output (logits, or purified images).
    """
    agree, worst, total = 0, 0.0, 0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        with torch.no_grad():
            if isinstance(model, PuVAE):
                out = model.project(batch, 0.0)
                reference, decisions = out.purified, out.labels
            else:
                reference = model(batch)
                decisions = reference.argmax(1)
        outputs = runner(batch)
        first = torch.from_numpy(outputs[0] if isinstance(outputs, tuple) else outputs)
        theirs = torch.from_numpy(outputs[1]) if isinstance(outputs, tuple) else first.argmax(1)
        agree += int((theirs == decisions.cpu()).sum())
        worst = max(worst, float((first - reference.float().cpu()).abs().max()))
        total += len(batch)
    return {"images": total, "decision_agreement": 100.0 * agree / max(total, 1), "max_abs_diff": worst}
