#!/usr/bin/env bash
# Set up .venv at the repository root: pinned torch/torchvision, the package with its
# dev, eval, deploy (ONNX) and interop (ART) extras, and the attack libraries we
# cross-check against (SETUP=demo: the package and its eval extra only, what the demo
# needs). Safe to run again (each step is a no-op when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip_install torch==2.14.1 torchvision==0.29.1
if [ "${SETUP:-full}" = demo ]; then  # the demo needs the package and matplotlib (its figure) only
    pip_install -e ".[eval]"
else
    pip_install -e ".[dev,eval,deploy,interop]"
    # Attack libraries for the cross-checks (tests/test_crosscheck.py), without their pins: torchattacks
    # 3.5.1 pins requests 2.25 and CleverHans 4.0.0 pulls TensorFlow Probability; we use neither part.
    pip_install --no-deps torchattacks==3.5.1 cleverhans==4.0.0
fi
.venv/bin/puvae-defense data fetch mnist
