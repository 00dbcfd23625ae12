"""Short PuVAE training runs to compare recipes on the validation split (CPU-sized).

Each probe trains the paper-size PuVAE (or, with ``--config``, other layer sizes) with a
named recipe (``--recipe``) plus JSON overrides on the first ``--n`` training images of
``--dataset`` for ``--epochs`` epochs, against a source classifier (``--source``: a folder
or registered name; default the shipped ``<dataset>-source``), from random weights or, with
``--init``, from a trained PuVAE. It is then measured on the first ``--val-images`` images
of the validation split with the **held-out selection classifier**
(``puvae_defense.selection``: architecture ``cw``, seed 1, ``SELECTOR_EPOCHS`` of the data
set, trained here once if ``--selector`` does not exist; never A, B or the source):

- ``clean``: its accuracy on purified clean images;
- ``fgsm``: its accuracy on purified targeted-FGSM images (eps 0.3, random wrong targets)
  computed on it, the paper's gray-box threat;
- ``projection``: the purifier's own choice is the true class;
- ``spread``: within-class spread of the mu-decodings over that of the inputs;
- ``kl``: validation KL in nats per image.

One JSON line per probe is appended to ``--out``. The test split is never touched.

Usage (the probe table of docs/training.md):
    python experiments/recipe_probe.py shipped-0.1.0 --model hub/puvae-mnist   # (at 0.1.0)
    python experiments/recipe_probe.py robust --n 10000
    python experiments/recipe_probe.py robust-fixed-eps '{"noise_amplitude": "fixed"}' --n 10000
    python experiments/recipe_probe.py shipped-robust-3ep --model hub/puvae-mnist   # (the shipped model, for scale)
    python experiments/recipe_probe.py robust-pgd5 '{"noise_kind": "pgd", "noise_steps": 5}' --n 10000
    python experiments/recipe_probe.py robust-proj300 '{"lambda_proj": 300.0}' --n 10000
    python experiments/recipe_probe.py robust-scale30 '{"proj_scale": 30.0}' --n 10000
    python experiments/recipe_probe.py robust-scale300 '{"proj_scale": 300.0}' --n 10000
    python experiments/recipe_probe.py robust-frac75 '{"noise_fraction": 0.75}' --n 10000
    python experiments/recipe_probe.py robust-seed1 '{"seed": 1}' --n 10000
    # MNIST, bf16 (docs/training.md, "Whose perturbations the purifier undoes"); the attack models come from
    # puvae-defense train-classifier --arch source --seed 1 --epochs 2 --out runs/attackers/mnist-source-s1
    # puvae-defense train-classifier --arch C --seed 1 --epochs 2 --out runs/attackers/mnist-C-s1
    python experiments/recipe_probe.py shipped-robust-8ep --model hub/puvae-mnist   # (the 8-epoch model, for scale)
    python experiments/recipe_probe.py robust-bf16 --n 10000 --amp bf16
    python experiments/recipe_probe.py robust-ens-src1-C1 --n 10000 --amp bf16 \
        --attack-models runs/attackers/mnist-source-s1 runs/attackers/mnist-C-s1
    python experiments/recipe_probe.py robust-bf16-seed1 '{"seed": 1}' --n 10000 --amp bf16
    python experiments/recipe_probe.py mnist-ft4 --recipe finetune --init hub/puvae-mnist --n 50000 --epochs 4 --amp bf16
    python experiments/recipe_probe.py mnist-ft4-ens --recipe finetune --init hub/puvae-mnist --n 50000 --epochs 4 \
        --amp bf16 --attack-models runs/attackers/mnist-source-s1 runs/attackers/mnist-C-s1
    # Iterative inputs for iFGSM (docs/training.md, "Iterative attack inputs"); the training ones also with
    # --attack-models runs/attackers/mnist-source-s1 runs/attackers/mnist-C-s1:
    python experiments/recipe_probe.py shipped-ens-12ep --model hub/puvae-mnist   # (the model shipped before e8c5520)
    python experiments/recipe_probe.py mnist-ens-ft1-fgsm --recipe finetune --init hub/puvae-mnist --n 50000 --epochs 1 --amp bf16
    python experiments/recipe_probe.py mnist-ens-ft1-pgd3 '{"noise_kind": "pgd", "noise_steps": 3}' --recipe finetune \
        --init hub/puvae-mnist --n 50000 --epochs 1 --amp bf16
    # the 3-epoch run is the shipped model's third stage (scripts/train_mnist.py --recipes finetune-pgd --epochs 3),
    # scored here as mnist-ens-ft3-pgd3-shipped-val3000 --model hub/puvae-mnist --val-images 3000
    # and each model scored again on 3,000 validation images: NAME-val3000 --model FOLDER --val-images 3000
    # Fashion-MNIST (docs/training.md), each also with --work runs/fashion-probes --out runs/fashion-probes/probes.jsonl:
    python experiments/recipe_probe.py fashion-robust-8ep --dataset fashion-mnist --model runs/fashion-mnist/puvae-robust/final
    python experiments/recipe_probe.py fashion-ft-source5 --dataset fashion-mnist --recipe finetune \
        --init runs/fashion-mnist/puvae-robust/final --source runs/fashion-mnist/fashion-mnist-source --epochs 1
    python experiments/recipe_probe.py fashion-ft-source20 --dataset fashion-mnist --recipe finetune \
        --init runs/fashion-mnist/puvae-robust/final --source runs/fashion-probes/source-20ep --epochs 1
    # Fashion-MNIST fidelity probes from scratch (each also with --dataset fashion-mnist --amp bf16
    # --val-images 2000 --work runs/fashion-probes --out runs/fashion-probes/probes.jsonl):
    python experiments/recipe_probe.py fp-base
    python experiments/recipe_probe.py fp-kl03 '{"lambda_kl": 0.3}'
    python experiments/recipe_probe.py fp-kl01 '{"lambda_kl": 0.1}'
    python experiments/recipe_probe.py fp-rc3 '{"lambda_rc": 3.0}'
    python experiments/recipe_probe.py fp-ce30 '{"lambda_ce": 30.0}'
    python experiments/recipe_probe.py fp-frac25 '{"noise_fraction": 0.25}'
    python experiments/recipe_probe.py fp-lat64 --config '{"latent_dim": 64}'
    # Fashion-MNIST fine-tuning probes from the shipped model (each also with --dataset fashion-mnist --epochs 1 --amp off
    # --val-images 2000 --work runs/fashion-probes --out runs/fashion-probes/probes.jsonl; the first scores it):
    python experiments/recipe_probe.py fashion-shipped-kl03 --model hub/puvae-fashion-mnist   # (before the fine-tuning below)
    python experiments/recipe_probe.py ftp-control '{"lambda_kl": 0.3}' --recipe finetune --init hub/puvae-fashion-mnist
    python experiments/recipe_probe.py ftp-proj1000 '{"lambda_kl": 0.3, "lambda_proj": 1000.0}' --recipe finetune \
        --init hub/puvae-fashion-mnist
    python experiments/recipe_probe.py ftp-scale300 '{"lambda_kl": 0.3, "proj_scale": 300.0}' --recipe finetune \
        --init hub/puvae-fashion-mnist
    python experiments/recipe_probe.py ftp-pgd3 '{"lambda_kl": 0.3, "noise_kind": "pgd", "noise_steps": 3}' \
        --recipe finetune --init hub/puvae-fashion-mnist
    python experiments/recipe_probe.py ftp-wrong30 '{"lambda_kl": 0.3, "lambda_wrong_ce": 30.0}' --recipe finetune \
        --init hub/puvae-fashion-mnist   # (stopped unfinished)
    # then the shipped model after scripts/fashion_mnist.sh finetune:
    python experiments/recipe_probe.py fashion-shipped-ft-pgd3 --model hub/puvae-fashion-mnist
    # Fashion-MNIST capacity and discrimination probes from scratch in fp32 (each also with --recipe robust-kl03
    # --dataset fashion-mnist --val-images 2000 --work runs/fashion-probes --out runs/fashion-probes/probes.jsonl):
    python experiments/recipe_probe.py fp32-kl03
    python experiments/recipe_probe.py fp32-kl03-dec64 --config '{"deconv_channels": 64, "decoder_hidden": 1024}'
    python experiments/recipe_probe.py fp32-kl03-wrong30 '{"lambda_wrong_ce": 30.0}'
    python experiments/recipe_probe.py fp32-kl03-wrong100 '{"lambda_wrong_ce": 100.0}'   # (stopped unfinished)
    # guards against the larger decoder's collapse (same options):
    python experiments/recipe_probe.py fp32-kl03-dec64-ce3 '{"lambda_ce": 3.0, "lambda_wrong_ce": 3.0}' \
        --config '{"deconv_channels": 64, "decoder_hidden": 1024}'
    python experiments/recipe_probe.py fp32-kl03-dec64-warm1 '{"kl_warmup_epochs": 1.0}' \
        --config '{"deconv_channels": 64, "decoder_hidden": 1024}'
    # the same at full length (all training images, 8 epochs, as the shipped model's first stage):
    python experiments/recipe_probe.py full-kl03-dec64-warm1 '{"kl_warmup_epochs": 1.0}' \
        --config '{"deconv_channels": 64, "decoder_hidden": 1024}' --n 50000 --epochs 8
    # a stronger source from scratch (the source classifier trained 20 epochs, 92.28% on validation:
    # puvae-defense train-classifier --dataset fashion-mnist --arch source --epochs 20 --seed 0
    #     --out runs/fashion-probes/source-20ep), beside the control run again on the same machine:
    python experiments/recipe_probe.py fp32-kl03-source20 --source runs/fashion-probes/source-20ep
    python experiments/recipe_probe.py fp32-kl03-rerun
    python experiments/recipe_probe.py fp32-kl03-lat16 --config '{"latent_dim": 16}'
    python experiments/recipe_probe.py fp32-kl03-lat64-warm1 '{"kl_warmup_epochs": 1.0}' --config '{"latent_dim": 64}'
    python experiments/recipe_probe.py fp32-kl3 '{"lambda_kl": 3.0}'
    # Denoisers for randomized smoothing (docs/smoothing.md), each also with --metrics smoothing
    # --work runs/smooth-probes --out runs/smooth-probes/probes.jsonl:
    python experiments/recipe_probe.py selector-alone --model none   # (no purifier: the selector on the noisy images)
    python experiments/recipe_probe.py shipped-puvae-mnist --model hub/puvae-mnist
    python experiments/recipe_probe.py smooth-ft-g1 '{"noise_kind": "gaussian", "input_noise": 1.0, "noise_fraction": 1.0}' \
        --recipe finetune --init hub/puvae-mnist --n 20000 --epochs 1
    python experiments/recipe_probe.py smooth-ft-g1-lr1e3 \
        '{"noise_kind": "gaussian", "input_noise": 1.0, "noise_fraction": 1.0, "lr": 0.001}' \
        --recipe finetune --init hub/puvae-mnist --n 20000 --epochs 1   # became recipe "smooth"
    python experiments/recipe_probe.py smooth-ft-g1-lr1e3-eps0 --model runs/smooth-probes/smooth-ft-g1-lr1e3 --sigma-eps 0
    python experiments/recipe_probe.py puvae-mnist-smooth-full --model runs/smoothing/puvae-mnist-smooth
    # (scripts/smoothing.sh denoiser: recipe smooth from puvae-mnist on all 50,000 images), then from it:
    python experiments/recipe_probe.py smooth-ft2 --recipe smooth --init hub/puvae-mnist-smooth --n 20000 --epochs 1
    python experiments/recipe_probe.py smooth-ft2-fixed05 '{"noise_amplitude": "fixed", "input_noise": 0.5}' \
        --recipe smooth --init hub/puvae-mnist-smooth --n 20000 --epochs 1
    python experiments/recipe_probe.py smooth-ft2-proj300 '{"lambda_proj": 300.0}' \
        --recipe smooth --init hub/puvae-mnist-smooth --n 20000 --epochs 1

The JSON options come right after the name (argparse reads them as the second positional).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from puvae_defense import PuVAE, PuVAEConfig
from puvae_defense.baselines import NoPurifier
from puvae_defense.classifiers import PaperClassifier
from puvae_defense.data import load_dataset
from puvae_defense.selection import SELECTOR_EPOCHS, default_selector_path, load_selector, selection_metrics, smoothing_metrics
from puvae_defense.training import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("options", nargs="?", default="{}", help="TrainConfig fields as JSON, on top of --recipe")
    parser.add_argument("--config", default="{}", help="PuVAEConfig fields as JSON (layer sizes), on top of the data set's")
    parser.add_argument("--recipe", default="robust")
    parser.add_argument("--n", type=int, default=20_000, help="training images (the first n of the split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--source", default=None, help="source classifier (default: <dataset>-source)")
    parser.add_argument("--init", default=None, help="start from this trained PuVAE (folder or registered name)")
    parser.add_argument("--attack-models", nargs="+", default=[],
                        help="classifiers (folders or registered names) whose FGSM images the encoder also sees "
                             "(fit's attack_models; never A, B or the selector)")
    parser.add_argument("--selector", type=Path, default=None, help="default: the data set's held-out selector")
    parser.add_argument("--work", type=Path, default=Path("runs/probes"))
    parser.add_argument("--out", type=Path, default=Path("runs/probes.jsonl"))
    parser.add_argument("--model", type=Path, default=None,
                        help="score this trained PuVAE folder instead of training (`none`: no purifier, with "
                             "--metrics smoothing only)")
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--sigma-eps", type=float, default=0.1,
                        help="the projection's sampling noise when scoring (paper: 0.1)")
    parser.add_argument("--metrics", default="selection", choices=["selection", "smoothing"],
                        help="selection: clean / FGSM / iFGSM through the purifier; smoothing: clean and Gaussian-noisy "
                             "inputs (a denoiser for randomized smoothing)")
    parser.add_argument("--amp", default="off", choices=["off", "bf16"],
                        help="bf16 autocast pays only on CPUs with bf16 units (8x slower than fp32 on an AVX2-only CPU)")
    args = parser.parse_args()
    metrics = {"selection": selection_metrics, "smoothing": smoothing_metrics}[args.metrics]
    train, val = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "val")
    selector = load_selector(args.selector or default_selector_path(args.dataset), train,
                             epochs=SELECTOR_EPOCHS[args.dataset])
    source_name = args.source or f"{args.dataset}-source"
    options, layers = json.loads(args.options), json.loads(args.config)
    folder = args.model or args.work / args.name
    if str(args.model) == "none":
        if args.metrics != "smoothing":
            parser.error("--model none scores the selector alone, which only --metrics smoothing can")
        vae, seconds = NoPurifier(), None
    elif (folder / "model.safetensors").is_file():
        vae, seconds = PuVAE.from_pretrained(folder, dtype=torch.float32), None
    else:
        source = PaperClassifier.from_pretrained(source_name)  # only training needs it
        start = time.perf_counter()
        config = PuVAEConfig(**layers) if layers else None  # None: the data set's paper-size model
        vae = fit(train.subset(0, args.n), source, config=config, recipe=args.recipe, val_dataset=val,
                  val_size=args.val_images,
                  epochs=args.epochs, amp=args.amp, progress=False, checkpoint_dir=folder / "checkpoints",
                  init=args.init, attack_models=[PaperClassifier.from_pretrained(name) for name in args.attack_models],
                  **options)
        seconds = time.perf_counter() - start
        vae.save_pretrained(folder)
    selector = selector.to(next(vae.parameters(), torch.empty(0)).device)  # fit leaves the PuVAE on its GPU
    trained = {"model": str(args.model)} if args.model else {
        "recipe": args.recipe, "options": options, "config": layers, "n": args.n, "epochs": args.epochs, "init": args.init,
        "source": source_name, "attack_models": args.attack_models}
    record = {"name": args.name, "dataset": args.dataset, **trained,
              "seconds": seconds, "threads": torch.get_num_threads(), "amp": args.amp, "sigma_eps": args.sigma_eps,
              "metrics": args.metrics, **metrics(vae, selector, val.subset(0, args.val_images), sigma_eps=args.sigma_eps)}
    with open(args.out, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
