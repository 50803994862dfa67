"""scripts/setup.sh with TORCH_SPEC=system: a venv over the site's torch (compute nodes without network),
run on a copy of the checkout; nothing is downloaded (torch is the one of this test's interpreter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

SCRIPT = REPO / "scripts" / "setup.sh"


def checkout_copy(tmp_path: Path) -> Path:
    """What setup.sh needs of the checkout: the script, pyproject.toml, README.md and the package."""
    copy = tmp_path / "checkout"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, copy / "scripts" / "setup.sh")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, copy / name)
    shutil.copytree(REPO / "stgnn_launch", copy / "stgnn_launch", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def setup(copy: Path, python: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(copy / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(copy), "TORCH_SPEC": "system", "PYTHON": python})


def test_system_torch_refused_in_one_line_where_python_has_none(tmp_path):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("needs a python3 without torch in /usr/bin")
    copy = tmp_path / "checkout"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, copy / "scripts" / "setup.sh")
    proc = setup(copy, python)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"setup.sh: TORCH_SPEC=system: expected a torch that {python} can import, "
                                        "found none (load the site's PyTorch module first, or set PYTHON to the "
                                        "interpreter that has it)"]
    assert not (copy / ".venv").exists()


@pytest.mark.slow
def test_system_torch_venv_over_a_venv_sees_its_torch(tmp_path):
    """PYTHON is this test's venv interpreter (a venv over a venv): .venv gets its packages through a .pth."""
    import torch

    if sys.prefix == sys.base_prefix:
        pytest.skip("runs from a venv's interpreter")
    copy = checkout_copy(tmp_path)
    proc = setup(copy, sys.executable)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"torch {torch.__version__}" in proc.stdout and "no torch installed" in proc.stdout
    assert "include-system-site-packages = true" in (copy / ".venv" / "pyvenv.cfg").read_text()
    probe = subprocess.run([str(copy / ".venv" / "bin" / "python"), "-c",
                            "import torch, stgnn_launch; print(torch.__file__); print(stgnn_launch.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)  # not this checkout
    torch_file, package_file = probe.stdout.split()
    assert torch_file == torch.__file__  # the interpreter's torch, not a copy in .venv
    assert Path(package_file).is_relative_to(copy)  # the copy's package, installed editable
    assert not list((copy / ".venv").glob("lib/python*/site-packages/torch"))
