"""`stgnn-profile`: rank candidate models on a dataset from short runs (see stgnn_launch/profile/).

    stgnn-profile dataset=losloop "models=[persistence,tgcn,gwnet]" profile.full=true

`models=...` and `profile.*` are the study's keys (conf/profile_study.yaml, conf/profile/); every other
override composes the training config exactly as stgnn-train does (dataset, batching, trainer, launcher).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from stgnn_launch.cli.entry import Exit, run_command
from stgnn_launch.cli.memory_check import estimate_memory_for
from stgnn_launch.config.paths import CONF_DIR
from stgnn_launch.config.load import check_choices, to_config, user_error
from stgnn_launch.config.schema import Config, register_configs
from stgnn_launch.errors import UserError
from stgnn_launch.planning.fit import settle_batch_size
from stgnn_launch.profile.candidates import Candidate
from stgnn_launch.profile.config import StudyConfig, register_profile_configs
from stgnn_launch.train.preemption import Preempted


def _stop_on_signal(signum: int, frame) -> None:
    """Outside a run's epochs (whose own handler writes a step checkpoint first): stop where it stands; a
    run stopped so writes no failed.json, so the rerun resumes it from its last checkpoint."""
    raise Preempted(f"stopped by {signal.Signals(signum).name}", signum)



def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """(the study's overrides, the training config's overrides)."""
    study, training = [], []
    for arg in args:
        key = arg.lstrip("+~").split("=", 1)[0]
        (study if key == "models" or key == "profile" or key.startswith("profile.") else training).append(arg)
    return study, training


def to_study(cfg) -> StudyConfig:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudyConfig), cfg))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise user_error(err, "profile") from None


def compose_training(overrides: list[str], candidate: Candidate | None) -> Config:
    """The training config of one candidate run; must run inside hydra's initialize_config_dir."""
    from hydra import compose

    extra = [f"model={candidate.model_group}", *candidate.overrides] if candidate else []
    cfg = compose(config_name="config", overrides=[*overrides, *extra])
    if candidate and (candidate.target or candidate.params):
        with open_dict(cfg):
            if candidate.target:
                cfg.model.target = candidate.target
            cfg.model.params = OmegaConf.merge(cfg.model.params, candidate.params)
    config = to_config(cfg)
    # a number before the study's arithmetic (batches per epoch) and its runs; probed as stgnn-train probes
    b = config.batching
    settles = b.batch_size == "auto" and not b.global_batch_size and config.launcher.name == "local"
    settle_batch_size(config, estimate_memory_for(config) if settles else None)
    return config


def profile(args: list[str]) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from stgnn_launch.profile.study import format_table, run_study, summary_line

    register_configs()
    register_profile_configs()
    study_args, training_args = split_overrides(args)
    check_choices(training_args)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="stgnn_profile"):
            study = to_study(compose(config_name="profile_study", overrides=study_args))
            base = compose_training(training_args, None)
            out_dir = Path(study.profile.out_dir or
                           f"runs/profile/{time.strftime('%Y-%m-%d_%H-%M-%S')}_{base.dataset.name}")
            previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                result = run_study(study, training_args, compose_training, out_dir)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    except Preempted as stop:
        signum = stop.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        what = str(stop) if str(stop).startswith("stopped") else f"stopped by {name} ({stop}, step checkpoint written)"
        # SIGTERM (an allocation's end): 143, Ctrl-C: 130; a rerun continues
        raise Exit(f"{what}; run it again with profile.out_dir={out_dir} to continue", 128 + signum) from None
    except HydraException as err:  # an unknown group option, a malformed override
        raise UserError(f"config: {str(err).splitlines()[0]}") from None
    print(format_table(result))
    print(f"profile: {out_dir / 'profile.json'}  chart: {result['bump_chart']}")
    print(summary_line(result), flush=True)
    return 0


def main() -> None:
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(f"usage: stgnn-profile [overrides...]\n\n{__doc__.split(chr(10), 1)[1].strip()}")
        sys.exit(0)
    sys.exit(run_command("stgnn-profile", lambda: profile(sys.argv[1:])))  # Ctrl-C before the runs: 130


if __name__ == "__main__":
    main()
