"""Launched by tests/test_checkpoints.py: a tiny training run with a checkpoint every epoch, which
the test kills (SIGKILL) at random moments and starts again until it finishes."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import TINY_MNIST, synthetic_dataset, tiny_source
from puvae_defense.training import fit

out = Path(sys.argv[1])
torch.set_num_threads(1)
model = fit(synthetic_dataset(256), tiny_source(), config=TINY_MNIST, recipe="robust", epochs=8, batch_size=32, val_size=0,
            lambda_proj=1.0, checkpoint_dir=out / "checkpoints", device="cpu", progress=False)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
