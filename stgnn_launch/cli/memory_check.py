"""The launchers' memory check for any model, including one that only builds for its own dataset.

The planner probes a model on synthetic graphs of a few node counts (planning/probe.py), which
every built-in model accepts. A model brought by import path (model=custom, model=pyg_recurrent) may
hold its own adjacency and refuse any other node count although it trains on its dataset: then the
probe is redone at the dataset's own node count (two batch sizes: the per-sample slope and a fixed part,
with no N-dependence to fit), and the run goes on with that estimate.
"""

from __future__ import annotations

from stgnn_launch.models.params import BY_IMPORT_PATH
from stgnn_launch.config.schema import Config
from stgnn_launch.errors import UserError


def estimate_memory_for(cfg: Config):
    """planning.fit.plan_memory(cfg), probed at the dataset's own node count where the model needs that."""
    from stgnn_launch.planning.fit import plan_memory

    try:
        return plan_memory(cfg)
    except Exception as err:  # the user's class raised at a probe's node count: its own error, any type
        if cfg.model.name not in BY_IMPORT_PATH:
            raise
        first = err
    from stgnn_launch.data.datasets import dataset_shape

    shape = dataset_shape(cfg.dataset)
    try:
        profile = own_size_profile(cfg, shape)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"model {cfg.model.target or cfg.model.cell}: expected a model that builds and trains "
                        f"on the dataset's {shape[1]} nodes, found it raises {type(err).__name__}: {err} "
                        f"(at the planner's synthetic node counts: {type(first).__name__}: {first})") from err
    return plan_memory(cfg, shape=shape, profile=profile)


def checked_estimate(cfg: Config):
    """stgnn-train's check before any data is read (planning.fit.check_fits), for any model."""
    from stgnn_launch.planning.fit import DoesNotFit

    estimate = estimate_memory_for(cfg)
    if not estimate.fits:
        raise DoesNotFit(f"memory: expected a run that fits the node, found one that does not\n{estimate.table()}")
    return estimate


def own_size_profile(cfg: Config, shape: tuple[int, int, int]):
    """An ActivationProfile measured at the dataset's node count only (valid at that N, which is the run's)."""
    import torch

    from stgnn_launch.planning.probe import PROBE_BATCHES, ActivationProfile, _step_peak, in_out_features

    nodes = shape[1]
    in_features, out_features = in_out_features(cfg, shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            (small, params), (large, _) = (_step_peak(cfg, in_features, out_features, b, nodes) for b in PROBE_BATCHES)
    finally:
        torch.set_num_threads(threads)
    b0, b1 = PROBE_BATCHES
    per = max(0.0, (large - small) / ((b1 - b0) * nodes))
    return ActivationProfile(per_sample_node=per, fixed=(float(small - per * b0 * nodes), 0.0, 0.0),
                             params=(float(params), 0.0))
