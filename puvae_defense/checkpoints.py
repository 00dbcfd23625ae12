"""Training checkpoints: safetensors files holding modules, optimizers, the RNG state and metadata.

One file per checkpoint, written atomically (temporary file, flushed to disk with ``fsync``,
then ``os.replace`` and an ``fsync`` of the folder), the last :data:`KEEP` kept; a temporary
file left by a killed run is removed by the next write. :func:`resume` restores the newest
intact checkpoint and names any damaged newer one in a warning. Tensors are stored as ``{module}.{parameter}`` and
``{optimizer}.{index}.{state}``; an optimizer's non-tensor state and parameter groups go
into the metadata as JSON, next to the caller's own string metadata. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["FORMAT", "KEEP", "PREFIX", "DamagedCheckpointError", "checkpoints", "load_checkpoint", "read_metadata",
           "resume", "save_checkpoint"]

T = TypeVar("T")


class DamagedCheckpointError(ValueError):
    """A checkpoint file cannot be read (truncated or corrupt); nothing was restored from it."""

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
    for stale in directory.glob(f"{PREFIX}*.tmp"):  # left by a run killed while writing
        stale.unlink()
    path = directory / f"{PREFIX}{index:06d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(directory)
    for old in checkpoints(directory)[:-KEEP]:
        old.unlink()
    return path


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metadata(path: Path) -> dict[str, str]:
    """A checkpoint's metadata; a file of another layout is an error that says so.

    Raises:
        DamagedCheckpointError: the file cannot be read as safetensors.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise DamagedCheckpointError(f"checkpoint {path} is damaged ({err})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format {metadata.get('format')!r}; written by another "
                         "version?): use another checkpoint directory")
    return metadata


def load_checkpoint(
    path: Path, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> dict[str, str]:
    """Restore ``modules``, ``optimizers`` and the RNG state in place; returns the metadata."""
    metadata = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise DamagedCheckpointError(f"checkpoint {path} is damaged ({err})") from None
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


def resume(directory: Path, restore: Callable[[Path], T]) -> T | None:
    """``restore(path)`` of the newest checkpoint that reads, ``None`` when there is none.

    A newer checkpoint that raises :class:`DamagedCheckpointError` is passed over with a
    ``RuntimeWarning`` naming it (the file is kept, for inspection). Any other error of
    ``restore`` (other settings, say) propagates. When every checkpoint is damaged, that is an error.
    """
    found = checkpoints(directory)
    damaged: list[str] = []
    for path in reversed(found):
        try:
            result = restore(path)
        except DamagedCheckpointError as err:
            damaged.append(str(err))
            continue
        if damaged:
            warnings.warn(f"{'; '.join(damaged)}; resumed from the older {path.name}", RuntimeWarning, stacklevel=2)
        return result
    if damaged:
        raise DamagedCheckpointError(f"no checkpoint in {directory} can be read: {'; '.join(damaged)}; delete them to "
                                     "start again")
    return None
