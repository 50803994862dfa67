"""What rank 0 prints: the start-up block, the data's warnings, the test table and the end-of-run notes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stgnn_launch.config.schema import Config
from stgnn_launch.rundir import Metrics, ResultsRecord
from stgnn_launch.train.runlog import base_note, epochs_line, missing_line, model_label, startup_block

if TYPE_CHECKING:  # a session is what these print about; imported for its type only
    from stgnn_launch.train.session import Session


def announce(session: Session) -> None:
    """The start-up block, then one warning line per problem found in the data (rank 0 prints them)."""
    log, facts, name = session.log, session.pipe.facts, session.cfg.dataset.name
    log.info(startup_block(startup_facts(session)))
    if facts.filled_readings:
        log.info(f"warning: dataset {name}: {facts.filled_readings} readings were NaN or infinite; they are "
                 "treated as missing (masked in the loss and the metrics)")
    for warning in facts.warnings:
        log.info(f"warning: dataset {name}: {warning}")


def startup_facts(session: Session) -> dict[str, str]:
    cfg, plan, ctx, pipe = session.cfg, session.plan, session.ctx, session.pipe
    f = pipe.facts
    params = sum(p.numel() for p in pipe.model.parameters())
    where = f"{plan.data_device}" + (" (node-shared)" if plan.node_shared else "")
    facts = {
        "dataset": f"{f.name}: {f.num_steps} steps x {f.num_nodes} nodes x {f.num_features} features, "
                   f"step {f.step}" + (" (this rank's time range)" if f.time_shard else ""),
        "windows": ", ".join(f"{k} {v}" for k, v in f.windows.items()),
        "missing": missing_line(f, pipe.prepared.null_value),
        "MAPE over": f"|y| > {f.mape_threshold:g} ({f.mape_threshold_rule})",
        "model": f"{model_label(cfg.model)}, {params:,} parameters" + base_note(pipe.model),
        "epochs": epochs_line(cfg.trainer),
        "batching": f"{plan.mode}, data on {where} as {str(plan.series_dtype).replace('torch.', '')}, "
                    f"prefetch {'on' if plan.prefetch else 'off'}",
        "ranks": f"{ctx.world_size} ({ctx.backend or 'single process'}), compute on {plan.compute_device}, "
                 f"{plan.threads} threads each",
        "batch": f"{plan.batch_size} per rank, {plan.global_batch_size} global, lr {plan.lr:g}",
        "data bytes": f"{pipe.source.data_bytes / 2**20:.1f} MiB per rank",
        "run dir": str(session.run_dir),
    }
    cached = converted_cache(cfg)
    if cached:
        facts["cache"] = cached
    for i, note in enumerate(plan.notes):
        facts[f"note {i + 1}"] = note
    return facts


def converted_cache(cfg: Config) -> str | None:
    """Which cache entry a CSV/NPY/NPZ dataset was read from, and whether it was converted by this run."""
    from stgnn_launch.data.readers import CACHE_USED

    if not cfg.dataset.path:
        return None
    used = CACHE_USED.get(str(Path(cfg.dataset.path).expanduser().resolve()))
    return f"{used[0]} ({used[1]}, keyed by the file's content)" if used else None


def run_summary(record: ResultsRecord, rule: str | None, alarms: list[str], trainable: bool,
                results_path: Path) -> str:
    """The end of a training run: the test table, pooled metrics, whether it beat persistence, the record."""
    test, baselines, cfg = record.test or {}, record.baselines, record.config
    lines = [format_test(test, baselines, record.mape_threshold or 0.0, rule, alarms)]
    if record.test_pooled is not None:
        lines.append(format_pooled(record.test_pooled))
    if record.beats_persistence is False and trainable:  # a baseline cannot train longer
        lines.append(f"warning: {cfg['model']['name']} did not beat persistence on the test windows (MAE "
                     f"{test['avg']['mae']:.4f} vs {baselines['persistence']['avg']['mae']:.4f}): train longer, "
                     "or try another learning rate")
    lines.append(f"results: {results_path}")
    return "\n".join(lines)


def format_pooled(pooled: dict[str, dict[str, float]]) -> str:
    lines = ["test metrics pooled over steps 1..k (T-GCN)", f"{'minutes':>8} {'MAE':>8} {'RMSE':>8} {'acc':>8}"]
    for minutes, m in pooled.items():
        lines.append(f"{minutes:>8} {m['mae']:8.4f} {m['rmse']:8.4f} {m['acc']:8.4f}")
    return "\n".join(lines)


def format_test(test: Metrics, baselines: dict[str, Metrics] | None = None, mape_threshold: float = 0.0,
                rule: str | None = None, notes: list[str] | None = None) -> str:
    """The test table: the model at each reported horizon, then each baseline's average beside it; `notes`
    (a MAPE above 1,000% and where it comes from) after it."""
    mape_note = f"MAPE over |y| > {mape_threshold:g}" + (f", {rule}" if rule else "")
    lines = [f"test metrics (masked, de-normalized; {mape_note})",
             f"{'horizon':>8} {'MAE':>8} {'RMSE':>8} {'MAPE':>8}"]
    for step, m in test.items():
        lines.append(f"{step:>8} {m['mae']:8.4f} {m['rmse']:8.4f} {100 * m['mape']:7.2f}%")
    for name, metrics in (baselines or {}).items():
        m = metrics["avg"]
        lines.append(f"{'avg':>8} {m['mae']:8.4f} {m['rmse']:8.4f} {100 * m['mape']:7.2f}%  <- {name}")
    return "\n".join(lines + list(notes or []))
