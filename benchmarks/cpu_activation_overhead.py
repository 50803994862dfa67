"""The resident memory a CPU training step really takes per byte of tensors the planner counts.

stgnn-plan counts a step's live tensor bytes (probed per model, stgnn_launch/planning/probe.py) and multiplies
them by CPU_ACTIVATION_OVERHEAD: glibc keeps freed blocks of one step's temporaries in its heap, so
the resident peak of a run is well above its largest set of live tensors. This script measures that
factor on real `stgnn-train` runs, one fresh process per model, side by side:

    overhead = (measured peak RSS - the plan's other terms) / the probed activation bytes

and prints one JSON line per case and a last JSON line with the factors. Four training steps each
(the peak settles from the second step on), synthetic data sized so that activations dominate.

    python benchmarks/cpu_activation_overhead.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {  # model -> overrides: activations of about 1-2 GiB, a few seconds per step on one core
    "tgcn": ("dataset.num_nodes=1000", "dataset.num_steps=3000", "model.params.hidden=64"),
    "a3tgcn": ("dataset.num_nodes=600", "dataset.num_steps=3000", "model=a3tgcn", "model.params.hidden=64"),
    "dcrnn": ("dataset.num_nodes=300", "dataset.num_steps=3000", "model=dcrnn", "batching.batch_size=16"),
    "gwnet": ("dataset.num_nodes=600", "dataset.num_steps=3000", "model=gwnet", "batching.batch_size=16"),
}
STEPS = ("trainer.max_batches_per_epoch=4", "trainer.max_epochs=1", "trainer.max_eval_batches=1",
         "trainer.progress=false", "trainer.num_threads=1")


def planned(overrides: tuple[str, ...]) -> tuple[int, int]:
    """(the plan's activation bytes before the overhead factor, its other terms of the training phase), in
    bytes: the phase the measured step's peak belongs to, whichever phase the plan's own peak is in."""
    from hydra import compose, initialize_config_dir

    from stgnn_launch.cli.train import CONF_DIR
    from stgnn_launch.config.load import to_config
    from stgnn_launch.config.schema import register_configs
    from stgnn_launch.planning.estimate import CPU_ACTIVATION_OVERHEAD
    from stgnn_launch.planning.fit import plan_memory

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=list(overrides)))
    estimate = plan_memory(cfg)
    training = [t.host_node + t.host_rank for t in estimate.terms if t.phase in ("train", "both")]
    act = sum(t.host_node + t.host_rank for t in estimate.terms if t.name.startswith("activations"))
    return int(act / CPU_ACTIVATION_OVERHEAD), sum(training) - act


def measure(overrides: tuple[str, ...], work: Path) -> int:
    env = {**os.environ, "STGNN_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    for attempt in ("first", "measured"):  # the first run also writes the synthetic file
        run = work / attempt
        out = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", *overrides, *STEPS,
                              f"hydra.run.dir={run}"], capture_output=True, text=True, env=env, cwd=work)
        if out.returncode != 0:
            raise SystemExit(f"{overrides}: stgnn-train failed:\n{out.stderr[-2000:]}")
    return json.loads((run / "results.json").read_text())["peak_rss_bytes"]


def main() -> None:
    factors = {}
    for model, overrides in CASES.items():
        raw, other = planned(overrides)
        with tempfile.TemporaryDirectory() as tmp:
            peak = measure(overrides, Path(tmp))
        factors[model] = round((peak - other) / raw, 3)
        print(json.dumps({"model": model, "overrides": list(overrides), "activation_bytes": raw,
                          "other_planned_bytes": other, "peak_rss_bytes": peak, "overhead": factors[model]}),
              flush=True)
    print(json.dumps({"cpu_activation_overhead": factors}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
