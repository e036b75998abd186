#!/usr/bin/env bash
# The README's test command, alone in a fresh terminal on a fresh clone: creates (or reuses) .venv,
# installs what is missing (torch, the project and the model files through scripts/install.sh; the
# test and cluster extras (Ray Serve), which the user install leaves out), checks the import layers
# (lint-imports, the contract in pyproject.toml), then runs pytest. Extra arguments go to pytest (-x, -k name, -m "not slow",
# tests/test_x.py ...).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, engines, streamer, calibration" >/dev/null 2>&1; then
    PYTHON="$PY" bash scripts/install.sh
fi
if ! "$PY" -c "import pytest, pytest_timeout, importlinter, onnxruntime, ai_edge_litert, psutil, scipy, ray" >/dev/null 2>&1; then
    "$PY" -m pip install -q -e ".[test,cluster]"
fi
export GLOG_minloglevel=${GLOG_minloglevel:-3}
"$VENV/bin/lint-imports"
for arg in "$@"; do
    case "$arg" in tests/*|./tests/*) exec "$PY" -m pytest -q "$@" ;; esac   # files given: only those
done
exec "$PY" -m pytest -q tests "$@"
