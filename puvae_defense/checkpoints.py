"""Training checkpoints: safetensors files holding modules, optimizers, the RNG state and metadata.

One file per checkpoint, written atomically (temporary file, then ``os.replace``), the last
:data:`KEEP` kept. Tensors are stored as ``{module}.{parameter}`` and
``{optimizer}.{index}.{state}``; an optimizer's non-tensor state and parameter groups go
into the metadata as JSON, next to the caller's own string metadata. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["FORMAT", "KEEP", "PREFIX", "checkpoints", "load_checkpoint", "read_metadata", "save_checkpoint"]

#: The layout written by :func:`save_checkpoint`.
FORMAT = "puvae-defense-checkpoint-2"
#: File name prefix; the index follows, zero-padded so that names sort in order.
PREFIX = "checkpoint-"
#: Checkpoints kept per directory.
KEEP = 2


def checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in ``directory``, oldest first."""
    return sorted(Path(directory).glob(f"{PREFIX}*.safetensors"))


def save_checkpoint(
    directory: Path,
    index: int,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    metadata: Mapping[str, str],
) -> Path:
    """Write ``modules``, ``optimizers``, the RNG state and ``metadata`` as checkpoint ``index``."""
    names = [*modules, *optimizers]
    if len(set(names)) != len(names) or "rng" in names or any("." in n for n in names):
        raise ValueError(f"module and optimizer names must be distinct, without dots and not 'rng', got {names}")
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"format": FORMAT, **metadata}
    for name, module in modules.items():
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for slot, values in state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}.{slot}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(slot), {})[key] = value
        meta[f"{name}.param_groups"] = json.dumps(state["param_groups"])
        meta[f"{name}.scalars"] = json.dumps(scalars)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{PREFIX}{index:06d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    for old in checkpoints(directory)[:-KEEP]:
        old.unlink()
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """A checkpoint's metadata; a file of another layout is an error that says so."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format {metadata.get('format')!r}; written by another "
                         "version?): use another checkpoint directory")
    return metadata


def load_checkpoint(
    path: Path, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> dict[str, str]:
    """Restore ``modules``, ``optimizers`` and the RNG state in place; returns the metadata."""
    metadata = read_metadata(path)
    tensors = load_file(str(path))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)},
                               strict=True)
    for name, optimizer in optimizers.items():
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(f"{name}."):
                _, slot, item = key.split(".", 2)
                state.setdefault(int(slot), {})[item] = value
        for slot, values in json.loads(metadata[f"{name}.scalars"]).items():
            state.setdefault(int(slot), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata[f"{name}.param_groups"])})
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    return metadata
