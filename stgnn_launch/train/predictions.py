"""`trainer.save_predictions=true`: the de-normalised predictions, targets and mask of a split, in window
order, gathered from every rank to rank 0 alone (over the host-side control group: no GPU memory, and no rank
receives the others' predictions) into one `.npz` written by rank 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from stgnn_launch.data.batching import eval_positions
from stgnn_launch.train.metrics import observed_mask


@torch.no_grad()
def save_predictions(trainer, split: str, path: Path) -> None:
    trainer.model.eval()
    plan, ctx = trainer.plan, trainer.ctx
    positions = eval_positions(trainer.source.count(split), plan.eval_batch_size, plan.schedule_rank,
                               plan.schedule_world)
    preds, targets = [], []
    for x, y in trainer.feed.batches(split, positions):
        preds.append(trainer._predict(trainer.model, x, None).cpu())
        targets.append(y.to("cpu", copy=True))  # a view of a staging buffer the feed reuses
    mine = (torch.cat(preds).numpy(), torch.cat(targets).numpy())
    parts = [mine]
    if ctx.distributed:  # rank blocks are contiguous and in rank order: concatenation is window order
        parts = [None] * ctx.world_size if ctx.is_main else None
        dist.gather_object(mine, parts, dst=0, group=ctx.control)
    if ctx.is_main:
        pred = np.concatenate([p for p, _ in parts])
        target = np.concatenate([t for _, t in parts])
        mask = observed_mask(torch.from_numpy(target), trainer.prepared.null_value).numpy()
        from stgnn_launch.atomic_write import replacing

        with replacing(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, predictions=pred, targets=target, mask=mask)
