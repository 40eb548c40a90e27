#!/usr/bin/env bash
# The test command: set up (idempotent), then run every test, the slow ones on the real model too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
