#!/usr/bin/env bash
# Certified robustness (docs/smoothing.md): randomized smoothing of classifiers A and B of $DATASET
# (mnist, the default, or fashion-mnist) alone, behind puvae-DATASET, behind puvae-DATASET-smooth,
# behind MagNet's reformer, and the anchor retrained with Gaussian noise. Resumable stages (each
# skips what is done):
#
#   scripts/smoothing.sh classifiers   # A and B retrained with Gaussian noise at each sigma (Cohen et al.'s recipe,
#                                      # the shipped A/B's epochs and seed; about 6 min each on MNIST here, 27 on
#                                      # Fashion-MNIST) into anchors/ (fp16, tracked: commit each once)
#   scripts/smoothing.sh denoiser      # puvae-DATASET-smooth: fine-tune puvae-DATASET with recipe "smooth" on all
#                                      # 50,000 training images (one epoch) into $WORK/puvae-DATASET-smooth
#   scripts/smoothing.sh bundle        # the denoiser into hub/puvae-DATASET-smooth with its measured card
#                                      # (scripts/bundle_smooth.py) and the registry
#   scripts/smoothing.sh certify [CLASSIFIER SIGMA CONFIG...]
#                                      # certify the first $LIMIT test images (n = $N, n0 = 100, alpha = 0.001);
#                                      # CONFIG in: alone puvae smooth magnet retrained; without arguments every
#                                      # classifier, sigma and config
#
# SIGMAS and CLASSIFIERS (default "0.25 0.5 1.0" on MNIST, "0.25 0.5" on Fashion-MNIST, and "A B")
# narrow the classifiers and certify stages. Reports go to docs/results/certify/DATASET_CLF_CONFIG_sigmaS.json,
# their progress files to docs/results/certify/progress/ (so a stopped run, or a later session,
# resumes them; a larger LIMIT grows a finished one).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-mnist}
case $DATASET in
    mnist) DEFAULT_SIGMAS="0.25 0.5 1.0" ;;
    fashion-mnist) DEFAULT_SIGMAS="0.25 0.5" ;;
    *) echo "DATASET=$DATASET: smoothing runs on mnist or fashion-mnist" >&2; exit 2 ;;
esac
WORK=${WORK:-runs/smoothing}
LIMIT=${LIMIT:-200}
N=${N:-10000}
DEVICE=${DEVICE:-cpu}
BATCH=${BATCH:-1000}
CLI=.venv/bin/puvae-defense
OUT=docs/results/certify
read -r -a SIGMAS <<< "${SIGMAS:-$DEFAULT_SIGMAS}"        # e.g. SIGMAS=0.5 for one noise level
read -r -a CLASSIFIERS <<< "${CLASSIFIERS:-A B}"
# The denoiser: the bundled copy once it is committed, else the one trained here.
DENOISER=puvae-$DATASET-smooth
SMOOTH=${SMOOTH:-$( [ -f "hub/$DENOISER/model.safetensors" ] && echo "$DENOISER" || echo "$WORK/$DENOISER")}

shipped() {  # shipped CLASSIFIER: the registered name of the unmodified classifier
    echo "$DATASET-classifier-$(echo "$1" | tr 'AB' 'ab')"
}

retrained() {  # retrained CLASSIFIER SIGMA: the folder of the noise-trained classifier (tracked in anchors/,
    # as selectors/ are, so that every session certifies the same network and resumes its progress)
    echo "anchors/$(shipped "$1")-noise$2"
}

certify_one() {  # certify_one CLASSIFIER SIGMA CONFIG
    local clf=$1 sigma=$2 config=$3 net purifier
    net=$(shipped "$clf")
    case $config in
        alone) purifier=none ;;
        puvae) purifier=puvae-$DATASET ;;
        smooth) purifier=$SMOOTH ;;
        magnet) purifier=magnet-$DATASET ;;
        retrained) purifier=none; net=$(retrained "$clf" "$sigma") ;;
        *) echo "unknown configuration $config (alone puvae smooth magnet retrained)" >&2; exit 2 ;;
    esac
    local name="${DATASET}_${clf}_${config}_sigma${sigma}"
    "$CLI" certify --dataset "$DATASET" --classifier "$net" --purifier "$purifier" --sigma "$sigma" --n "$N" --n0 100 \
        --alpha 0.001 --limit "$LIMIT" --batch-size "$BATCH" --device "$DEVICE" --out "$OUT" --name "$name" \
        --progress "$OUT/progress/$name.json" --quiet
}

case ${1:-} in
    classifiers)
        for clf in "${CLASSIFIERS[@]}"; do
            # the shipped classifier's epochs and seed, from its metadata
            read -r epochs seed < <(.venv/bin/python -c "import json, sys; t = json.load(open(sys.argv[1]))['metadata']['training']; \
print(t['epochs'], t['seed'])" "hub/$(shipped "$clf")/config.json")
            for sigma in "${SIGMAS[@]}"; do
                folder=$(retrained "$clf" "$sigma")
                [ -f "$folder/model.safetensors" ] && { echo "$folder: done"; continue; }
                "$CLI" train-classifier --dataset "$DATASET" --arch "$clf" --epochs "$epochs" --seed "$seed" \
                    --noise-sigma "$sigma" --out "$folder"
            done
        done ;;
    denoiser)
        [ -f "$WORK/$DENOISER/model.safetensors" ] && { echo "$WORK/$DENOISER: done"; exit 0; }
        "$CLI" train --dataset "$DATASET" --init "puvae-$DATASET" --recipe smooth --source "$DATASET-source" \
            --out "$WORK/$DENOISER" --checkpoint-dir "$WORK/$DENOISER-checkpoints" ;;
    bundle)
        .venv/bin/python scripts/bundle_smooth.py "$WORK/$DENOISER" --dataset "$DATASET" ;;
    certify)
        shift
        if [ $# -eq 3 ]; then
            certify_one "$@"
        elif [ $# -eq 0 ]; then
            for sigma in "${SIGMAS[@]}"; do
                for clf in "${CLASSIFIERS[@]}"; do
                    for config in alone retrained magnet smooth puvae; do
                        certify_one "$clf" "$sigma" "$config"
                    done
                done
            done
        else
            echo "usage: $0 certify [CLASSIFIER SIGMA CONFIG]" >&2; exit 2
        fi ;;
    *)
        sed -n '2,22p' "$0"; exit 2 ;;
esac
