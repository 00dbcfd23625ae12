"""The shared checkpoint files (puvae_defense.checkpoints)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from puvae_defense.checkpoints import checkpoints, load_checkpoint, save_checkpoint


def test_round_trip_restores_modules_optimizers_and_rng(tmp_path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.manual_seed(5)
    path = save_checkpoint(tmp_path, 7, {"net": net}, {"adam": opt}, {"note": "x"})
    expected_draw = torch.rand(1)
    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.Adam(other.parameters(), lr=0.5)
    metadata = load_checkpoint(path, {"net": other}, {"adam": other_opt})
    assert metadata["note"] == "x" and torch.equal(torch.rand(1), expected_draw)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True))
    assert other_opt.param_groups[0]["lr"] == 0.1 and other_opt.state_dict()["state"][0]["step"] == 1
    for index in (8, 9):
        save_checkpoint(tmp_path, index, {"net": net}, {}, {})
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-000008.safetensors", "checkpoint-000009.safetensors"]


def test_bad_names_and_foreign_files_are_errors(tmp_path) -> None:
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="distinct"):
        save_checkpoint(tmp_path, 1, {"a": net}, {"a": torch.optim.SGD(net.parameters(), lr=0.1)}, {})
    with pytest.raises(ValueError, match="not 'rng'"):
        save_checkpoint(tmp_path, 1, {"rng": net}, {}, {})
    save_file({"x": torch.zeros(1)}, str(tmp_path / "checkpoint-000001.safetensors"), metadata={"format": "old"})
    with pytest.raises(ValueError, match="written by another version"):
        load_checkpoint(tmp_path / "checkpoint-000001.safetensors", {"net": net}, {})


def _saved(tmp_path, indices) -> torch.nn.Linear:
    net = torch.nn.Linear(3, 2)
    for index in indices:
        with torch.no_grad():
            net.bias.fill_(index)
        save_checkpoint(tmp_path, index, {"net": net}, {}, {"index": str(index)})
    return net


def test_resume_passes_over_a_damaged_newest_checkpoint_with_a_warning(tmp_path) -> None:
    """Regression (hardening): a damaged latest checkpoint stopped training with a raw SafetensorError."""
    from puvae_defense.checkpoints import resume

    _saved(tmp_path, (1, 2))
    newest = tmp_path / "checkpoint-000002.safetensors"
    newest.write_bytes(newest.read_bytes()[:50])  # truncated
    net = torch.nn.Linear(3, 2)
    with pytest.warns(RuntimeWarning, match=r"checkpoint-000002.safetensors is damaged .*resumed from the older checkpoint-000001"):
        metadata = resume(tmp_path, lambda path: load_checkpoint(path, {"net": net}, {}))
    assert metadata["index"] == "1" and float(net.bias.detach()[0]) == 1.0
    (tmp_path / "checkpoint-000001.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no checkpoint in .* can be read"):
        resume(tmp_path, lambda path: load_checkpoint(path, {"net": net}, {}))
    assert resume(tmp_path / "empty", lambda path: 1) is None


def test_other_errors_of_a_checkpoint_are_not_passed_over(tmp_path) -> None:
    from puvae_defense.checkpoints import resume

    _saved(tmp_path, (1, 2))

    def refuse(path):
        raise ValueError("other settings")

    with pytest.raises(ValueError, match="other settings"):
        resume(tmp_path, refuse)


def test_a_stale_temporary_file_is_cleaned_by_the_next_write(tmp_path) -> None:
    (tmp_path / "checkpoint-000003.tmp").write_bytes(b"half a file")
    _saved(tmp_path, (4,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000004.safetensors"]


def test_training_killed_at_random_moments_resumes_to_the_same_weights(tmp_path) -> None:
    """SIGKILL a training process at a few random moments (some while it writes a checkpoint), start it
    again each time, and compare its final weights with a run that was never interrupted."""
    import random
    import subprocess
    import sys
    import time
    from pathlib import Path

    from safetensors.torch import load_file

    worker = [sys.executable, str(Path(__file__).parent / "train_worker.py")]
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)}
    started = time.perf_counter()
    subprocess.run([*worker, str(tmp_path / "straight")], check=True, env=env, timeout=240)
    epoch = (time.perf_counter() - started) / 10  # about one epoch of the 8 plus start-up; scales with the machine's load
    checkpoints = tmp_path / "killed" / "checkpoints"

    def written() -> int:
        return len(list(checkpoints.glob("*.safetensors"))) if checkpoints.is_dir() else 0

    rng = random.Random(0)
    epochs_at_kills: list[int] = []
    while len(epochs_at_kills) < 3:
        process = subprocess.Popen([*worker, str(tmp_path / "killed")], env=env)
        if epochs_at_kills:  # once this run has written a checkpoint: a real resume follows
            before, deadline = written(), time.perf_counter() + 240
            while process.poll() is None and written() == before and time.perf_counter() < deadline:
                time.sleep(0.02)
        try:  # the first kill anywhere in start-up or the first epochs; the others a random part of an epoch on
            process.wait(timeout=rng.uniform(1.0, 3.0) * epoch if not epochs_at_kills else rng.uniform(0.0, 1.0) * epoch)
            break  # finished before the kill
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            epochs_at_kills.append(written())
    if not (tmp_path / "killed" / "final.safetensors").is_file():
        subprocess.run([*worker, str(tmp_path / "killed")], check=True, env=env, timeout=240)
    assert epochs_at_kills and max(epochs_at_kills) >= 1  # at least one kill came after a checkpoint: a real resume
    straight = load_file(str(tmp_path / "straight" / "final.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "final.safetensors"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
