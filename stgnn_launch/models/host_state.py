"""State a model keeps on the host (a count, a flag) and still saves in its checkpoint.

A buffer would live on the device: reading it per step costs a host synchronisation, and DDP broadcasts
every buffer before each forward. These values are Python attributes instead, saved as the module's
extra state; a checkpoint from when they were buffers still loads.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class HostState(nn.Module):
    """Mixin: the attributes named in `host_state` travel in state_dict() as `_extra_state`."""

    host_state: tuple[tuple[str, type], ...] = ()  # (attribute, type to restore it as)

    def get_extra_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name, _ in self.host_state}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for name, kind in self.host_state:
            setattr(self, name, kind(state[name]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        legacy = {name: kind(state_dict.pop(prefix + name)) for name, kind in self.host_state
                  if prefix + name in state_dict}  # saved as a buffer by an earlier version
        if legacy:
            state_dict.setdefault(prefix + "_extra_state", legacy)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
