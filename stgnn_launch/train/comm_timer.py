"""Where an epoch's gradient all-reduce time goes: a DDP communication hook that times each bucket."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


class CommTimer:
    """A DDP communication hook: the default all-reduce, timed from launch to completion per bucket.

    Under NCCL the work runs on the GPU after the host has moved on, so host time would measure the launch
    only: there a pair of CUDA events brackets each bucket's reduction on the stream, and the pairs are
    read (`seconds`) at the epoch's end, when the device is synchronised anyway."""

    def __init__(self, cuda: bool = False) -> None:
        self.host_seconds = 0.0
        self.cuda = cuda
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @property
    def seconds(self) -> float:
        if self.events:
            self.events[-1][1].synchronize()
            self.host_seconds += sum(a.elapsed_time(b) for a, b in self.events) / 1000.0
            self.events.clear()
        return self.host_seconds

    def _start(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _stop(self, started) -> None:
        if not self.cuda:
            self.host_seconds += time.perf_counter() - started
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record()  # on the stream that waits for the reduction
        self.events.append((started, event))

    def hook(self, per_tensor: bool = False):
        """per_tensor: each gradient reduced on its own, so that its sum never depends on where it sits in
        a bucket (a ring all-reduce adds the ranks' values in an order set by the chunk an element falls in,
        and DDP rebuilds its buckets after the first step: a resumed run would round differently at 3+ ranks)."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def timed_allreduce(state, bucket):  # no annotations: DDP checks them, and ours are strings
            started = self._start()

            def done(fut):
                self._stop(started)
                return fut.value()

            return default_hooks.allreduce_hook(state, bucket).then(done)

        def per_tensor_allreduce(state, bucket):
            started = self._start()
            buffer, offset, works = bucket.buffer(), 0, []
            for grad in bucket.gradients():
                works.append(dist.all_reduce(buffer[offset:offset + grad.numel()], async_op=True))
                offset += grad.numel()
            for work in works:
                work.wait()
            buffer.div_(dist.get_world_size())
            self._stop(started)
            future = torch.futures.Future()
            future.set_result(buffer)
            return future

        return per_tensor_allreduce if per_tensor else timed_allreduce
