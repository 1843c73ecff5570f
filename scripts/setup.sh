#!/usr/bin/env bash
# Create .venv and install gradhealth with its test, demo and integration extras.
# torch is installed first, pinned to the CPU build 2.13.0, so nothing ever resolves a CUDA build;
# every later install is constrained by scripts/constraints.txt (torch==2.13.0).
# The installer is uv (bootstrapped into .venv with pip: seconds instead of minutes of pip's
# resolver); set GRADHEALTH_INSTALLER=pip, or where uv cannot be had, plain pip does the same.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
FIND=()
[ -d /opt/wheels ] && FIND=(--find-links /opt/wheels)
EXTRAS=".[test,demo,lightning,transformers,tensorboard,mlflow]"
if [ "${GRADHEALTH_INSTALLER:-uv}" = uv ] && { [ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv; }; then
    UV=(.venv/bin/uv pip install -q --python .venv/bin/python "${FIND[@]}")
    "${UV[@]}" "torch==2.13.0"
    "${UV[@]}" -c scripts/constraints.txt -e "$EXTRAS"
else
    echo "setup: installing with pip (slower)" >&2
    .venv/bin/python -m pip install -q "${FIND[@]}" "torch==2.13.0"
    .venv/bin/python -m pip install -q "${FIND[@]}" -c scripts/constraints.txt -e "$EXTRAS"
fi
.venv/bin/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'setup: torch {v} replaced the pinned 2.13.0')"
