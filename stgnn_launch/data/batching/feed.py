"""The batch feed: batch k+1 is gathered in a background thread while step k runs.

Gathering writes into a small ring of reusable staging buffers (page-locked when the batch must cross
to a GPU, plain otherwise), so no batch allocates and no copy of the series is ever made: the series is
only read. With a GPU, the staged batch is copied to the device on a side stream and the compute stream
waits for that copy alone; `finish` (normalisation, covariates) then runs on the device.

A ring slot returns to the producer once the consumer has moved past its batch (on a GPU: once the copy
out of it is done), so at most `depth` batches are ahead. `wait_s` is the time the consumer spent blocked
on the feed: the data-wait share of the step time.

No host synchronisation per batch: where the data lives on the GPU, a split's positions cross to the device
once per call (pinned, non-blocking), not once per batch; the producer thread works on the feed's device
(otherwise its first CUDA call would open a context on GPU 0); each slot's copy-done event lives as long
as the feed, so a slot whose copy is still in flight is never overwritten by the next call's producer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence

import torch

from stgnn_launch.data.batching.windows import Batch, WindowSource

_DONE = object()


class StagingRing:
    """`size` sets of buffers shaped for a full batch (a smaller last batch uses their leading rows)."""

    def __init__(self, source: WindowSource, batch_size: int, size: int, pinned: bool) -> None:
        self.slots = [tuple(torch.empty(shape, dtype=dtype, pin_memory=pinned)
                            for shape, dtype in source.part_shapes(batch_size)) for _ in range(size)]
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(size):
            self.free.put(i)

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for slot in self.slots for t in slot)


class BatchFeed:
    """Finished batches on `device`, one per position tensor, gathered ahead in a thread when `prefetch`."""

    def __init__(self, source: WindowSource, device: torch.device, batch_size: int, *, prefetch: bool = True,
                 depth: int = 2) -> None:
        self.source, self.device = source, device
        self.prefetch = prefetch
        self.depth = max(1, depth)
        to_device = source.data_device.type == "cpu" and device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if to_device else None
        self.ring = (StagingRing(source, batch_size, self.depth + 1, pinned=to_device)
                     if prefetch and source.data_device.type == "cpu" else None)
        self.wait_s = 0.0
        self.copy_done: list[torch.cuda.Event | None] = [None] * (len(self.ring.slots) if self.ring else 0)
        source.to(device)

    def _positions_on_data_device(self, positions: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """One pinned, non-blocking copy of all the positions where the data is on a GPU (views per batch)."""
        data = self.source.data_device
        if data.type != "cuda" or not positions or positions[0].device == data:
            return positions
        sizes = [p.numel() for p in positions]
        flat = torch.cat(list(positions)).pin_memory()
        return torch.split(flat.to(data, non_blocking=True), sizes)

    def batches(self, split: str, positions: Sequence[torch.Tensor]) -> Iterator[Batch]:
        if not self.prefetch or self.ring is None:
            for pos in self._positions_on_data_device(positions):
                started = time.perf_counter()
                parts = self.source.gather(split, pos)
                if self.source.data_device != self.device:
                    parts = tuple(p.to(self.device) for p in parts)
                batch = self.source.finish(parts)
                self.wait_s += time.perf_counter() - started
                yield batch
            return
        yield from self._prefetched(split, positions)

    # ---- the background producer --------------------------------------------------------------
    def _prefetched(self, split: str, positions: Sequence[torch.Tensor]) -> Iterator[Batch]:
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(split, positions, ready, stop),
                                  name="stgnn-batch-feed", daemon=True)
        thread.start()
        held: int | None = None  # the slot whose batch the consumer is using
        try:
            while True:
                started = time.perf_counter()
                item = ready.get()
                if held is not None:  # the consumer has moved past the previous batch
                    self.ring.free.put(held)
                    held = None
                if item is _DONE:
                    self.wait_s += time.perf_counter() - started
                    return
                if isinstance(item, BaseException):
                    raise item
                slot, parts, event = item
                if event is not None:
                    torch.cuda.current_stream(self.device).wait_event(event)
                    for p in parts:
                        p.record_stream(torch.cuda.current_stream(self.device))
                    self.ring.free.put(slot)  # the device copy owns the data now; the event guards reuse
                else:
                    held = slot
                self.wait_s += time.perf_counter() - started
                yield self.source.finish(parts)
        finally:
            stop.set()
            if held is not None:
                self.ring.free.put(held)
            self._drain(thread, ready)

    def _produce(self, split: str, positions: Sequence[torch.Tensor], ready: queue.Queue,
                 stop: threading.Event) -> None:
        """The thread: each batch gathered into a free slot (and copied to the GPU on the side stream)."""
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # this thread's CUDA calls go to the rank's GPU
            for pos in positions:
                slot = self._next_free(stop)
                if slot is None:
                    return
                done = self.copy_done[slot]
                if done is not None:  # the last copy out of this slot (this call's or an earlier one's)
                    done.synchronize()
                    self.copy_done[slot] = None
                parts = self.source.gather(split, pos, out=self.ring.slots[slot])
                event = None
                if self.stream is not None:
                    with torch.cuda.stream(self.stream):
                        parts = tuple(p.to(self.device, non_blocking=True) for p in parts)
                        event = torch.cuda.Event()
                        event.record(self.stream)
                    self.copy_done[slot] = event
                ready.put((slot, parts, event))
            ready.put(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            ready.put(err)

    def _drain(self, thread: threading.Thread, ready: queue.Queue) -> None:
        """After the consumer stops: unblock a producer waiting to put, let it end, and return the slots of
        batches produced but never consumed."""
        while thread.is_alive():
            try:
                item = ready.get(timeout=0.05)
                if isinstance(item, tuple):
                    self.ring.free.put(item[0])
            except queue.Empty:
                pass
        while not ready.empty():
            item = ready.get_nowait()
            if isinstance(item, tuple):
                self.ring.free.put(item[0])

    def _next_free(self, stop: threading.Event) -> int | None:
        while not stop.is_set():
            try:
                return self.ring.free.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

