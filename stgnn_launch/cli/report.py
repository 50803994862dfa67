"""`stgnn-report DIR... [--out DIR] [--epoch-time median|fastest]`: tables and plots of a scaling study.

Reads every run under the directories (Hydra multirun folders, run folders, Slurm sweeps with a
sweep.json) and writes report.md, report.csv and PNG plots. Unfinished runs are listed, never fatal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stgnn_launch.cli.entry import run_command
from stgnn_launch.errors import UserError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stgnn-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run, sweep or multirun directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.md, report.csv and the plots go (default: DIR, when there is one)")
    parser.add_argument("--epoch-time", choices=("median", "fastest"), default="median",
                        help="a run's epoch time: the median or the fastest of its epochs after the first")
    return parser.parse_args(argv)


def report(argv: list[str]) -> int:
    args = parse(argv)
    if args.out is None:
        if len(args.dirs) > 1:
            raise UserError(f"--out: expected a folder for the report of {len(args.dirs)} directories, found none")
        args.out = args.dirs[0]
    from stgnn_launch.report import build_report

    result = build_report(args.dirs, args.out, args.epoch_time)
    statuses = [row["status"] for row in result.rows]
    summary = ", ".join(f"{statuses.count(s)} {s}" for s in ("done", "failed", "running", "pending") if s in statuses)
    print(f"{len(statuses)} runs ({summary})")
    print(f"report: {result.markdown}\ntable: {result.csv}")
    for plot in result.plots:
        print(f"plot: {plot}")
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command("stgnn-report", lambda: report(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
