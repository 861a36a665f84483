#!/usr/bin/env bash
# Lint and type-check the tree; the configuration is pyproject.toml's [tool.ruff] and [tool.mypy].
# scripts/test.sh runs this before pytest, so CI fails on a finding; .pre-commit-config.yaml runs it too.
# Needs ruff and mypy, pinned in the `test` extra: run it in the test venv (.venv-test), or set
# SEEDSTREAM_LINT_PYTHON to a python that has them.
# Usage: bash scripts/lint.sh [ruff|mypy]   (both when not told)
#   SEEDSTREAM_LINT_FORMAT=0  skips `ruff format --check`
#   SEEDSTREAM_LINT_TARGET_PYTHON=PATH  the python whose packages (torch, grpc) mypy reads, when the linters
#                                       live in another venv than the project's dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${SEEDSTREAM_LINT_PYTHON:-python}"
WHAT="${1:-all}"

if [ "$WHAT" = all ] || [ "$WHAT" = ruff ]; then
    echo "lint: ruff check"
    "$PY" -m ruff check --no-cache .
    if [ "${SEEDSTREAM_LINT_FORMAT:-1}" = 1 ]; then
        echo "lint: ruff format --check"
        "$PY" -m ruff format --check --no-cache .
    fi
fi

if [ "$WHAT" = all ] || [ "$WHAT" = mypy ]; then
    # mypy checks the seedstream.* namespace, not the folders: lay it out as pyproject's package-dir does.
    ROOT=build/mypy-root/seedstream
    mkdir -p "$ROOT"
    for pkg in sampler server client; do ln -sfn "../../../$pkg" "$ROOT/$pkg"; done
    ln -sfn ../../../proto/seedstream/v1 "$ROOT/v1"
    echo "lint: mypy (strict on the packages in [tool.mypy])"
    MYPYPATH=build/mypy-root "$PY" -m mypy --cache-dir build/mypy-cache \
        ${SEEDSTREAM_LINT_TARGET_PYTHON:+--python-executable "$SEEDSTREAM_LINT_TARGET_PYTHON"}
fi
