"""Entry point of every rank: `python -m stgnn_launch.train.worker RUN_DIR [--eval SPLIT]`.

torchrun (local or on Slurm) starts this module; it reads the run's resolved config rather than
composing Hydra again, so every rank runs exactly the config the user launched.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from stgnn_launch.config.load import load_run_config, with_overrides
from stgnn_launch.errors import UserError, disk_full, is_disk_full
from stgnn_launch.lifeline import die_with_parent
from stgnn_launch.train.preemption import PREEMPTED_EXIT, Preempted
from stgnn_launch import rundir


def _interrupted(signum: int, frame) -> None:
    """Ctrl-C: torchrun follows its SIGINT with a SIGTERM at once; ignore that one so that rank 0's
    failed.json is written before the rank ends."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    launcher = os.getppid()
    parser = argparse.ArgumentParser(prog="python -m stgnn_launch.train.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--eval", metavar="SPLIT", choices=["train", "val", "test"],
                        help="evaluate the run's best checkpoint instead of training")
    parser.add_argument("--set", action="append", default=[], metavar="metrics.KEY=VALUE",
                        help="with --eval: a scoring override (stgnn-eval's metrics.* arguments)")
    args = parser.parse_args(argv)
    die_with_parent(parent=launcher)  # torchrun killed (SIGKILL included): no rank trains on as an orphan
    # Until training installs its handler, the preemption signal must not kill a rank that is loading data.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, _interrupted)
    try:
        cfg = with_overrides(load_run_config(args.run_dir), args.set if args.eval else [])
        if args.eval:
            from stgnn_launch.train.run import run_evaluation

            run_evaluation(cfg, args.run_dir, args.eval)
            return 0
        # A rank restarted by torchrun (--max-restarts) or a job requeued by Slurm continues its run.
        # TORCHELASTIC_RESTART_COUNT is the node's own count: a node restarted because another node's rank
        # failed keeps 0, so with restarts allowed a checkpoint already in the run directory decides on every node.
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 or (
            int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
            and rundir.last_checkpoint(args.run_dir).is_file())
        cfg.trainer.resume = cfg.trainer.resume or restarted or os.environ.get("STGNN_RESUME") == "1"
        from stgnn_launch.train.run import run_training

        run_training(cfg, args.run_dir)
    except UserError as err:
        print(f"stgnn-train: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if not is_disk_full(err):
            raise
        print(f"stgnn-train: error: {disk_full(err.filename or 'a file', None, err)}", file=sys.stderr)
        return 2
    except Preempted as stop:  # a step checkpoint is written; torchrun restarts or Slurm requeues resume it
        print(f"stgnn-train: {stop}; resume continues from the step checkpoint", file=sys.stderr)
        return PREEMPTED_EXIT
    except KeyboardInterrupt:  # Ctrl-C reaches every rank: failed.json is written, one line each, no traceback
        print("stgnn-train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
