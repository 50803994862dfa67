"""The README and docs/ say what is true: every command in them runs (with tiny sizes), every link lands, and
the README's first screen holds the quick start and what it gives.

Marking a block. A fenced shell block's info string says what this test does with it:

    ```bash runnable                 every command in it runs, in order, in one scratch folder per block
    ```bash not-runnable: <reason>   not run; the reason names what it needs (a cluster, a GPU, the network)

Every ```bash block carries one of the two (test_every_shell_block_is_marked). ```text blocks are output,
```python blocks code: one whose first line is `# <name>.py` is saved under that name in the scratch folder
of every block of the same file (the README's model file, used by its commands).

How a command runs (`command_line`): continuation lines joined, the comment after `  #` dropped, then run by
bash in the scratch folder with this venv's console scripts first on PATH, and
- `bash scripts/setup.sh ... && CMD`: setup.sh is NOT rerun: the suite already runs in the venv it made
  (tests/test_setup_script.py and CI's .ci/run run it); CMD runs, unless it is the test suite itself;
- stgnn-train and stgnn-profile get TINY (one epoch of two batches, a 16-node synthetic set) appended, which
  wins over the same keys in the command; Slurm commands (launcher=slurm, experiment=scaling_study) get
  launcher.dry_run=true instead, so no cluster is needed (the `slurm` tests submit for real);
- stgnn-data, stgnn-plan, stgnn-report and stgnn-eval run exactly as written;
- a comment starting `exit N` is the status expected (default 0);
- `<name>` in a path (multirun/x/<time>, runs/<latest>) is the newest entry an earlier command of the block
  made in that folder;
- a command reading the shared data (../shared/data, losloop, chickenpox, ...) skips when it is absent.
The scratch folder is `<tmp>/work` beside a link `<tmp>/shared` to the checkout's ../shared (so
`../shared/data/...` reads as from the repository root), with `.venv` linked to this venv and the README's
own-data files (my_flows.csv, my_adj.csv, as tests/test_own_data.py writes them).

Blocks of stgnn-data, stgnn-plan and Slurm dry runs, and the quick start, run in the default selection (about
two minutes on two cores); blocks that train or profile are marked slow.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO
from test_own_data import write_flows

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FIRST_SCREEN = 60
QUICK_START = ("bash scripts/setup.sh && .venv/bin/stgnn-train",
               "bash scripts/setup.sh --test && .venv/bin/python -m pytest")
SHARED = REPO.parent / "shared"
TINY = ("trainer.max_epochs=1", "trainer.max_batches_per_epoch=2", "trainer.max_eval_batches=2",
        "trainer.progress=false", "dataset.num_nodes=16", "dataset.num_steps=700")
TINY_PROFILE = ("profile.full_epochs=4", "profile.min_epochs=2", "profile.train_fraction=0.05")
NEEDS_SHARED = ("../shared/data", "losloop", "chickenpox", "montevideo_bus")
FAST = ("stgnn-data", "stgnn-plan")  # programs that read or estimate, never train
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.S | re.M)
SHELL = ("bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    marker: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    return [Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2).strip(), m.group(3))
            for m in FENCE.finditer(text)]


SHELL_BLOCKS = [b for doc in DOCS for b in blocks(doc) if b.lang in SHELL]
RUNNABLE = [b for b in SHELL_BLOCKS if b.marker == "runnable"]


def commands(block: Block) -> list[str]:
    """The block's command lines: continuations joined, blank lines skipped (comments kept for `exit N`)."""
    return [line.strip() for line in block.text.replace("\\\n", " ").splitlines() if line.strip()]


def split_comment(line: str) -> tuple[str, str]:
    """`command   # comment` -> (command, comment); documented commands hold no # of their own."""
    m = re.search(r"\s+#\s?", line)
    return (line[:m.start()].strip(), line[m.end():].strip()) if m else (line.strip(), "")


def is_slurm(tokens: list[str]) -> bool:
    return "launcher=slurm" in tokens or "experiment=scaling_study" in tokens


def is_fast(block: Block) -> bool:
    """Quick to run: the quick start's training (the first screen's promise) and commands that never train."""
    for line in commands(block):
        tokens = shlex.split(split_comment(line)[0])
        program = Path(tokens[0]).name if tokens else ""
        if tokens[:2] == ["bash", "scripts/setup.sh"]:
            continue
        if program in FAST or (program == "stgnn-train" and is_slurm(tokens) and "-m" not in tokens):
            continue
        return False
    return True


def command_line(line: str, cwd: Path) -> tuple[str | None, int]:
    """The shell line this test runs for a documented command, and the exit status it expects; None: not run."""
    command, comment = split_comment(line)
    expected = int(m.group(1)) if (m := re.match(r"exit (\d+)", comment)) else 0
    if command.startswith("bash scripts/setup.sh"):  # the venv exists: the suite runs in it
        _, _, command = command.partition("&&")
        command = command.strip()
        if not command or "-m pytest" in command:
            return None, expected
    for placeholder in re.findall(r"\S*<\w+>", command):
        folder = cwd / placeholder.split("<")[0]
        # newest by time, then by name: run folders are named by their start time, and files of a fresh
        # checkout share one mtime
        entries = sorted(folder.iterdir(), key=lambda p: (p.stat().st_mtime, p.name)) if folder.is_dir() else []
        assert entries, f"{placeholder}: expected an earlier command to make an entry in {folder}, found none"
        command = command.replace(placeholder, str(entries[-1]))
    tokens = shlex.split(command)
    program = Path(tokens[0]).name
    if program == "stgnn-train":
        extra = ("launcher.dry_run=true",) if is_slurm(tokens) else TINY
    elif program == "stgnn-profile":
        extra = TINY + TINY_PROFILE
    else:
        extra = ()
    return " ".join([command, *map(shlex.quote, extra)]), expected


def scratch(tmp_path: Path, doc: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    (work / ".venv").symlink_to(Path(sys.prefix))
    write_flows(work)
    for block in blocks(doc):
        first, _, body = block.text.partition("\n")
        if block.lang == "python" and (m := re.fullmatch(r"# (\S+\.py)", first.strip())):
            (work / m.group(1)).write_text(body)
    return work


def run_block(block: Block, tmp_path: Path) -> None:
    if any(key in block.text for key in NEEDS_SHARED) and not (SHARED / "data").is_dir():
        pytest.skip(f"{block.name} reads the shared data, and {SHARED / 'data'} is absent")
    work = scratch(tmp_path, block.doc)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")]))}
    ran = 0
    for line in commands(block):
        shell, expected = command_line(line, work)
        if shell is None:
            continue
        proc = subprocess.run(["bash", "-c", shell], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == expected, (f"{block.name}: `{shell}` exited {proc.returncode}, expected {expected}\n"
                                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        ran += 1
    if not ran:  # the second quick start: setup.sh and the suite itself, which CI (.ci/run) runs
        pytest.skip(f"{block.name}: setup.sh and the test suite are not rerun from inside the suite")


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in RUNNABLE if is_fast(b)])
def test_a_quick_runnable_block_runs_as_written(block, tmp_path):
    run_block(block, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in RUNNABLE if not is_fast(b)])
def test_a_training_runnable_block_runs_as_written(block, tmp_path):
    run_block(block, tmp_path)


def test_every_shell_block_is_marked_runnable_or_says_why_not():
    unmarked = [b.name for b in SHELL_BLOCKS
                if b.marker != "runnable" and not re.fullmatch(r"not-runnable: \S.*", b.marker)]
    assert not unmarked, f"expected ```bash runnable or ```bash not-runnable: <reason>, found neither at {unmarked}"
    assert len(RUNNABLE) >= 15 and {b.doc.name for b in RUNNABLE} >= {"README.md", "slurm.md", "data.md"}


def test_the_first_screen_has_both_quick_start_commands_and_the_report_plot():
    screen = (REPO / "README.md").read_text().splitlines()[:FIRST_SCREEN]
    for command in QUICK_START:
        assert command in screen, f"README's first {FIRST_SCREEN} lines: expected the line {command!r}"
    ci = (REPO / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci == QUICK_START[1], f".ci/run: expected the README's second quick start, found {ci!r}"
    images = [m for line in screen for m in re.findall(r"!\[[^\]]+\]\((docs/[^)]+\.png)\)", line)]
    assert images, f"README's first {FIRST_SCREEN} lines: expected a ![...](docs/<plot>.png) image, found none"
    png = REPO / images[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    assert any(line.startswith(" horizon      MAE     RMSE     MAPE") for line in screen)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text())
    return {slug(m) for m in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_every_relative_link_and_anchor_lands():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", doc.read_text())):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert not broken, f"links to nothing: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert pages and not [p for p in pages if f"(docs/{p}" not in readme]


def test_the_command_rewrites(tmp_path):
    """What the runner does to a documented command, on a folder with earlier runs in it."""
    work = tmp_path  # only <name> placeholders look into it
    for name, mtime in [("runs", 100), ("b_run", 300), ("a_run", 300), ("c_run", 200)]:
        (work / name).mkdir()
        os.utime(work / name, (mtime, mtime))
    assert command_line("bash scripts/setup.sh --test && .venv/bin/python -m pytest", work) == (None, 0)
    shell, code = command_line("bash scripts/setup.sh && .venv/bin/stgnn-train", work)
    assert shell == ".venv/bin/stgnn-train " + " ".join(TINY) and code == 0
    shell, code = command_line("stgnn-plan batching=standard  # exit 3: 157 GiB of windows", work)
    assert (shell, code) == ("stgnn-plan batching=standard", 3)
    shell, _ = command_line("stgnn-train launcher=slurm gpus=8 launcher.gpus_per_node=4   # 2 nodes", work)
    assert shell == "stgnn-train launcher=slurm gpus=8 launcher.gpus_per_node=4 launcher.dry_run=true"
    shell, _ = command_line('stgnn-profile "models=[tgcn,gwnet]"', work)
    assert shell.startswith('stgnn-profile "models=[tgcn,gwnet]" trainer.max_epochs=1') and "profile.full_epochs=4" in shell
    # the newest entry; of two equally new, the later name
    assert command_line("stgnn-report <latest>", work) == (f"stgnn-report {work / 'b_run'}", 0)
