from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from puvae_defense import PuVAE, PuVAEConfig

from conftest import TINY_MNIST


def test_round_trip_is_bit_identical(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.iterdir())  # safetensors alone writes 0600
    loaded = PuVAE.from_pretrained(folder)
    assert loaded.config == tiny_vae.config and not loaded.training
    for (k, a), (k2, b) in zip(tiny_vae.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "puvae" and config["torch_dtype"] == "float32"


def test_the_card_loads_the_saved_folder_unless_given_a_registered_name(tmp_path, tiny_vae: PuVAE) -> None:
    import re

    def loads(folder: Path) -> str:
        return re.search(r'PurifiedClassifier\(my_net, "([^"]+)"\)', (folder / "README.md").read_text()).group(1)

    mine = tiny_vae.save_pretrained(tmp_path / "mine")
    assert loads(mine) == str(tmp_path / "mine") and PuVAE.from_pretrained(loads(mine)).config == tiny_vae.config
    shadow = tiny_vae.save_pretrained(tmp_path / "puvae-mnist")  # shares a registered name: still the folder
    assert loads(shadow) == str(tmp_path / "puvae-mnist")
    bundled = tiny_vae.save_pretrained(tmp_path / "b", metadata={"name": "puvae-mnist"})  # a bundling script's card
    assert loads(bundled) == "puvae-mnist"


def test_saving_the_same_weights_gives_the_same_bytes(tmp_path, tiny_vae: PuVAE) -> None:
    """The registry pins files by sha256, so re-saving must not reorder anything in the file."""
    files = {tiny_vae.save_pretrained(tmp_path / str(i), dtype=torch.float16).joinpath("model.safetensors").read_bytes()
             for i in range(6)}
    assert len(files) == 1


def test_fp16_storage_round_trips_exactly(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m", dtype=torch.float16)
    stored = load_file(folder / "model.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())
    loaded = PuVAE.from_pretrained(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, stored[key].float())
    half = PuVAE.from_pretrained(folder / "model.safetensors", dtype=torch.float16)
    assert all(torch.equal(v, stored[k]) for k, v in half.state_dict().items())


def test_no_pickle_in_the_weights(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    header = (folder / "model.safetensors").read_bytes()[:8]
    assert int.from_bytes(header, "little") > 0  # a safetensors header length, not a pickle opcode
    assert b"\x80\x02" not in (folder / "model.safetensors").read_bytes()[:64]


def test_corrupt_weights_file(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt weights file"):
        PuVAE.from_pretrained(folder)


def test_truncated_weights_file(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt weights file"):
        PuVAE.from_pretrained(folder)


def test_mismatched_config_and_weights(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    other = PuVAE(PuVAEConfig.from_dict({**TINY_MNIST.to_dict(), "latent_dim": 4}))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(folder / "model.safetensors")
    with pytest.raises(ValueError, match="shapes that do not match.*encoder_out.weight"):
        PuVAE.from_pretrained(folder)


def test_missing_and_unexpected_keys(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    state["extra.weight"] = state.pop("encoder_in.bias")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['encoder_in.bias'\], unexpected keys \['extra.weight'\]"):
        PuVAE.from_pretrained(folder)


def test_nan_weights_are_refused(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    state["decoder_in.bias"][0] = float("nan")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match="NaN or Inf values in \\['decoder_in.bias'\\]"):
        PuVAE.from_pretrained(folder)


def test_bad_config_files(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PuVAE.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "classifier", "config": {}, "format_version": 1}))
    with pytest.raises(ValueError, match="holds a 'classifier' model, not a 'puvae'"):
        PuVAE.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "puvae", "config": {}, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        PuVAE.from_pretrained(folder)


def test_wrong_file_name(tmp_path, tiny_vae: PuVAE) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="not a model.safetensors"):
        PuVAE.from_pretrained(folder / "config.json")


def test_read_metadata_returns_what_was_saved_and_empty_when_absent(tmp_path) -> None:
    from puvae_defense.serialization import read_metadata

    PuVAE(TINY_MNIST).save_pretrained(tmp_path / "with", metadata={"epochs": 3})
    PuVAE(TINY_MNIST).save_pretrained(tmp_path / "without")
    assert read_metadata(tmp_path / "with") == {"epochs": 3}
    assert read_metadata(tmp_path / "without") == {}
    assert read_metadata(tmp_path / "missing") == {}


def test_write_metadata_replaces_only_the_metadata(tmp_path) -> None:
    from puvae_defense.serialization import read_metadata, write_metadata

    PuVAE(TINY_MNIST).save_pretrained(tmp_path / "model", metadata={"epochs": 3, "old": True})
    write_metadata(tmp_path / "model", {"epochs": 4})
    assert read_metadata(tmp_path / "model") == {"epochs": 4}
    assert PuVAE.from_pretrained(tmp_path / "model").config == PuVAE(TINY_MNIST).config
    with pytest.raises(FileNotFoundError, match="save the model"):
        write_metadata(tmp_path / "missing", {"epochs": 1})


def _with_config(folder, **changes) -> None:
    payload = json.loads((folder / "config.json").read_text())
    payload["config"].update(changes)
    (folder / "config.json").write_text(json.dumps(payload))


@pytest.mark.parametrize("changes", [{"latent_dim": 10**9}, {"encoder_hidden": [10**6, 10**6]},
                                     {"image_shape": [1, 10**5, 10**5]}])
def test_a_config_asking_for_huge_layers_fails_before_allocating(tmp_path, tiny_vae: PuVAE, changes) -> None:
    """Regression (hardening): the loader tried to allocate terabytes before any check."""
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    _with_config(folder, **changes)
    with pytest.raises(ValueError, match="(shapes that do not match|invalid 'config')"):
        PuVAE.from_pretrained(folder)


def test_a_config_asking_for_millions_of_layers_is_refused_at_once(tmp_path, tiny_vae: PuVAE) -> None:
    for changes, field in (({"num_convs": 10**7}, "num_convs"), ({"encoder_hidden": [8] * 10**5}, "encoder_hidden")):
        folder = tiny_vae.save_pretrained(tmp_path / field)
        _with_config(folder, **changes)
        with pytest.raises(ValueError, match=rf"config.json: invalid 'config' for a puvae model: .*{field}.*at most 64"):
            PuVAE.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float64, torch.uint8])
def test_weights_of_a_wrong_dtype_are_refused(tmp_path, tiny_vae: PuVAE, dtype: torch.dtype) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    state["encoder_in.weight"] = state["encoder_in.weight"].to(dtype)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"dtypes this model cannot take .*\['encoder_in.weight: "):
        PuVAE.from_pretrained(folder)


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2, 3]", "needs a JSON object .* got list"),
    ("[" * 100_000 + "]" * 100_000, "(nested too deeply|not valid JSON)"),
    (json.dumps({"model_type": "puvae", "config": [1], "format_version": 1}), "field 'config' must be a JSON object"),
    (json.dumps({"model_type": "puvae", "config": {"latent_dim": "32"}, "format_version": 1}),
     "invalid 'config' for a puvae model: .*latent_dim"),
    (json.dumps({"model_type": "puvae", "config": {"bogus": 1}, "format_version": 1}), "unknown PuVAEConfig keys"),
])
def test_malformed_configs_are_value_errors_naming_the_file(tmp_path, tiny_vae: PuVAE, text: str, message: str) -> None:
    folder = tiny_vae.save_pretrained(tmp_path / "m")
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        PuVAE.from_pretrained(folder)
    assert "config.json" in str(info.value)


def test_a_fitted_puvae_saves_its_recipe_origin_and_metrics(tmp_path) -> None:
    from conftest import synthetic_dataset, tiny_source

    from puvae_defense.training import fit

    vae = fit(synthetic_dataset(32), tiny_source(), config=TINY_MNIST, epochs=1, batch_size=16, val_size=16,
              val_dataset=synthetic_dataset(16, seed=1), progress=False, device="cpu")
    folder = vae.save_pretrained(tmp_path / "mine", dtype=torch.float16, metadata={"dataset": "synthetic"})
    metadata = json.loads((folder / "config.json").read_text())["metadata"]
    assert metadata["training"]["recipe"]["lambda_proj"] == 100.0 and metadata["training"]["epochs"] == 1
    assert metadata["dataset"] == "synthetic" and "val_purified_acc" in metadata["metrics"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: puvae-defense") and "# mine" in card and "val_purified_acc" in card
    assert load_file(folder / "model.safetensors")["encoder_in.weight"].dtype == torch.float16
