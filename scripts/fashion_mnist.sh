#!/usr/bin/env bash
# Fashion-MNIST from data to Table 3, in resumable stages (each skips what is already done, so
# a run killed by a session's end continues where it stopped). Hours on a 2-core CPU.
#
#   scripts/fashion_mnist.sh classifiers  # source, A and B (65 min here) into hub/, with model cards
#   scripts/fashion_mnist.sh train        # PuVAE (robust and robust-kl03, 8 epochs bf16, 50 min each here),
#                                         # the better on validation (scored by selectors/) into hub/;
#                                         # reuses the classifiers in hub/ and adds their accuracy through it
#   scripts/fashion_mnist.sh finetune     # one epoch of finetune-pgd-kl03 (3-step PGD inputs) from the PuVAE
#                                         # in hub/ into hub/ (about 25 min in fp32 here); skipped when the
#                                         # card in hub/ already names that recipe
#   scripts/fashion_mnist.sh baselines    # MagNet's reformer, adversarially trained A and B, Defense-GAN's
#                                         # generator (4,000 WGAN-GP steps as for MNIST, about 80 min here)
#   scripts/fashion_mnist.sh bundle       # register the hub/ models, measure the baselines behind A and B
#   scripts/fashion_mnist.sh table3       # Table 3 on the full test set and adaptive attacks (BPDA, ...) on
#                                         # 1,000 images, bundled models; Defense-GAN's cells (L = 200,
#                                         # R = 20, bf16) on the first 500 test images, over 70 min per classifier here
#
# WORK (default runs/fashion-mnist) holds the training runs and checkpoints. The finished
# folders go straight into hub/, so a stage's output can be committed when it is final and a
# later session (which may start without runs/) reuses it instead of training it again.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/fashion-mnist}
CACHE=${CACHE:-runs/adv_cache}
PY=.venv/bin/python
CLI=.venv/bin/puvae-defense
MODELS=(fashion-mnist-source fashion-mnist-classifier-a fashion-mnist-classifier-b puvae-fashion-mnist)

current() {  # current FILE: false when FILE was measured on other PuVAE weights than the bundled ones
    "$PY" - "$1" <<'EOF'
import json, sys
sys.path.insert(0, "scripts")
from render_docs import bundled_fingerprint
measured = json.load(open(sys.argv[1]))["meta"]["defense_sources"].get("puvae", {}).get("fingerprint")
sys.exit(measured is not None and measured != bundled_fingerprint("puvae-fashion-mnist"))
EOF
}

report() {  # report NAME ARGS...: one evaluate run, skipped when its results file exists and is current
    local name=$1; shift
    # A report run ahead of the others it is merged with waits in docs/results/pending/ (not rendered).
    if [ -f "docs/results/pending/$name.json" ] && current "docs/results/pending/$name.json"; then
        mv "docs/results/pending/$name".* docs/results/
    fi
    if [ -f "docs/results/$name.json" ]; then
        current "docs/results/$name.json" && { echo "$name: done"; return; }
        echo "$name: measured on earlier puvae-fashion-mnist weights, running it again"
    fi
    "$CLI" evaluate --dataset fashion-mnist --cache "$CACHE" --name "$name" --out docs/results --quiet "$@"
}

case ${1:-} in
    classifiers)
        "$CLI" data fetch fashion-mnist
        "$PY" scripts/train_mnist.py --dataset fashion-mnist --classifiers-only --out hub --work "$WORK" ;;
    train)
        "$CLI" data fetch fashion-mnist
        "$PY" scripts/train_mnist.py --dataset fashion-mnist --recipes robust robust-kl03 --epochs 8 --amp bf16 \
            --out hub --work "$WORK" ;;
    finetune)
        card=hub/puvae-fashion-mnist/README.md
        if grep -q finetune-pgd-kl03 "$card"; then echo "puvae-fashion-mnist: already fine-tuned ($card)"; exit 0; fi
        "$PY" scripts/train_mnist.py --dataset fashion-mnist --recipes finetune-pgd-kl03 --epochs 1 \
            --init hub/puvae-fashion-mnist --out hub --work "$WORK" ;;
    baselines)
        out=runs/baselines
        [ -f "$out/magnet-fashion-mnist/model.safetensors" ] ||
            "$CLI" train-baseline magnet --dataset fashion-mnist --out "$out/magnet-fashion-mnist"
        for arch in A B; do
            name=fashion-mnist-adv-classifier-${arch,,}
            [ -f "$out/$name/model.safetensors" ] ||
                "$CLI" train-baseline adv-training --dataset fashion-mnist --arch "$arch" --out "$out/$name"
        done
        [ -f "$out/defense-gan-fashion-mnist/model.safetensors" ] ||
            "$CLI" train-baseline defense-gan --dataset fashion-mnist --generator-steps 4000 --val-images 32 \
                --checkpoint-dir "$WORK/gan-checkpoints" --out "$out/defense-gan-fashion-mnist" ;;
    bundle)
        for name in "${MODELS[@]}"; do
            [ -f "hub/$name/model.safetensors" ] || { echo "hub/$name is missing: run the classifiers and train stages" >&2; exit 1; }
        done
        "$PY" scripts/build_registry.py  # registers them, so the baselines are measured behind the bundled A and B
        "$PY" scripts/finish_baselines.py --dataset fashion-mnist --gan-images 100 ;;
    table3)  # cheapest reports first, so a session that ends mid-stage keeps the most cells
        both=(A=fashion-mnist-classifier-a B=fashion-mnist-classifier-b)
        report table3_magnet_fashion-mnist --defenses magnet --classifiers "${both[@]}" --adaptive-limit 0
        report table3_advtr_transfer_fashion-mnist --defenses adv-training-transfer --classifiers "${both[@]}" \
            --adaptive-limit 0
        for arch in A B; do
            net=${arch}=fashion-mnist-classifier-${arch,,}
            figure=(); [ "$arch" = A ] && figure=(--figure docs/projections_fashion-mnist.png)
            report "table3_fashion-mnist_$arch" --defenses puvae --classifiers "$net" --adaptive-limit 0 "${figure[@]}"
            report "adaptive_fashion-mnist_$arch" --classifiers "$net" --attacks --adaptive bpda distance \
                --adaptive-limit 1000 --batch-size 250
            report "adaptive_advtr_fashion-mnist_$arch" --defenses adv-training --classifiers "$net" --attacks \
                --adaptive full --adaptive-limit 1000 --batch-size 250
        done
        report adaptive_magnet_fashion-mnist --defenses magnet --classifiers "${both[@]}" --attacks \
            --adaptive full bpda --adaptive-limit 1000 --batch-size 250
        for arch in A B; do  # white-box attacks on the adversarially trained classifiers: CW makes these the longest
            report "table3_advtr_fashion-mnist_$arch" --defenses adv-training \
                --classifiers "${arch}=fashion-mnist-classifier-${arch,,}" --adaptive-limit 0
        done
        if [ -f hub/defense-gan-fashion-mnist/model.safetensors ]; then  # the full set is a GPU job (device_session.sh)
            for arch in A B; do
                report "table3_defense_gan_fashion-mnist_$arch" --defenses defense-gan \
                    --classifiers "${arch}=fashion-mnist-classifier-${arch,,}" --limit 500 --adaptive-limit 0 --batch-size 100 \
                    --gan-precision bf16 --progress "$WORK/table3_defense_gan_$arch.progress.json"
            done
        fi
        "$PY" scripts/render_docs.py ;;
    *) echo "usage: $0 classifiers|train|finetune|baselines|bundle|table3" >&2; exit 2 ;;
esac
