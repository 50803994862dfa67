"""Static check of the whole tree: an undefined name in a path the tests do not reach still fails CI."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyflakes_rules_pass_on_the_whole_tree():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff not found: install the test extra (bash scripts/setup.sh --test)")
    proc = subprocess.run([ruff, "check", "--output-format", "concise", "--no-cache", str(REPO)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_layers_contract_holds_and_names_every_package():
    """pyproject.toml's import-linter contract: no module imports a layer above its own, lazily or not."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports not found: install the test extra (bash scripts/setup.sh --test)")
    proc = subprocess.run([lint, "--no-cache"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    named = {m.strip().removeprefix("stgnn_launch.") for layer in contract["layers"] for m in layer.split("|")}
    packages = {p.stem if p.suffix == ".py" else p.name for p in (REPO / "stgnn_launch").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert named == packages
