"""Launched by tests/test_training.py under torchrun: a tiny DDP training run on 2 CPU processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import TINY_MNIST, synthetic_dataset, tiny_source
from puvae_defense.training import fit

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
torch.set_num_threads(1)
model = fit(synthetic_dataset(64), tiny_source(), config=TINY_MNIST, epochs=1, batch_size=16, val_size=0,
            checkpoint_dir=out / "checkpoints", device="cpu", progress=False)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
if rank == 0:
    (out / "world").write_text(os.environ["WORLD_SIZE"])
