"""Activation checkpointing of a recurrent step: keep only the step's inputs, recompute its insides in
the backward pass (`trainer.activation_checkpointing=true`).

A recurrent model over W + H steps saves every step's intermediate tensors for the backward pass; on
PeMS-sized graphs (11,160 nodes) at batch 64 that is tens of GB. Wrapped in `maybe_checkpoint`, a step
saves only its inputs (the state it starts from), and its insides are recomputed one step at a time
during the backward pass: one step's activations at a time instead of all of them, for about one more
forward pass of compute. Gradients are the same (the recomputation is the same arithmetic).

The flag is an attribute of the modules (`enable_activation_checkpointing` sets it on every submodule),
so a model's step reads it from whichever module it runs, and a model that never calls
`maybe_checkpoint` is simply unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

FLAG = "activation_checkpointing"


@dataclass
class CheckpointStats:
    """What the checkpointed steps kept: read by the memory planner's probe (stgnn_launch/planning/probe.py)."""

    calls: int = 0
    held: dict[int, int] = field(default_factory=dict)  # storage -> bytes of the inputs kept for the backward

    def reset(self) -> None:
        self.calls, self.held = 0, {}


STATS = CheckpointStats()


def enable_activation_checkpointing(model: nn.Module, enabled: bool) -> nn.Module:
    for module in model.modules():
        setattr(module, FLAG, bool(enabled))
    return model


def maybe_checkpoint(module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), recomputed in the backward pass when `module` has checkpointing on and is training."""
    if not (getattr(module, FLAG, False) and module.training and torch.is_grad_enabled()):
        return fn(*args)
    STATS.calls += 1
    for a in args:
        if isinstance(a, torch.Tensor) and a.layout == torch.strided:
            STATS.held[a.untyped_storage().data_ptr()] = a.untyped_storage().nbytes()
    return checkpoint(fn, *args, use_reentrant=False)
