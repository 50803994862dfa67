"""`stgnn-eval RUN_DIR [split=test] [gpus=N]`: metrics of a run's best checkpoint.

Reads the run's own config.yaml, so the data, split and scaler are exactly those it trained with.
Errors and mask counts are summed over ranks, so the numbers do not depend on `gpus`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stgnn_launch.config.load import load_run_config
from stgnn_launch.errors import UserError, expect

USAGE = "usage: stgnn-eval RUN_DIR [split=train|val|test] [gpus=N]"


def parse(argv: list[str]) -> tuple[Path, str, int | None]:
    if argv and argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__.split(chr(10), 2)[2].strip()}")
        raise SystemExit(0)
    if not argv:
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    run_dir, split, gpus = Path(argv[0]), "test", None
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        expect(bool(sep) and key in ("split", "gpus"), "stgnn-eval argument", "split=... or gpus=...", arg)
        if key == "split":
            expect(value in ("train", "val", "test"), "split", "train, val or test", value)
            split = value
        else:
            expect(value.isdigit() and int(value) >= 1, "gpus", "a positive number of ranks", value)
            gpus = int(value)
    return run_dir, split, gpus


def evaluate(argv: list[str]) -> int:
    run_dir, split, gpus = parse(argv)
    cfg = load_run_config(run_dir)
    cfg.gpus = gpus or 1
    if cfg.gpus > 1:
        from stgnn_launch.launch.local import run_torchrun_locally

        cfg.launcher.max_restarts = 0
        return run_torchrun_locally(cfg, run_dir, worker_args=("--eval", split))
    from stgnn_launch.train.run import run_evaluation

    run_evaluation(cfg, run_dir, split)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = evaluate(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"stgnn-eval: error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("stgnn-eval: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
