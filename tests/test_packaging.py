"""The package as a user installs it: a non-editable wheel in a fresh virtual environment, used from
another directory; and the shipped sbatch templates under `set -u` as bash before 4.4 runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, TINY

TEMPLATES = sorted((REPO / "scripts" / "slurm").glob("*.sbatch"))


def console_scripts() -> list[str]:
    return sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def source_tree(dest: Path) -> Path:
    """The files git would ship (tracked and not ignored), copied out, so the build touches no shared tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():  # (a file deleted in the working tree is still listed as cached)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from this tree; the dependencies (torch and the rest, which this
    test does not ship) come from the running environment through a .pth file written after the install,
    so pip never sees the running environment's (editable) stgnn-launch."""
    root = tmp_path_factory.mktemp("packaging")
    tree = source_tree(root / "src")
    wheels = root / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(wheels), str(tree)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = wheels.glob("stgnn_launch-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(purelib) / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def fresh_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "STGNN_DATA"))}
    env["STGNN_CACHE"] = str(tmp / "cache")
    return env


@pytest.mark.slow
def test_installed_scripts_answer_help_from_another_directory(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import stgnn_launch; print(stgnn_launch.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=60, env=fresh_env(tmp_path))
    assert where.stdout.startswith(str(installed)), where.stdout + where.stderr  # the wheel, not the checkout
    for script in console_scripts():
        proc = subprocess.run([str(installed / "bin" / script), "--help"], cwd=elsewhere, capture_output=True,
                              text=True, timeout=120, env=fresh_env(tmp_path))
        assert proc.returncode == 0, f"{script} --help: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert proc.stdout.strip(), f"{script} --help printed nothing"


@pytest.mark.slow
def test_installed_stgnn_train_finds_its_configs_outside_the_checkout(installed, tmp_path):
    """conf/ comes with the wheel: a tiny training run from a directory that is not the checkout."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.run([str(installed / "bin" / "stgnn-train"), *TINY, "trainer.max_epochs=1", "hydra.run.dir=run"],
                          cwd=workdir, capture_output=True, text=True, timeout=300, env=fresh_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((workdir / "run" / "results.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1] and record["test"]["avg"]["mae"] > 0
    wheel_conf = [n for n in zipfile.ZipFile(next((installed.parent / "wheels").glob("*.whl"))).namelist()
                  if n.startswith("stgnn_launch/conf/")]
    shipped = sorted(str(p.relative_to(REPO)) for p in (REPO / "stgnn_launch" / "conf").rglob("*.yaml"))
    assert sorted(wheel_conf) == shipped


def test_relative_dataset_paths_resolve_from_cwd_then_stgnn_data_then_the_checkout(tmp_path, monkeypatch):
    from stgnn_launch.config.paths import CHECKOUT_DIR, resolve_data_path

    data = tmp_path / "data" / "los-loop"
    data.mkdir(parents=True)
    (data / "los_speed.csv").write_text("x\n")
    relative = "../shared/data/los-loop/los_speed.csv"  # as conf/dataset/losloop.yaml names it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STGNN_DATA", str(tmp_path / "data"))  # the data root ...
    assert resolve_data_path(relative) == str(data / "los_speed.csv")
    monkeypatch.setenv("STGNN_DATA", str(data))  # ... or the dataset's own folder
    assert resolve_data_path(relative) == str(data / "los_speed.csv")
    (tmp_path / "mine.csv").write_text("x\n")
    assert resolve_data_path("mine.csv") == str(tmp_path / "mine.csv")  # the current directory first
    monkeypatch.delenv("STGNN_DATA")
    in_checkout = CHECKOUT_DIR / "pyproject.toml"
    assert resolve_data_path("pyproject.toml") == str(in_checkout.resolve())  # then the source checkout
    assert resolve_data_path("nowhere/x.h5") == "nowhere/x.h5"  # left for the reader to name as missing
    assert resolve_data_path(str(tmp_path / "abs.h5")) == str(tmp_path / "abs.h5")


# ---- sbatch templates under set -u on bash 4.2 ----
# Before bash 4.4, "${A[@]}" of an empty array A is an unbound variable under `set -u`; the templates
# expand every array that starts empty as ${A[@]+"${A[@]}"}. No bash 4.2 build is at hand here, so the
# rule is checked on the text, and the templates are run under `bash -u` on the bash that is.

def test_templates_guard_every_array_that_may_be_empty():
    for template in TEMPLATES:
        text = template.read_text()
        assert "set -euo pipefail" in text, template.name
        may_be_empty = set(re.findall(r"^\s*([A-Z_]+)=\(\)", text, flags=re.M))
        may_be_empty |= set(re.findall(r"read -r -a ([A-Z_]+)", text))
        if template.name == "train.sbatch":  # one srun line: the node task's logic is Python, no arrays to guard
            assert not may_be_empty and "-m stgnn_launch.launch.node_task" in text
            continue
        assert may_be_empty, template.name
        for name in may_be_empty:
            for match in re.finditer(r'"\$\{' + name + r'\[[@*]\]\}"', text):
                guard = "${" + name + "[@]+"
                before = text[max(0, match.start() - len(guard)):match.start()]
                assert before == guard, (f"{template.name}: {match.group()} is unguarded (bash < 4.4 with set -u): "
                                         f"...{text[match.start() - 40:match.end()]}")


def test_sweep_template_submits_itself_under_bash_u_with_no_sbatch_options(tmp_path):
    """`bash sweep.sbatch FILE`: no sbatch options and no shared overrides (the arrays that start empty)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "sbatch").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (stubs / "sbatch").chmod(0o755)
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("# comment\nmodel=tgcn\n\nmodel=dcrnn batching=index\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
           "PATH": f"{stubs}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-u", str(REPO / "scripts/slurm/sweep.sbatch"), str(sweep)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["--array=0-1", str(REPO / "scripts/slurm/sweep.sbatch"), str(sweep)]
    usage = subprocess.run(["bash", "-u", str(REPO / "scripts/slurm/train.sbatch")], capture_output=True, text=True,
                           timeout=60, env=env)
    assert usage.returncode == 2 and "usage: sbatch" in usage.stderr
