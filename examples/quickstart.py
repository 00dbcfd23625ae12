"""Purify a batch with a randomly initialised paper-size PuVAE and time it.

Untrained weights purify nothing useful: this shows the API and the speed only.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from puvae_defense import PuVAE, PurifiedClassifier

torch.manual_seed(0)
purifier = PuVAE().eval()  # Table 1 of the paper, 1x28x28, 10 classes
classifier = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
model = PurifiedClassifier(classifier, purifier, sigma_eps=0.1)

images = torch.rand(128, 1, 28, 28)
with torch.no_grad():
    model(images[:8])  # warm-up
    start = time.perf_counter()
    projection = model.purify(images, generator=torch.Generator().manual_seed(0))
    elapsed = time.perf_counter() - start
    logits = model.classify_purified(projection.purified)

print(f"purified {len(images)} images of 1x28x28 in {elapsed * 1e3:.1f} ms "
      f"({torch.get_num_threads()} CPU threads, torch {torch.__version__})")
print(f"projection labels of the first 10: {projection.labels[:10].tolist()}")
print(f"per-class RMSE of image 0: {[round(d, 3) for d in projection.distances[0].tolist()]}")
print(f"logits shape: {tuple(logits.shape)}")
