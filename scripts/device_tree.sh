#!/usr/bin/env bash
# The `device` tool sends the working tree (tracked and untracked-not-ignored files and the
# carried MNIST archive, 64 MiB at most). Each bundled PuVAE is 54 MiB (MNIST, Fashion-MNIST),
# so the weights that scripts/device_session.sh does not read stay behind:
#   scripts/device_tree.sh stash      # before the device call: moves them to $STASH
#   scripts/device_tree.sh restore    # after it (or: git checkout -- hub)
set -eu
STASH=${STASH:-/tmp/puvae-device-stash}
FILES=(hub/puvae-mnist/model.safetensors hub/puvae-fashion-mnist/model.safetensors)  # defense-gan-mnist (3 MiB) stays: stage gan-eval reads it
case ${1:-} in
    stash)
        if [ ! -f .gpu/mnist-raw.tar.gz ]; then  # MNIST for the device, carried: run(carry=[".gpu"])
            raw=${PUVAE_DEFENSE_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/puvae-defense/data}/MNIST/raw
            mkdir -p .gpu && tar czf .gpu/mnist-raw.tar.gz -C "$raw" . && echo "wrote .gpu/mnist-raw.tar.gz from $raw"
        fi
        for f in "${FILES[@]}"; do
            if [ -f "$f" ]; then mkdir -p "$STASH/$(dirname "$f")"; mv "$f" "$STASH/$f"; echo "stashed $f"; fi
        done ;;
    restore)
        for f in "${FILES[@]}"; do
            if [ -f "$STASH/$f" ]; then mv "$STASH/$f" "$f"; echo "restored $f"; fi
        done ;;
    *) echo "usage: $0 stash|restore" >&2; exit 2 ;;
esac
bytes=$(git ls-files -z | while IFS= read -r -d '' f; do [ -f "$f" ] && stat -c %s "$f"; done | awk '{s += $1} END {print s}')
carried=$(stat -c %s .gpu/mnist-raw.tar.gz 2>/dev/null || echo 0)
echo "tracked files present: $(( bytes / 1048576 )) MiB, carried MNIST: $(( carried / 1048576 )) MiB (limit 64 MiB)"
