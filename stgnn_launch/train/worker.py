"""Entry point of every rank: `python -m stgnn_launch.train.worker RUN_DIR`.

torchrun (local or on Slurm) starts this module; it reads the run's resolved config rather than
composing Hydra again, so every rank runs exactly the config the user launched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stgnn_launch.config.load import load_run_config
from stgnn_launch.errors import UserError
from stgnn_launch.train.run import run_training


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m stgnn_launch.train.worker RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(args[0])
    try:
        cfg = load_run_config(run_dir)
        # A rank restarted by torchrun (--max-restarts) or a job requeued by Slurm continues its run.
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        cfg.trainer.resume = cfg.trainer.resume or restarted or os.environ.get("STGNN_RESUME") == "1"
        run_training(cfg, run_dir)
    except UserError as err:
        print(f"stgnn-train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
