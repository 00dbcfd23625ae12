#!/usr/bin/env bash
# Set up .venv at the repository root: pinned torch/torchvision, the package with its
# dev, eval and deploy (ONNX) extras. Safe to run again (each step is a no-op when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip_install torch==2.14.1 torchvision==0.29.1
pip_install -e ".[dev,eval,deploy]"
.venv/bin/puvae-defense data fetch mnist
