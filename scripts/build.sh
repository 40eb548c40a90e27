#!/usr/bin/env bash
# The main job: set up (idempotent), then build the tomato assistant on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/farmslm build --profile quick --out runs/quick "$@"
