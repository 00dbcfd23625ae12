#!/usr/bin/env bash
# Certified robustness on MNIST (docs/smoothing.md): randomized smoothing of classifiers A and B,
# alone, behind puvae-mnist, behind puvae-mnist-smooth, behind MagNet's reformer, and the anchor
# retrained with Gaussian noise. Resumable stages (each skips what is done):
#
#   scripts/smoothing_mnist.sh classifiers   # A and B retrained with Gaussian noise at each sigma (Cohen et al.'s
#                                            # recipe, the shipped A/B's epochs and seed; about 6 min each here)
#                                            # into anchors/ (fp16, tracked: commit each once)
#   scripts/smoothing_mnist.sh denoiser      # puvae-mnist-smooth: fine-tune puvae-mnist with recipe "smooth" on all
#                                            # 50,000 training images (one epoch) into $WORK/puvae-mnist-smooth
#   scripts/smoothing_mnist.sh bundle        # the denoiser into hub/puvae-mnist-smooth with its measured card
#                                            # (scripts/bundle_smooth.py) and the registry
#   scripts/smoothing_mnist.sh certify [CLASSIFIER SIGMA CONFIG...]
#                                            # certify the first $LIMIT test images (n = $N, n0 = 100,
#                                            # alpha = 0.001); CONFIG in: alone puvae smooth magnet retrained;
#                                            # without arguments every classifier, sigma and config
#
# SIGMAS and CLASSIFIERS (default "0.25 0.5 1.0" and "A B") narrow the classifiers and certify stages.
# Reports go to docs/results/certify/, their progress files to docs/results/certify/progress/ (so a
# stopped run, or a later session, resumes them; a larger LIMIT grows a finished one).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/smoothing}
LIMIT=${LIMIT:-200}
N=${N:-10000}
DEVICE=${DEVICE:-cpu}
BATCH=${BATCH:-1000}
CLI=.venv/bin/puvae-defense
OUT=docs/results/certify
read -r -a SIGMAS <<< "${SIGMAS:-0.25 0.5 1.0}"        # e.g. SIGMAS=0.5 for one noise level
read -r -a CLASSIFIERS <<< "${CLASSIFIERS:-A B}"
# The denoiser: the bundled copy once it is committed, else the one trained here.
SMOOTH=${SMOOTH:-$( [ -f hub/puvae-mnist-smooth/model.safetensors ] && echo puvae-mnist-smooth || echo "$WORK/puvae-mnist-smooth")}

retrained() {  # retrained CLASSIFIER SIGMA: the folder of the noise-trained classifier (tracked in anchors/,
    # as selectors/ are, so that every session certifies the same network and resumes its progress)
    echo "anchors/mnist-classifier-$(echo "$1" | tr 'AB' 'ab')-noise$2"
}

certify_one() {  # certify_one CLASSIFIER SIGMA CONFIG
    local clf=$1 sigma=$2 config=$3 net purifier
    net=mnist-classifier-$(echo "$clf" | tr 'AB' 'ab')
    case $config in
        alone) purifier=none ;;
        puvae) purifier=puvae-mnist ;;
        smooth) purifier=$SMOOTH ;;
        magnet) purifier=magnet-mnist ;;
        retrained) purifier=none; net=$(retrained "$clf" "$sigma") ;;
        *) echo "unknown configuration $config (alone puvae smooth magnet retrained)" >&2; exit 2 ;;
    esac
    local name="mnist_${clf}_${config}_sigma${sigma}"
    "$CLI" certify --classifier "$net" --purifier "$purifier" --sigma "$sigma" --n "$N" --n0 100 --alpha 0.001 \
        --limit "$LIMIT" --batch-size "$BATCH" --device "$DEVICE" --out "$OUT" --name "$name" \
        --progress "$OUT/progress/$name.json" --quiet
}

case ${1:-} in
    classifiers)
        for clf in "${CLASSIFIERS[@]}"; do
            for sigma in "${SIGMAS[@]}"; do
                folder=$(retrained "$clf" "$sigma")
                [ -f "$folder/model.safetensors" ] && { echo "$folder: done"; continue; }
                "$CLI" train-classifier --arch "$clf" --epochs 5 --seed 0 --noise-sigma "$sigma" --out "$folder"
            done
        done ;;
    denoiser)
        [ -f "$WORK/puvae-mnist-smooth/model.safetensors" ] && { echo "$WORK/puvae-mnist-smooth: done"; exit 0; }
        "$CLI" train --init puvae-mnist --recipe smooth --source mnist-source --out "$WORK/puvae-mnist-smooth" \
            --checkpoint-dir "$WORK/puvae-mnist-smooth-checkpoints" ;;
    bundle)
        .venv/bin/python scripts/bundle_smooth.py "$WORK/puvae-mnist-smooth" ;;
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
        sed -n '2,21p' "$0"; exit 2 ;;
esac
