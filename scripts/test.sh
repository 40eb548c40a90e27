#!/usr/bin/env bash
# The test command: set up (idempotent), then run every test, the slow ones on the real model too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Spinning OpenMP threads collapse llama.cpp when the server and test processes share the cores.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m pytest -q "$@"
