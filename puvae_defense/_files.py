"""The file names of a weights folder and the hash that pins them (below both the serialization
and the hub modules, which both need them)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "sha256_of"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
