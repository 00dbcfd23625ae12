"""Pretrained weights by name: the registry, resolution, verification and publishing.

A registered name such as ``"puvae-mnist"`` always resolves through the registry, in this order:

1. the Hugging Face cache (works with ``HF_HUB_OFFLINE=1`` once downloaded);
2. a download through ``huggingface_hub`` at the registry's pinned revision (honouring
   ``HF_ENDPOINT``, ``HF_HOME``, tokens and proxies as ``huggingface_hub`` does);
3. when the Hub cannot be reached, the copy bundled in a source checkout under
   ``hub/<name>/``, with a warning naming the copy.

Wherever it comes from, the weights file's sha256 and the network that ``config.json``
describes (its ``model_type`` and ``config``) are checked against the registry before anything
is loaded. A local folder is used only when the caller gives a path (``./puvae-mnist``, an
absolute path, or a name that is not registered), and is then loaded as it is, unverified: a
folder in the working directory never shadows a registered name. Repositories live under one
organisation, :data:`ORGANIZATION`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from .model_card import format_metric
from ._files import CONFIG_NAME, WEIGHTS_NAME, sha256_of

__all__ = [
    "ORGANIZATION",
    "ConfigMismatchError",
    "HubUnreachableError",
    "PretrainedEntry",
    "WeightsHashError",
    "get_entry",
    "is_registered_name",
    "list_models",
    "push_to_hub",
    "resolve_folder",
    "update_registry",
]

#: The Hugging Face organisation that hosts every registered model.
ORGANIZATION = "puvae-defense"

ModelType = Literal["puvae", "classifier", "magnet", "defense-gan"]
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_REGISTRY_FILE = "registry.json"


class WeightsHashError(ValueError):
    """A weights file's sha256 differs from the pinned one; the file was not loaded."""


class ConfigMismatchError(ValueError):
    """A registered model's ``config.json`` describes another network than the registry pins; nothing was loaded."""


class HubUnreachableError(FileNotFoundError):
    """No copy of registered weights could be found: not cached, Hub unreachable, no bundle."""


@dataclass(frozen=True)
class PretrainedEntry:
    """One named pretrained model.

    Attributes:
        name: registry name, e.g. ``"puvae-mnist"``.
        model_type: ``"puvae"``, ``"classifier"``, ``"magnet"`` (MagNet's reformer) or
            ``"defense-gan"`` (Defense-GAN's generator).
        repo_id: Hub repository, ``ORGANIZATION/name``.
        revision: pinned Hub commit sha; ``None`` until the model is published, in which
            case the sha256 alone pins the file (downloaded from ``main``).
        sha256: hex sha256 of the weights file.
        filename: weights file name in the repository.
        dataset: data set it was trained on.
        config: constructor config (as in ``config.json``).
        metrics: measured metrics, floats (percentages unless the key says otherwise).
        num_params: number of parameters of the model.
        description: one line for listings.
    """

    name: str
    model_type: ModelType
    repo_id: str
    revision: str | None
    sha256: str
    filename: str
    dataset: str
    config: Mapping[str, Any]
    metrics: Mapping[str, float]
    num_params: int
    description: str

    def __post_init__(self) -> None:
        if self.model_type not in get_args(ModelType):
            raise ValueError(f"registry entry {self.name!r}: unknown model_type {self.model_type!r}")
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"registry entry {self.name!r}: sha256 must be 64 lowercase hex digits")
        if self.revision is not None and not _COMMIT.fullmatch(self.revision):
            raise ValueError(f"registry entry {self.name!r}: revision must be a 40-hex commit sha or null")
        if not self.repo_id.startswith(ORGANIZATION + "/"):
            raise ValueError(f"registry entry {self.name!r}: repo_id must live under {ORGANIZATION!r}")
        if any(not isinstance(v, float) for v in self.metrics.values()):
            raise ValueError(f"registry entry {self.name!r}: metrics must be floats")
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` the model takes."""
        return tuple(self.config["image_shape"])  # type: ignore[return-value]

    @property
    def meta(self) -> dict[str, Any]:
        """What the weights are for, as torchvision's ``Weights.meta``: data set, class names
        (``categories``), input shape and value range, measured metrics, size and sha256."""
        return {"dataset": self.dataset, "categories": _categories(self.dataset), "image_shape": self.image_shape,
                "value_range": (0.0, 1.0), "metrics": dict(self.metrics), "num_params": self.num_params,
                "sha256": self.sha256, "model_type": self.model_type}

    def transforms(self) -> Any:
        """The input transform, as torchvision's ``Weights.transforms()``: an image (PIL, or a uint8 or
        float tensor, any size, gray or RGB) to the float tensor in [0, 1] of ``image_shape`` the
        model takes. Put a classifier's own normalization in ``PurifiedClassifier(preprocess=...)``."""
        import torch
        from torchvision.transforms import v2

        channels, height, width = self.image_shape
        color = v2.Grayscale(num_output_channels=1) if channels == 1 else v2.RGB()
        return v2.Compose([v2.ToImage(), color, v2.Resize((height, width), antialias=True),
                           v2.ToDtype(torch.float32, scale=True)])

    @property
    def pinned_by(self) -> str:
        """``"revision"`` once published, ``"sha256"`` before."""
        return "revision" if self.revision else "sha256"


def _categories(dataset: str) -> list[str]:
    """Class names of a registered data set (torchvision's), empty for an unknown one."""
    from torchvision import datasets

    known = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}
    cls = known.get(dataset)
    return list(getattr(cls, "classes", [])) if cls is not None else []


@functools.cache
def _registry() -> Mapping[str, PretrainedEntry]:
    data = json.loads(resources.files(__package__).joinpath(_REGISTRY_FILE).read_text())
    entries: dict[str, PretrainedEntry] = {}
    for raw in data["models"]:
        entry = PretrainedEntry(**raw)
        if entry.name in entries:
            raise ValueError(f"duplicate registry name {entry.name!r}")
        entries[entry.name] = entry
    return MappingProxyType(entries)


#: The class each ``model_type`` of a ``config.json`` loads with, by module and name: a table, so that
#: this module (the loader) sits above the model modules without importing them.
MODEL_CLASSES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "puvae": ("puvae_defense.model", "PuVAE"), "classifier": ("puvae_defense.classifiers", "PaperClassifier"),
    "magnet": ("puvae_defense.baselines.magnet", "MagNetReformer"),
    "defense-gan": ("puvae_defense.baselines.defense_gan", "DefenseGAN"),
})


def model_class(model_type: ModelType) -> type[Any]:
    """The class that loads a ``config.json`` whose ``model_type`` is this (all have
    ``from_pretrained`` and ``_from_config_dict``)."""
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"unknown model_type {model_type!r}; known: {sorted(MODEL_CLASSES)}")
    module, name = MODEL_CLASSES[model_type]
    return getattr(importlib.import_module(module), name)


def list_models(model_type: ModelType | None = None) -> list[str]:
    """Names of the registered pretrained models, sorted, optionally of one type."""
    return sorted(n for n, e in _registry().items() if model_type is None or e.model_type == model_type)


def get_entry(name: str) -> PretrainedEntry:
    """The registry entry for ``name``; an unknown name lists the known ones."""
    registry = _registry()
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown pretrained model {name!r}; known models: {', '.join(list_models()) or 'none'}.{hint} "
            "A local folder path or a Hub repo id ('org/name') also works."
        )
    return registry[name]


def is_registered_name(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether this resolves through the registry: a registered name given as a string. A folder of
    the same name in the working directory does not shadow it; ``Path("puvae-mnist")`` or
    ``"./puvae-mnist"`` names the folder."""
    return isinstance(name_or_path, str) and name_or_path in _registry()


def _bundled_root() -> Path:
    """``hub/`` of a source checkout (absent from installed wheels)."""
    return Path(__file__).resolve().parent.parent / "hub"


def _local_folder(path: Path) -> Path:
    folder = path.parent if path.is_file() else path
    if path.is_file() and path.name != WEIGHTS_NAME:
        raise ValueError(f"{path} is not a {WEIGHTS_NAME}; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    for needed in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder} has no {needed}; a weights folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    return folder


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", "\\")) or text.count("/") > 1 or "\\" in text


def resolve_folder(
    name_or_path: str | Path, *, model_type: ModelType, revision: str | None = None
) -> Path:
    """Find a verified folder holding ``config.json`` and ``model.safetensors``.

    Args:
        name_or_path: registered name (a string; verified), local folder or weights file (a path that
            is not a registered name string: loaded unverified), or Hub repo id.
        model_type: what the caller will load (checks a registered name's type).
        revision: Hub revision for a repo id; registered names are pinned and accept
            only their own revision.

    Returns:
        The folder (in the Hugging Face cache, the caller's path or the bundled copy).

    Raises:
        ValueError: unknown name, wrong model type, or a revision for a pinned name.
        WeightsHashError: the weights file does not match its pinned sha256.
        ConfigMismatchError: its ``config.json`` describes another network than the registry pins.
        HubUnreachableError: a registered model is nowhere to be found.
        FileNotFoundError: a local path that does not exist or lacks files.
    """
    path = Path(name_or_path).expanduser()
    text = str(name_or_path)
    if path.exists() and not is_registered_name(name_or_path):
        return _local_folder(path)
    if is_registered_name(name_or_path):
        entry = get_entry(text)
        if entry.model_type != model_type:
            raise ValueError(f"{text!r} is a {entry.model_type}, not a {model_type}")
        return _resolve_entry(entry, revision)
    if _looks_like_path(text):
        raise FileNotFoundError(f"no such weights folder or file: {path}")
    if _REPO_ID.fullmatch(text):
        return _resolve_repo(text, revision or "main")
    get_entry(text)  # raises the unknown-name error
    raise AssertionError("unreachable")


def _download(repo_id: str, revision: str, filename: str, *, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download

    from ._version import __version__

    common = {"repo_id": repo_id, "revision": revision, "local_files_only": local_only,
              "library_name": "puvae-defense", "library_version": __version__}
    hf_hub_download(filename=CONFIG_NAME, **common)
    return Path(hf_hub_download(filename=filename, **common))


def _verify(path: Path, expected: str, *, source: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsHashError(
            f"sha256 mismatch for {path} ({source}): expected {expected}, got {actual}; the file was not "
            "loaded. Delete it (for the Hugging Face cache: `hf cache rm` or remove the file) and download again."
        )


def _verify_config(folder: Path, entry: PretrainedEntry, *, source: str) -> None:
    """The folder's ``config.json`` must describe the network the registry pins (``model_type`` and ``config``)."""
    path = folder / CONFIG_NAME
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ConfigMismatchError(f"{path} ({source}) cannot be read as JSON ({type(err).__name__}); nothing was loaded. "
                                  "Delete it and download again.") from None
    found = {"model_type": payload.get("model_type"), "config": payload.get("config")} if isinstance(payload, dict) else {}
    pinned = {"model_type": entry.model_type, "config": dict(entry.config)}
    if found != pinned:
        differ = sorted(k for k in pinned["config"] if not isinstance(found.get("config"), dict)
                        or found["config"].get(k) != pinned["config"][k])
        extra = sorted(set(found.get("config") or {}) - set(pinned["config"])) if isinstance(found.get("config"), dict) else []
        what = ", ".join([*(["model_type"] if found.get("model_type") != entry.model_type else []), *differ, *extra])
        raise ConfigMismatchError(
            f"{path} ({source}) describes another network than the registry pins for {entry.name!r} (differs in: "
            f"{what or 'its layout'}); nothing was loaded. Delete it (for the Hugging Face cache: `hf cache rm`) and "
            "download again."
        )


def _hub_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(errors meaning the Hub answered 'no', errors meaning it could not be reached)."""
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
        from httpx2 import TransportError
    except ImportError:
        from httpx import TransportError

    answered = (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError)
    unreachable = (LocalEntryNotFoundError, OfflineModeIsEnabled, TransportError, ConnectionError, TimeoutError)
    return answered, unreachable


def _explain_answer(err: BaseException, repo_id: str, revision: str, filename: str) -> str:
    from huggingface_hub.errors import RemoteEntryNotFoundError, RevisionNotFoundError

    if isinstance(err, RevisionNotFoundError):
        return f"the Hub has no revision {revision!r} of {repo_id}"
    if isinstance(err, RemoteEntryNotFoundError):
        return f"the Hub repository {repo_id} has no {filename} at revision {revision!r}"
    return f"the Hub has no repository {repo_id} (or it is private and no token was given)"


def _resolve_entry(entry: PretrainedEntry, revision: str | None) -> Path:
    if revision is not None and revision != entry.revision:
        raise ValueError(
            f"{entry.name!r} is pinned to revision {entry.revision or '(sha256 only)'}; to load revision "
            f"{revision!r}, pass the repo id {entry.repo_id!r} instead of the registered name"
        )
    answered, unreachable = _hub_errors()
    rev = entry.revision or "main"
    tried = []
    try:
        weights = _download(entry.repo_id, rev, entry.filename, local_only=True)
        _verify(weights, entry.sha256, source="Hugging Face cache")
        _verify_config(weights.parent, entry, source="Hugging Face cache")
        return weights.parent
    except unreachable:
        tried.append("the Hugging Face cache (not there)")
    try:
        if not _reachable(_endpoint()):
            raise ConnectionError(f"no answer from {_endpoint()}")
        weights = _download(entry.repo_id, rev, entry.filename, local_only=False)
    except answered as err:
        raise FileNotFoundError(f"cannot fetch {entry.name!r}: {_explain_answer(err, entry.repo_id, rev, entry.filename)}") from err
    except unreachable as err:
        tried.append(f"the Hub at {_endpoint()} ({type(err).__name__})")
    else:
        _verify(weights, entry.sha256, source=f"downloaded from {entry.repo_id}@{rev}")
        _verify_config(weights.parent, entry, source=f"downloaded from {entry.repo_id}@{rev}")
        return weights.parent
    bundled = _bundled_root() / entry.name
    if (bundled / entry.filename).is_file() and (bundled / CONFIG_NAME).is_file():
        _verify(bundled / entry.filename, entry.sha256, source="bundled copy")
        _verify_config(bundled, entry, source="bundled copy")
        _warn_bundled_once(entry.name, bundled.parent)
        return bundled
    tried.append(f"a bundled copy at {bundled} (absent)")
    raise HubUnreachableError(
        f"cannot find the weights of {entry.name!r}; tried {', '.join(tried)}. Get them with "
        f"`hf download {entry.repo_id}{' --revision ' + entry.revision if entry.revision else ''}` where the Hub "
        f"is reachable (or set HF_ENDPOINT to a mirror), or pass a local folder path instead of the name."
    )


#: Whether this process has said that it uses bundled copies (said once, not at every load).
_warned_bundled = False


def _warn_bundled_once(name: str, root: Path) -> None:
    """Say once per process that the Hub could not be reached and bundled copies are used, at the
    first line outside this package that asked for a model (the user's call, not the library's)."""
    global _warned_bundled
    if _warned_bundled:
        return
    _warned_bundled = True
    package = str(Path(__file__).resolve().parent)
    frame, level = sys._getframe(1), 2
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(f"the Hugging Face Hub could not be reached; using the copy of {name!r} bundled in this source "
                  f"checkout at {root / name} (and the bundled copies of any other model this process loads, each "
                  "verified against the registry; said once)", stacklevel=level)


def _resolve_repo(repo_id: str, revision: str) -> Path:
    answered, unreachable = _hub_errors()
    try:
        weights = _download(repo_id, revision, WEIGHTS_NAME, local_only=False)
    except answered as err:
        raise FileNotFoundError(f"cannot fetch {repo_id!r}: {_explain_answer(err, repo_id, revision, WEIGHTS_NAME)}") from err
    except unreachable as err:
        raise HubUnreachableError(
            f"cannot fetch {repo_id}@{revision}: the Hub at {_endpoint()} could not be reached and the file is "
            "not cached; download it where the Hub is reachable or pass a local folder"
        ) from err
    blob = Path(weights).resolve()
    if _SHA256.fullmatch(blob.name):  # LFS files are cached under their sha256
        _verify(weights, blob.name, source=f"{repo_id}@{revision}, hash announced by the Hub")
    return weights.parent


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One quick request to the Hub (through huggingface_hub's session, so proxies apply).

    huggingface_hub retries a refused connection for about 23 s before giving up; this
    check lets a source checkout fall back to its bundled copy at once. Offline mode
    skips it (the download then fails fast by itself).
    """
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return True
    try:
        get_session().head(endpoint, timeout=timeout)
    except (OSError, *_hub_errors()[1]):
        return False
    return True


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> tuple[str, str]:
    """Upload a weights folder (``config.json``, ``model.safetensors``, ``README.md``).

    Args:
        folder: a folder written by ``save_pretrained`` with a model card ``README.md``.
        repo_id: target ``org/name``; created if missing.
        token: Hub token (default: huggingface_hub's own lookup).
        private: create the repository as private.
        commit_message: default names the folder.

    Returns:
        ``(commit_sha, sha256_of_weights)``: the two values a registry entry pins.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    for needed in (CONFIG_NAME, WEIGHTS_NAME, "README.md"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder} has no {needed}; a publishable folder holds config.json, model.safetensors and README.md")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"],
        commit_message=commit_message or f"Upload {folder.name} with puvae-defense",
    )
    return info.oid, sha256_of(folder / WEIGHTS_NAME)


def update_registry(registry_path: str | Path, name: str, *, revision: str | None, sha256: str) -> None:
    """Pin ``name`` in a registry JSON file to ``revision`` and ``sha256`` (publishing step)."""
    path = Path(registry_path)
    data = json.loads(path.read_text())
    for raw in data["models"]:
        if raw["name"] == name:
            raw["revision"], raw["sha256"] = revision, sha256
            PretrainedEntry(**raw)  # validate before writing
            path.write_text(json.dumps(data, indent=2) + "\n")
            _registry.cache_clear()
            return
    raise ValueError(f"{name!r} is not in {path}; known: {sorted(r['name'] for r in data['models'])}")


def registry_markdown() -> str:
    """``docs/weights.md``: the registry as Markdown (generated, never edited by hand)."""
    lines = [
        "# Pretrained weights",
        "",
        "Generated from `puvae_defense/registry.json` by `python scripts/build_registry.py`; do not edit.",
        f"Every repository lives under the Hugging Face organisation `{ORGANIZATION}`. An entry with no",
        "revision is not published yet: its sha256 alone pins the file (downloaded from `main`, or taken",
        "from the copy bundled under `hub/<name>/` in a source checkout).",
        "",
        "| name | type | repository | revision | sha256 | parameters | data set |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in list_models():
        e = get_entry(name)
        revision = f"`{e.revision[:12]}`" if e.revision else "unpublished"
        lines.append(f"| `{name}` | {e.model_type} | `{e.repo_id}` | {revision} | `{e.sha256[:16]}...` | "
                     f"{e.num_params:,} | {e.dataset} |")
    for name in list_models():
        e = get_entry(name)
        lines += ["", f"## {name}", "", e.description, "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {format_metric(value)} |" for key, value in e.metrics.items()]
    return "\n".join(lines) + "\n"
