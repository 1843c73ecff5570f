#!/usr/bin/env bash
# Create .venv and install gradhealth with its test extras.
# torch is installed first, pinned to the CPU build 2.13.0, so pip never resolves a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
FIND=""
[ -d /opt/wheels ] && FIND="--find-links /opt/wheels"
python -m pip install -q $FIND "torch==2.13.0"
# the integrations' extras too (tests/integrations); the constraints file keeps torch at 2.13.0
python -m pip install -q $FIND -c scripts/constraints.txt -e ".[test,demo,lightning,transformers,tensorboard,mlflow]"
