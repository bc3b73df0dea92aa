"""Sharing a machine's compute between the live sessions of one process: compute slots and batched calls.

ComputeSlots: at most `count` threads compute at once, granted earliest deadline first. Each session's
worker holds a slot while it makes a chunk (engine.stream.session); a process's CPU sessions share one
a core plus one (`cpu_slots`: the extra one keeps a core busy while a holder waits for the GIL). Without
them, five workers on two cores all ran at once and fought over the GIL and the caches: 19,900 context
switches a second and 14% of a core in the kernel, against 7,100 and 8% with 3 slots, which made 22.8
fps a session instead of 20.0 with the same CPU (balanced preset, onnxruntime: benchmarks/results/
session_cpu.md, session_cpu_noslots.md); 2 slots made 17.9 (session_cpu_2slots.md: a core idles whenever
both holders want the GIL). And the chunk due first is made first. A thread that blocks inside its
compute (waiting for a Combiner's batch) gives its slot up meanwhile (`yielding`).

Combiner: calls from many threads that meet share one batched call, run by a caller, no thread of its
own. A call that finds a lane free runs at once, with every call queued (its own included, in arrival
order, up to `max_batch`); a call that finds every lane busy waits, and when a lane frees, the first
waiting call leads the next batch with everything that queued meanwhile. So a lone caller runs at
once with no hand-off, the busier the lanes the larger (and cheaper per item) the batches, nothing
waits to fill a batch, and a caller joining or leaving changes only the next batch's size. A batch
that raises hands the error to every caller in it; the lanes go on. Used by engine.backends.batching
(the generator's calls) and engine.render.batching (the renderer's frames).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH = 32  # calls in one batch at most (a bound on one batch's time, not a tuned value)

_held = threading.local()  # .slot: (ComputeSlots, deadline) while this thread holds a slot


class ComputeSlots:
    """At most `count` holders at once; waiting threads are granted a slot in deadline order (earliest
    first, then arrival order)."""

    def __init__(self, count: int):
        if count < 1:
            raise ValueError(f"ComputeSlots needs at least 1 slot, got {count}")
        self.count = count
        self._busy = 0
        self._waiting: list[tuple[float, int, threading.Event]] = []  # heap: (deadline, arrival, wake-up)
        self._arrivals = itertools.count()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, deadline: float) -> Iterator[None]:
        """Hold a slot for the block (waiting for one first); `deadline`: when the work is due (any clock,
        the same for every holder), which orders the waiting threads."""
        self._acquire(deadline)
        _held.slot = (self, deadline)
        try:
            yield
        finally:
            _held.slot = None
            self._release()

    def _acquire(self, deadline: float) -> None:
        with self._lock:
            if self._busy < self.count and not self._waiting:
                self._busy += 1
                return
            wake = threading.Event()
            heapq.heappush(self._waiting, (deadline, next(self._arrivals), wake))
        wake.wait()  # a releasing holder handed its slot over

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[2].set()  # the slot passes on: busy stays
            else:
                self._busy -= 1


@contextlib.contextmanager
def yielding() -> Iterator[None]:
    """Give up this thread's compute slot (if it holds one) while the block blocks; take it back after."""
    held = getattr(_held, "slot", None)
    if held is None:
        yield
        return
    slots, deadline = held
    _held.slot = None
    slots._release()
    try:
        yield
    finally:
        slots._acquire(deadline)
        _held.slot = held


def cpu_slots() -> ComputeSlots:
    """The process's compute slots: one a core it may run on, plus one (made once, shared by every session)."""
    global _cpu_slots
    with _cpu_slots_lock:
        if _cpu_slots is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            _cpu_slots = ComputeSlots(cores + 1)
        return _cpu_slots


_cpu_slots: ComputeSlots | None = None
_cpu_slots_lock = threading.Lock()


class _Call:
    __slots__ = ("done", "error", "group", "item", "result", "wake")

    def __init__(self, item):
        self.item = item
        self.group: list[_Call] | None = None  # set on the call whose caller leads this batch
        self.wake = threading.Event()  # its batch is done, or its caller leads the next one
        self.done = False
        self.result = self.error = None


class Combiner(Generic[Item, Result]):
    """`run(items) -> results` (one result per item, in order) for the calls that meet; at most `lanes`
    batches run at once. `batches` and `items` count the batches run and the calls they carried."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Result]], lanes: int = 1, max_batch: int = MAX_BATCH):
        if lanes < 1 or max_batch < 1:
            raise ValueError(f"lanes and max_batch must be at least 1; got {lanes} and {max_batch}")
        self.run, self.lanes, self.max_batch = run, lanes, max_batch
        self.batches = self.items = 0
        self._queue: deque[_Call] = deque()
        self._running = 0  # lanes busy
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, item: Item) -> Result:
        call = _Call(item)
        with self._lock:
            if self._closed:
                raise RuntimeError("this Combiner is closed; make a new one")
            self._queue.append(call)
            if self._running < self.lanes:
                self._take()
        while not call.done:
            if call.group is None:
                with yielding():  # a batch in flight carries this call, or a lane will free for it
                    call.wake.wait()
                call.wake.clear()
            if call.group is not None:
                group, call.group = call.group, None
                self._lead(group)
        if call.error is not None:
            raise call.error
        return call.result

    def _take(self) -> None:
        """A lane starts the next batch (lock held): everything queued, led by its first caller."""
        group = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
        self._running += 1
        group[0].group = group
        group[0].wake.set()

    def _lead(self, group: list[_Call]) -> None:
        try:
            results = self.run([member.item for member in group])
            if len(results) != len(group):
                raise RuntimeError(f"a batch of {len(group)} calls gave {len(results)} results")
        except Exception as err:  # every caller in the batch sees the failure; the lanes go on
            results, error = [None] * len(group), err
        else:
            error = None
        with self._lock:
            self._running -= 1
            if error is None:
                self.batches += 1
                self.items += len(group)
            if self._queue:  # what queued meanwhile: its first caller leads it
                self._take()
        for member, result in zip(group, results, strict=True):
            member.result, member.error, member.done = result, error, True
            member.wake.set()

    def close(self) -> None:
        """Refuse new calls (those queued or running finish). Idempotent."""
        with self._lock:
            self._closed = True
