"""Weights by name through the real huggingface_hub client, against a loopback fake Hub."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path
from types import MappingProxyType

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from puvae_defense import PuVAE, PurifiedClassifier, hub
from puvae_defense.hub import ConfigMismatchError, HubUnreachableError, PretrainedEntry, WeightsHashError
from puvae_defense.serialization import sha256_of

from fake_hub import FakeHub

REPO = f"{hub.ORGANIZATION}/puvae-tiny"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    server = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    for name, value in {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(tmp_path / "hf-home"),
                        "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    huggingface_hub.close_session()
    server.close()


@pytest.fixture
def published(tiny_vae: PuVAE, fake_hub: FakeHub, tmp_path, monkeypatch):
    """tiny_vae committed to the fake Hub and registered as 'puvae-tiny' at that commit."""
    folder = tiny_vae.save_pretrained(tmp_path / "local", dtype=torch.float16)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    sha = fake_hub.commit(REPO, files)
    entry = PretrainedEntry(
        name="puvae-tiny", model_type="puvae", repo_id=REPO, revision=sha, sha256=sha256_of(folder / "model.safetensors"),
        filename="model.safetensors", dataset="synthetic", config=tiny_vae.config.to_dict(), metrics={"accuracy": 1.0},
        num_params=sum(p.numel() for p in tiny_vae.parameters()), description="test model",
    )
    monkeypatch.setattr(hub, "_registry", lambda: MappingProxyType({"puvae-tiny": entry}))
    monkeypatch.setattr(hub, "_bundled_root", lambda: tmp_path / "no-bundle")
    return entry, folder


def _bundle(folder: Path, tmp_path: Path) -> Path:
    """A copy of ``folder`` laid out as a source checkout's ``hub/puvae-tiny``; returns ``hub/``."""
    root = tmp_path / "bundle"
    (root / "puvae-tiny").mkdir(parents=True)
    for path in folder.iterdir():
        (root / "puvae-tiny" / path.name).write_bytes(path.read_bytes())
    return root


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_download_by_name_at_the_pinned_revision(published, fake_hub: FakeHub) -> None:
    entry, folder = published
    fake_hub.commit(REPO, {"model.safetensors": b"a newer, different file"})  # main moves on
    model = PuVAE.from_pretrained("puvae-tiny")
    assert _same_weights(model, PuVAE.from_pretrained(folder))
    assert any(entry.revision in path for _, path in fake_hub.requests)  # asked for the pinned commit
    assert not any("/resolve/main/" in path for _, path in fake_hub.requests)


def test_second_load_is_served_from_the_cache_offline(published, fake_hub: FakeHub, monkeypatch) -> None:
    PuVAE.from_pretrained("puvae-tiny")
    count = len(fake_hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = PurifiedClassifier(torch.nn.Flatten(), "puvae-tiny", check_num_classes=False)
    assert isinstance(model.purifier, PuVAE)
    assert len(fake_hub.requests) == count  # zero requests


def test_corrupted_file_of_the_same_size_is_refused(published, fake_hub: FakeHub) -> None:
    entry, folder = published
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size: huggingface_hub itself does not notice
    fake_hub.repos[REPO].commits[-1][1]["model.safetensors"] = bytes(data)
    with pytest.raises(WeightsHashError, match=f"expected {entry.sha256}, got [0-9a-f]{{64}}; the file was not loaded"):
        PuVAE.from_pretrained("puvae-tiny")


def test_corrupted_cache_is_refused(published, fake_hub: FakeHub, monkeypatch) -> None:
    PuVAE.from_pretrained("puvae-tiny")
    blobs = list(Path(constants.HF_HUB_CACHE).rglob("blobs/*"))
    weights_blob = max(blobs, key=lambda p: p.stat().st_size)
    data = bytearray(weights_blob.read_bytes())
    data[-1] ^= 0xFF
    weights_blob.write_bytes(bytes(data))
    with pytest.raises(WeightsHashError, match="Hugging Face cache"):
        PuVAE.from_pretrained("puvae-tiny")


def test_wrong_revision(published) -> None:
    with pytest.raises(ValueError, match="pinned to revision .* pass the repo id"):
        PuVAE.from_pretrained("puvae-tiny", revision="0" * 40)
    with pytest.raises(FileNotFoundError, match="has no revision '0{40}'"):
        PuVAE.from_pretrained(REPO, revision="0" * 40)


def test_missing_repo_and_missing_file(published, fake_hub: FakeHub, monkeypatch, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="has no repository puvae-defense/missing"):
        PuVAE.from_pretrained(f"{hub.ORGANIZATION}/missing")
    entry, _ = published
    sha = fake_hub.commit(f"{hub.ORGANIZATION}/only-config", {"config.json": b"{}"})
    broken = PretrainedEntry(**{**entry.__dict__, "name": "broken", "repo_id": f"{hub.ORGANIZATION}/only-config",
                                "revision": sha, "config": dict(entry.config), "metrics": dict(entry.metrics)})
    monkeypatch.setattr(hub, "_registry", lambda: MappingProxyType({"broken": broken}))
    with pytest.raises(FileNotFoundError, match="has no model.safetensors at revision"):
        PuVAE.from_pretrained("broken")


def test_unreachable_hub_falls_back_to_the_bundled_copy(published, fake_hub: FakeHub, monkeypatch, tmp_path) -> None:
    entry, folder = published
    monkeypatch.setattr(hub, "_bundled_root", lambda: _bundle(folder, tmp_path))
    fake_hub.close()  # nothing listens on the port any more: connections are refused
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # and the client is told so
    with pytest.warns(UserWarning, match="could not be reached; using the copy of 'puvae-tiny' bundled"):
        model = PuVAE.from_pretrained("puvae-tiny")
    assert _same_weights(model, PuVAE.from_pretrained(folder))


def test_refused_connection_falls_back_too(published, fake_hub: FakeHub, monkeypatch, tmp_path) -> None:
    """A real refused port: detected at once (huggingface_hub alone would retry for about 23 s)."""
    entry, folder = published
    monkeypatch.setattr(hub, "_bundled_root", lambda: _bundle(folder, tmp_path))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.warns(UserWarning, match="bundled"):
        PuVAE.from_pretrained("puvae-tiny")


def test_unreachable_hub_without_bundle_explains_what_was_tried(published, fake_hub: FakeHub, monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match=r"tried the Hugging Face cache \(not there\), .*bundled copy .*hf download"):
        PuVAE.from_pretrained("puvae-tiny")


def test_bundled_copy_is_verified_too(published, fake_hub: FakeHub, monkeypatch, tmp_path) -> None:
    entry, folder = published
    bundle = tmp_path / "bundle" / "puvae-tiny"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_bytes((folder / "config.json").read_bytes())
    (bundle / "model.safetensors").write_bytes(b"x" * 100)
    monkeypatch.setattr(hub, "_bundled_root", lambda: tmp_path / "bundle")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsHashError, match="bundled copy"):
        PuVAE.from_pretrained("puvae-tiny")


def _edit_config(path: Path, **changes: object) -> None:
    payload = json.loads(path.read_text())
    payload["config"].update(changes)
    path.write_text(json.dumps(payload))


def test_an_edited_config_in_the_cache_is_refused(published, fake_hub: FakeHub, monkeypatch) -> None:
    """The sha256 pins the weights file; the registry pins the network config.json describes too."""
    PuVAE.from_pretrained("puvae-tiny")
    config = next(Path(constants.HF_HUB_CACHE).rglob("snapshots/*/config.json")).resolve()
    _edit_config(config, latent_dim=9)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigMismatchError, match=r"Hugging Face cache\) describes another network .*latent_dim"):
        PuVAE.from_pretrained("puvae-tiny")
    config.write_text("[1, 2")
    with pytest.raises(ConfigMismatchError, match="cannot be read as JSON"):
        PuVAE.from_pretrained("puvae-tiny")


def test_an_edited_config_in_the_bundled_copy_is_refused(published, fake_hub: FakeHub, monkeypatch, tmp_path) -> None:
    entry, folder = published
    root = _bundle(folder, tmp_path)
    _edit_config(root / "puvae-tiny" / "config.json", extra_layer=1)
    monkeypatch.setattr(hub, "_bundled_root", lambda: root)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigMismatchError, match=r"bundled copy\) describes another network .*extra_layer"):
        PuVAE.from_pretrained("puvae-tiny")


def test_a_local_folder_never_shadows_a_registered_name(published, fake_hub: FakeHub, monkeypatch, tmp_path) -> None:
    entry, folder = published
    torch.manual_seed(1)
    impostor = PuVAE(PuVAE.from_pretrained(folder).config)
    impostor.save_pretrained(tmp_path / "cwd" / "puvae-tiny")
    monkeypatch.chdir(tmp_path / "cwd")
    by_name = PurifiedClassifier(torch.nn.Flatten(), "puvae-tiny", check_num_classes=False).purifier
    assert _same_weights(by_name, PuVAE.from_pretrained(folder)) and not _same_weights(by_name, impostor)
    for as_path in ("./puvae-tiny", Path("puvae-tiny")):  # a path names the folder, unverified
        assert _same_weights(PuVAE.from_pretrained(as_path), impostor)


def test_save_serve_load_round_trip_is_bit_identical(tiny_vae: PuVAE, fake_hub: FakeHub, tmp_path) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    repo = f"{hub.ORGANIZATION}/round-trip"
    sha = fake_hub.commit(repo, {p.name: p.read_bytes() for p in folder.iterdir()})
    loaded = PuVAE.from_pretrained(repo, revision=sha)
    assert _same_weights(loaded, tiny_vae)


def test_push_uploads_a_folder_through_the_upload_api(tiny_vae: PuVAE, fake_hub: FakeHub, tmp_path) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m", dtype=torch.float16)
    (folder / "README.md").write_text("---\nlibrary_name: puvae-defense\n---\n# card\n")
    (folder / "notes.txt").write_text("not published")
    repo = f"{hub.ORGANIZATION}/pushed"
    commit, sha256 = hub.push_to_hub(folder, repo, token="hf_fake")
    assert sha256 == sha256_of(folder / "model.safetensors")
    sha, files = fake_hub.repos[repo].commits[-1]
    assert sha == commit and sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert ("POST", "/api/repos/create") in fake_hub.requests
    assert _same_weights(PuVAE.from_pretrained(repo, revision=commit), PuVAE.from_pretrained(folder))


def test_push_needs_a_model_card(tiny_vae: PuVAE, tmp_path) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    (folder / "README.md").unlink()  # save_pretrained writes one; a folder without it cannot be published
    with pytest.raises(FileNotFoundError, match="README.md"):
        hub.push_to_hub(folder, f"{hub.ORGANIZATION}/x")


def test_update_registry_pins_revision_and_hash(tmp_path) -> None:
    path = tmp_path / "registry.json"
    raw = {"name": "m", "model_type": "puvae", "repo_id": f"{hub.ORGANIZATION}/m", "revision": None, "sha256": "0" * 64,
           "filename": "model.safetensors", "dataset": "mnist", "config": {}, "metrics": {}, "num_params": 1,
           "description": "d"}
    path.write_text(json.dumps({"models": [raw]}))
    hub.update_registry(path, "m", revision="a" * 40, sha256="b" * 64)
    saved = json.loads(path.read_text())["models"][0]
    assert (saved["revision"], saved["sha256"]) == ("a" * 40, "b" * 64)
    with pytest.raises(ValueError, match="not in"):
        hub.update_registry(path, "other", revision=None, sha256="b" * 64)
