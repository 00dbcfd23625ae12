#!/usr/bin/env bash
# The `device` tool sends the working tree (tracked and untracked-not-ignored files and the
# carried MNIST archive, 64 MiB at most). Each bundled PuVAE is 54 MiB (MNIST, Fashion-MNIST),
# so the weights that scripts/device_session.sh does not read stay behind:
#   scripts/device_tree.sh stash          # before the device call: moves them to $STASH
#   scripts/device_tree.sh stash certify [DATASET [CLASSIFIERS]]
#                                         # for STAGES=certify (CERT_DATASET=DATASET, default mnist): keeps
#                                         # puvae-DATASET-smooth and DATASET's classifiers (CLASSIFIERS, default
#                                         # "a b"; the stage skips the others), stashes every other model, carries
#                                         # DATASET's test split only. Fashion-MNIST's test split is 4 MiB, so
#                                         # there it fits with one classifier: `stash certify fashion-mnist a`
#   scripts/device_tree.sh restore        # after it (or: git checkout -- hub anchors)
set -eu
STASH=${STASH:-/tmp/puvae-device-stash}
# Every bundled PuVAE (54 MiB each), whatever is registered, and the certification anchors (2 MiB each; only
# scripts/smoothing.sh on the CPU reads them); the Defense-GANs (3 MiB each) stay: gan-eval reads them
mapfile -t FILES < <(git ls-files 'hub/puvae-*/model.safetensors' 'anchors/*/model.safetensors')
CERT_DATASET=${3:-mnist}
if [ "${2:-}" = certify ]; then  # the certify stage reads DATASET's classifiers and its smoothing denoiser only
    keep=" hub/puvae-$CERT_DATASET-smooth/model.safetensors "
    for clf in ${4:-a b}; do keep+="hub/$CERT_DATASET-classifier-$clf/model.safetensors "; done
    [ -f "hub/puvae-$CERT_DATASET-smooth/model.safetensors" ] || { echo "no hub/puvae-$CERT_DATASET-smooth to certify with" >&2; exit 2; }
    FILES=(.gpu/mnist-raw.tar.gz .gpu/mnist-test.tar.gz .gpu/fashion-mnist-test.tar.gz)  # re-made below for DATASET
    while IFS= read -r f; do [[ $keep == *" $f "* ]] || FILES+=("$f"); done < <(git ls-files '*model.safetensors')
fi
case ${1:-} in
    stash)
        data=${PUVAE_DEFENSE_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/puvae-defense/data}
        if [ "${2:-}" != certify ] && [ ! -f .gpu/mnist-raw.tar.gz ]; then  # MNIST for the device, carried: run(carry=[".gpu"])
            mkdir -p .gpu && tar czf .gpu/mnist-raw.tar.gz -C "$data/MNIST/raw" . && echo "wrote .gpu/mnist-raw.tar.gz"
        fi
        # Fashion-MNIST's test split only (4 MiB; all of it would pass the limit): stage gan-eval-fashion
        if [ "${2:-}" != certify ] && [ ! -f .gpu/fashion-mnist-test.tar.gz ] && [ -f "$data/FashionMNIST/raw/t10k-images-idx3-ubyte" ]; then
            tar czf .gpu/fashion-mnist-test.tar.gz -C "$data/FashionMNIST/raw" t10k-images-idx3-ubyte t10k-labels-idx1-ubyte &&
                echo "wrote .gpu/fashion-mnist-test.tar.gz"
        fi
        for f in "${FILES[@]}"; do
            if [ -f "$f" ]; then mkdir -p "$STASH/$(dirname "$f")"; mv "$f" "$STASH/$f"; echo "stashed $f"; fi
        done
        if [ "${2:-}" = certify ]; then  # the test split of the data set it certifies (after the stash moved any other)
            raw=MNIST; [ "$CERT_DATASET" = fashion-mnist ] && raw=FashionMNIST
            mkdir -p .gpu && tar czf ".gpu/$CERT_DATASET-test.tar.gz" -C "$data/$raw/raw" t10k-images-idx3-ubyte \
                t10k-labels-idx1-ubyte && echo "wrote .gpu/$CERT_DATASET-test.tar.gz"
        fi ;;
    restore)  # whatever either mode moved
        for f in $(cd "$STASH" 2>/dev/null && find . -type f | sed 's|^\./||'); do
            if [ -f "$STASH/$f" ]; then mv "$STASH/$f" "$f"; echo "restored $f"; fi
        done ;;
    *) echo "usage: $0 stash|restore" >&2; exit 2 ;;
esac
bytes=$(git ls-files -z | while IFS= read -r -d '' f; do [ -f "$f" ] && stat -c %s "$f"; done | awk '{s += $1} END {print s}')
carried=$(cat .gpu/*.tar.gz 2>/dev/null | wc -c)
echo "tracked files present: $(( bytes / 1048576 )) MiB, carried data (.gpu): $(( carried / 1048576 )) MiB (limit 64 MiB)"
if [ "${1:-}" = stash ] && [ $(( bytes + carried )) -gt $(( 64 * 1048576 )) ]; then
    echo "over the device tool's 64 MiB by $(( (bytes + carried - 64 * 1048576) / 1024 )) KiB: stash more" >&2; exit 1
fi
