#!/usr/bin/env bash
# Creates ./.venv with PyTorch and stgnn-launch (editable). `--test` adds the test tools.
#   TORCH_SPEC  the torch requirement to install first (default torch==2.13.0, the CPU build here);
#               on a GPU cluster set e.g. TORCH_SPEC="torch==2.5.1", or TORCH_SPEC=system to use the
#               site's torch: a venv with --system-site-packages over PYTHON, and no torch installed.
#   PYTHON      the interpreter to build the venv from (default python3, 3.10 or newer); with
#               TORCH_SPEC=system, the one that imports the site's torch (after `module load pytorch`).
#               If PYTHON is itself a venv's (or virtualenv's) interpreter, a new venv would see only its
#               base interpreter's packages: its site-packages are then added to .venv by a .pth file.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
if [ "$torch_spec" = "system" ]; then
    if ! where="$("$python" -c 'import sys, torch; print(sys.executable, torch.__version__)' 2>/dev/null)"; then
        echo "setup.sh: TORCH_SPEC=system: expected a torch that $python can import, found none" \
             "(load the site's PyTorch module first, or set PYTHON to the interpreter that has it)" >&2
        exit 1
    fi
    echo "TORCH_SPEC=system: torch ${where#* } of ${where%% *}; a venv over it, no torch installed"
    "$python" -m venv --system-site-packages .venv
    # A venv made from a venv's interpreter has its base interpreter's site-packages, not that venv's.
    "$python" - .venv <<'PY'
import site, sys, sysconfig
from pathlib import Path
if sys.prefix != sys.base_prefix:  # a venv (or virtualenv): hand its site-packages on to the new venv
    new = Path(sys.argv[1]).resolve()
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(new), "platbase": str(new)}))
    dirs = dict.fromkeys(p for p in site.getsitepackages() if Path(p).is_dir())
    (purelib / "_stgnn_outer_venv.pth").write_text("".join(f"{d}\n" for d in dirs))
    print(f"PYTHON is the venv {sys.prefix}: its site-packages are on .venv's path ({purelib}/_stgnn_outer_venv.pth)")
PY
    if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
        echo "setup.sh: TORCH_SPEC=system: expected .venv to import torch like $python, found it cannot" >&2
        exit 1
    fi
else
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "$torch_spec"
fi
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "stgnn-launch installed in $(pwd)/.venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
