#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), then the main job: the bundled puvae-mnist defending
# classifier A on the first 300 MNIST test images under targeted FGSM and iFGSM (eps 0.3).
# Prints the table and writes runs/demo/{demo.json,demo.md,projections.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP=${SETUP:-demo} ./scripts/setup.sh
exec .venv/bin/puvae-defense evaluate --classifiers A=mnist-classifier-a --attacks FGSM iFGSM \
    --limit 300 --adaptive-limit 0 --batch-size 100 --out runs/demo --name demo \
    --figure runs/demo/projections.png "$@"
