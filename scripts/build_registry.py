"""Regenerate puvae_defense/registry.json from the bundled hub/<name>/ folders, and docs/weights.md.

Each folder's config.json carries a ``metadata`` block (name, dataset, description,
metrics) written by scripts/train_mnist.py. A revision already pinned in the registry is
kept while the weights' sha256 is unchanged; new or changed weights are unpublished
(revision null) until `puvae-defense push ... --update-registry NAME` pins them.

Usage: python scripts/build_registry.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from puvae_defense import hub
from puvae_defense.serialization import WEIGHTS_NAME, sha256_of

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "puvae_defense" / "registry.json"


def _num_params(model_type: str, config: dict) -> int:
    model: torch.nn.Module = hub.model_class(model_type)._from_config_dict(config)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    previous = {m["name"]: m for m in json.loads(REGISTRY.read_text())["models"]}
    models = []
    for folder in sorted(p for p in (ROOT / "hub").iterdir() if (p / WEIGHTS_NAME).is_file()):
        config = json.loads((folder / "config.json").read_text())
        meta = config["metadata"]
        sha256 = sha256_of(folder / WEIGHTS_NAME)
        old = previous.get(meta["name"], {})
        models.append({
            "name": meta["name"],
            "model_type": config["model_type"],
            "repo_id": f"{hub.ORGANIZATION}/{meta['name']}",
            "revision": old.get("revision") if old.get("sha256") == sha256 else None,
            "sha256": sha256,
            "filename": WEIGHTS_NAME,
            "dataset": meta["dataset"],
            "config": config["config"],
            "metrics": {k: float(v) for k, v in meta["metrics"].items()},
            "num_params": _num_params(config["model_type"], config["config"]),
            "description": meta["description"],
        })
    REGISTRY.write_text(json.dumps({"models": models}, indent=2) + "\n")
    hub._registry.cache_clear()
    (ROOT / "docs" / "weights.md").write_text(hub.registry_markdown())
    print(f"registry: {[m['name'] for m in models]}")


if __name__ == "__main__":
    main()
