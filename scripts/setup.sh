#!/usr/bin/env bash
# Creates ./.venv with PyTorch and stgnn-launch (editable). `--test` adds the test tools.
#   TORCH_SPEC  the torch requirement to install first (default torch==2.13.0, the CPU build here);
#               on a GPU cluster set e.g. TORCH_SPEC="torch==2.5.1" or leave torch to your site's module.
#   PYTHON      the interpreter to build the venv from (default python3, 3.10 or newer)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "stgnn-launch installed in $(pwd)/.venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
