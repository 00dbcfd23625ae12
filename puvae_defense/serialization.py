"""Weights on disk: ``config.json`` beside ``model.safetensors``, never pickle.

The same layout serves a local folder, the Hugging Face Hub and the bundled copies under
``hub/<name>/`` of a source checkout. ``config.json`` records which kind of model the
folder holds (``model_type``), its constructor config and the dtype the weights were
stored in; loading checks every key, shape and value before touching the module.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from typing_extensions import Self

from ._files import CONFIG_NAME, WEIGHTS_NAME, sha256_of

__all__ = [
    "CONFIG_NAME",
    "PretrainedMixin",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "check_weights_header",
    "load_state_dict_into",
    "read_config",
    "read_metadata",
    "save_folder",
    "sha256_of",
    "weights_fingerprint",
]

FORMAT_VERSION = 1
LIBRARY_NAME = "puvae-defense"


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's parameter and buffer names and float32 values (dtype- and device-independent)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_folder(
    module: nn.Module,
    directory: str | os.PathLike[str],
    *,
    model_type: str,
    config: Mapping[str, Any],
    dtype: torch.dtype | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``module`` into ``directory``.

    Args:
        module: the model; its persistent ``state_dict`` is saved.
        directory: created if needed; existing files of the same names are replaced.
        model_type: what the folder holds (``"puvae"`` or ``"classifier"``).
        config: the constructor config, JSON-serialisable.
        dtype: store floating tensors in this dtype (e.g. ``torch.float16``); default as is.
        extra: more JSON fields for ``config.json`` (e.g. training metadata).

    Returns:
        The directory as a :class:`~pathlib.Path`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous()
    stored = {str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()}
    payload: dict[str, Any] = {
        "library": LIBRARY_NAME,
        "format_version": FORMAT_VERSION,
        "model_type": model_type,
        "torch_dtype": ",".join(sorted(stored)),
        "config": dict(config),
    }
    if extra:
        payload.update(extra)
    # One metadata key: safetensors writes its metadata map in hash order, and a single key keeps
    # the file bytes (and so the registry's sha256) the same every time the same weights are saved.
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    _default_mode(directory / WEIGHTS_NAME)  # safetensors creates its file 0600
    (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return directory


def _default_mode(path: Path) -> None:
    """Give a file the mode a new file gets under the process's umask (usually 0644)."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def read_config(directory: str | os.PathLike[str], *, model_type: str) -> dict[str, Any]:
    """Read and check ``config.json`` of a weights folder; returns its ``config`` field.

    Raises:
        FileNotFoundError: the folder or its ``config.json`` is missing.
        ValueError: the file is not valid JSON, not ours, or holds another model type.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in {Path(directory)}: a weights folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(write one with save_pretrained)"
        )
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt {path}: not valid JSON ({err}); re-download or re-save the weights") from None
    except RecursionError:
        raise ValueError(f"corrupt {path}: JSON nested too deeply to be a config; re-download or re-save the weights") from None
    if not isinstance(payload, dict) or "config" not in payload or "model_type" not in payload:
        raise ValueError(f"{path} is not a {LIBRARY_NAME} config (needs a JSON object with 'model_type' and 'config' fields, "
                         f"got {type(payload).__name__})")
    if not isinstance(payload["config"], dict):
        raise ValueError(f"{path}: field 'config' must be a JSON object, got {type(payload['config']).__name__}")
    if payload["model_type"] != model_type:
        raise ValueError(f"{path} holds a {payload['model_type']!r} model, not a {model_type!r}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {payload.get('format_version')!r}; this version of "
            f"{LIBRARY_NAME} reads format_version {FORMAT_VERSION}"
        )
    return payload["config"]


def read_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``metadata`` that :meth:`PretrainedMixin.save_pretrained` stored in a folder's
    ``config.json``; empty when the folder, its config or its metadata is absent."""
    path = Path(directory) / CONFIG_NAME
    return json.loads(path.read_text()).get("metadata", {}) if path.is_file() else {}


def write_metadata(directory: str | os.PathLike[str], metadata: Mapping[str, Any]) -> None:
    """Replace the ``metadata`` in a saved folder's ``config.json``, keeping the rest of the file.

    Raises:
        FileNotFoundError: the folder has no ``config.json`` (save the model first).
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: save the model before writing its metadata")
    payload = json.loads(path.read_text())
    payload["metadata"] = dict(metadata)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


#: dtypes a weights file may store floating tensors in (safetensors header names).
_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
_HEADER_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
                  torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                  torch.bool: "BOOL"}


def check_weights_header(expected: Mapping[str, torch.Tensor], weights_path: str | os.PathLike[str]) -> None:
    """Check a safetensors file's header (names, shapes, dtypes) against a model's ``state_dict``,
    reading the header only: nothing of the file's size is allocated before it passes.

    ``expected`` may live on the meta device. Floating tensors must be stored as float16,
    bfloat16 or float32; other tensors in their own dtype.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: corrupt header, other keys, shapes or dtypes.
    """
    from safetensors import safe_open

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {key: (tuple(handle.get_slice(key).get_shape()), handle.get_slice(key).get_dtype())
                      for key in handle.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"corrupt weights file {path}: {err}; re-download or re-save the weights") from None
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights file {path} does not match the model: missing keys {missing}, unexpected keys "
            f"{unexpected}; check that config.json belongs to these weights"
        )
    wrong_shapes = sorted(f"{key}: file {header[key][0]} vs model {tuple(value.shape)}"
                          for key, value in expected.items() if header[key][0] != tuple(value.shape))
    if wrong_shapes:
        raise ValueError(f"weights file {path} has shapes that do not match the model (check that config.json belongs "
                         f"to these weights): {wrong_shapes}")
    wrong_dtypes = sorted(
        f"{key}: {header[key][1]}" for key, value in expected.items()
        if (header[key][1] not in _FLOAT_DTYPES if value.is_floating_point() else header[key][1] != _HEADER_DTYPES.get(value.dtype))
    )
    if wrong_dtypes:
        raise ValueError(f"weights file {path} stores tensors in dtypes this model cannot take (floating weights must be "
                         f"F16, BF16 or F32): {wrong_dtypes}")


def load_state_dict_into(module: nn.Module, weights_path: str | os.PathLike[str]) -> nn.Module:
    """Load a safetensors file into ``module`` with strict key, shape and value checks.

    Values are cast to the module's dtypes (exact for float16 -> float32).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is corrupt, keys or shapes differ from the module's, or it
            holds NaN/Inf values. The module is left untouched in every case.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"corrupt weights file {path}: {err}; re-download or re-save the weights") from err
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights file {path} does not match the model: missing keys {missing}, unexpected keys "
            f"{unexpected}; check that config.json belongs to these weights"
        )
    wrong_shapes = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if state[key].shape != value.shape
    ]
    if wrong_shapes:
        raise ValueError(f"weights file {path} has shapes that do not match the model: {sorted(wrong_shapes)}")
    bad = sorted(k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise ValueError(f"weights file {path} holds NaN or Inf values in {bad}; the file is damaged")
    module.load_state_dict(state, strict=True)
    return module


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for a module built from a JSON config.

    A subclass sets :attr:`model_type` and implements :meth:`_config_dict` and
    :meth:`_from_config_dict`.
    """

    #: What a weights folder of this class holds (``"puvae"`` or ``"classifier"``).
    model_type: ClassVar[str]

    def _config_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_config_dict(cls, raw: dict[str, Any]) -> Self:
        raise NotImplementedError

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        dtype: torch.dtype | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` (no pickle) and a model card ``README.md`` into ``directory``.

        Files get the usual mode (0644 under the usual umask).

        Args:
            directory: target folder, created if needed.
            dtype: store the weights in this dtype (``torch.float16`` halves the file; float32 by default).
            metadata: JSON-ready facts (``name``, ``dataset``, ``description``, ``metrics``, ``training``)
                stored in ``config.json`` and shown in the card, on top of what the model records itself.
        """
        from .hub import is_registered_name
        from .model_card import model_card

        metadata = {**self._default_metadata(), **(metadata or {})}
        extra = {"metadata": metadata} if metadata else None
        assert isinstance(self, nn.Module)
        folder = save_folder(self, directory, model_type=self.model_type, config=self._config_dict(), dtype=dtype, extra=extra)
        training = metadata.get("training", {})
        name = str(metadata.get("name", folder.resolve().name))
        # The card loads the model by its registered name only when the caller gave that name (a
        # bundled model); a folder that merely shares a registered name would load the wrong weights.
        registered = "name" in metadata and is_registered_name(name)
        (folder / "README.md").write_text(model_card(
            name=name, model_type=self.model_type, load_as=None if registered else str(directory),
            dataset=str(metadata.get("dataset", "unknown")),
            description=str(metadata.get("description", f"A {self.model_type} model saved with puvae-defense.")),
            metrics={k: float(v) for k, v in metadata.get("metrics", {}).items() if isinstance(v, (int, float))},
            training={k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in training.items()}))
        return folder

    def _default_metadata(self) -> dict[str, Any]:
        """Facts a subclass records with its weights when the caller gives none (PuVAE: how it was trained)."""
        return {}

    @classmethod
    def _build_checked(cls, config: dict[str, Any], path: Path) -> nn.Module:
        """The module for a ``config`` read from ``path``; a malformed config is a ``ValueError`` naming the file."""
        try:
            model = cls._from_config_dict(config)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: invalid 'config' for a {cls.model_type} model: {err}") from None
        assert isinstance(model, nn.Module)
        return model

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Self:
        """Load from a folder written by :meth:`save_pretrained` (or its ``model.safetensors``),
        a registered name (see :func:`puvae_defense.hub.list_models`) or a Hub repo id.

        Args:
            name_or_path: where the weights are; see :func:`puvae_defense.hub.resolve_folder`.
            revision: Hub revision for a repo id (registered names are pinned).
            dtype: dtype of the returned parameters.
            device: device of the returned module.

        Returns:
            The model in eval mode.
        """
        from .hub import resolve_folder

        folder = resolve_folder(name_or_path, model_type=cls.model_type, revision=revision)  # type: ignore[arg-type]
        config = read_config(folder, model_type=cls.model_type)
        # Built first on the meta device (no memory) and checked against the file's header, so a
        # config that asks for terabytes fails before anything of its size is allocated.
        with torch.device("meta"):
            skeleton = cls._build_checked(config, folder / CONFIG_NAME)
        check_weights_header(skeleton.state_dict(), folder / WEIGHTS_NAME)
        model = cls._build_checked(config, folder / CONFIG_NAME)
        load_state_dict_into(model, folder / WEIGHTS_NAME)
        return model.to(device=device, dtype=dtype).eval()  # type: ignore[return-value]
