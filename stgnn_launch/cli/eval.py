"""`stgnn-eval RUN_DIR [split=test] [gpus=N] [metrics.KEY=VALUE ...]`: metrics of a run's best checkpoint.

Reads the run's own config.yaml, so the data, split and scaler are exactly those it trained with;
`metrics.*` overrides change only how it is scored (metrics.mape_threshold=1: MAPE over |y| > 1).
Errors and mask counts are summed over ranks, so the numbers do not depend on `gpus`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stgnn_launch.cli.entry import run_command
from stgnn_launch.config.load import load_run_config, with_overrides
from stgnn_launch.errors import expect

USAGE = "usage: stgnn-eval RUN_DIR [split=train|val|test] [gpus=N] [metrics.KEY=VALUE ...]"


def parse(argv: list[str]) -> tuple[Path, str, int | None, list[str]]:
    if argv and argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__.split(chr(10), 2)[2].strip()}")
        raise SystemExit(0)
    if not argv:
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    run_dir, split, gpus, overrides = Path(argv[0]), "test", None, []
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        expect(bool(sep) and (key in ("split", "gpus") or key.startswith("metrics.")), "stgnn-eval argument",
               "split=..., gpus=... or metrics.KEY=...", arg)
        if key.startswith("metrics."):
            overrides.append(arg)
        elif key == "split":
            expect(value in ("train", "val", "test"), "split", "train, val or test", value)
            split = value
        else:
            expect(value.isdigit() and int(value) >= 1, "gpus", "a positive number of ranks", value)
            gpus = int(value)
    return run_dir, split, gpus, overrides


def evaluate(argv: list[str]) -> int:
    run_dir, split, gpus, overrides = parse(argv)
    cfg = with_overrides(load_run_config(run_dir), overrides)
    cfg.gpus = gpus or 1
    if cfg.gpus > 1:
        from stgnn_launch.launch.local import run_torchrun_locally

        cfg.launcher.max_restarts = 0
        return run_torchrun_locally(cfg, run_dir, worker_args=("--eval", split, *(f"--set={o}" for o in overrides)))
    from stgnn_launch.train.run import run_evaluation

    run_evaluation(cfg, run_dir, split)
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_command("stgnn-eval", lambda: evaluate(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
