#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python examples/quickstart.py "$@"
