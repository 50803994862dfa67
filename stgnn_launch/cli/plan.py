"""`stgnn-plan`: the memory a run would need, per rank and per node, host and device, before any data
is read, composed from exactly the overrides `stgnn-train` takes.

    stgnn-plan dataset=synthetic dataset.num_nodes=11160 dataset.num_steps=105120 batching=standard

Prints the table of terms (resident series or materialised windows, staging buffers, model and
optimiser state, activations of one batch), the verdict against the node (`launcher.mem_gb`, the
GPU's memory, or this machine's) with the dominant term named, and the overrides that would make it
fit. Exit status 0 when it fits, 3 when it does not, 2 for a bad config.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from stgnn_launch.cli.entry import run_command, start_hydra_app
from stgnn_launch.cli.memory_check import estimate_memory_for
from stgnn_launch.cli.train import CONF_DIR
from stgnn_launch.config.load import to_config
from stgnn_launch.models.params import check_model_params
from stgnn_launch.planning.fit import EXIT_DOES_NOT_FIT

PROG = "stgnn-plan"


def report(cfg: DictConfig) -> int:
    config = to_config(cfg)
    check_model_params(config.model.name, dict(config.model.params))
    estimate = estimate_memory_for(config)
    print(estimate.table())
    return 0 if estimate.fits else EXIT_DOES_NOT_FIT


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    sys.exit(run_command(PROG, lambda: report(cfg)))


def main() -> None:
    # A plan writes nothing: no run directory, no Hydra log files.
    sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                 "hydra.run.dir=."]
    start_hydra_app(PROG, _app)


if __name__ == "__main__":
    main()
