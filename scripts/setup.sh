#!/usr/bin/env bash
# Create .venv and install metablocks with everything the tests and the demo need. Idempotent.
# EXTRAS=dev,ray also installs Ray (for the slow Ray-cluster test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch + torchvision first, pinned: on this machine they come from local wheels (timm needs torchvision);
# an unpinned torch would pull a multi-GB CUDA build from the registry.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${EXTRAS:-dev}]"
