#!/usr/bin/env bash
# Idempotent setup for a fresh machine: system packages, .venv with the pinned dependencies, farmslm.
# A stamp (.venv/.setup-stamp) holds the lock file's hash, so a second run costs a second.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
fc-list 2>/dev/null | grep -qi nanum || need_apt+=(fonts-nanum)  # Korean glyphs for the page's browser test
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ] && [ "${FARMSLM_SKIP_APT:-0}" != 1 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing pinned dependencies into .venv (llama-cpp-python compiles once, ~4 min on 2 cores)"
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  .venv/bin/pip install -q --upgrade pip wheel setuptools
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  echo "$stamp" > .venv/.setup-stamp
fi
