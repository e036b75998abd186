#!/usr/bin/env bash
# The test command, alone on a fresh clone in a fresh terminal: creates (or reuses) .venv, installs what
# is missing (torch and the project through scripts/install.sh; the test extras always), then checks the
# import layers and runs the tests. Extra arguments go to pytest (e.g. -x, -k name, tests/test_x.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, engines, streamer" >/dev/null 2>&1; then
    PYTHON="$PY" bash scripts/install.sh
fi
# test extras (pytest, import-linter, ...): installed here because scripts/install.sh is the user install
if ! "$PY" -c "import pytest, pytest_timeout, importlinter, onnxruntime, ai_edge_litert, psutil, scipy" >/dev/null 2>&1; then
    "$PY" -m pip install -q -e ".[test]"
fi
export GLOG_minloglevel=${GLOG_minloglevel:-3}
"$VENV/bin/lint-imports"
if [ "$#" -gt 0 ] && [[ "$1" != -* ]]; then
    exec "$PY" -m pytest -q "$@"   # test files or names given: only those
fi
exec "$PY" -m pytest -q tests "$@"
