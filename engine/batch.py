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
waiting call leads the next batch with everything that queued meanwhile. (A cohort's call first meets
its cohort, below, and takes only its cohort's calls; a cohort holds one lane at a time.) So a lone caller runs at
once with no hand-off, the busier the lanes the larger (and cheaper per item) the batches, nothing
waits to fill a batch, and a caller joining or leaving changes only the next batch's size. A batch
that raises hands the error to every caller in it; the lanes go on. Used by engine.backends.batching
(the generator's calls) and engine.render.batching (the renderer's frames).

PhaseGroups and Cohort: on their own, sessions' calls rarely meet (each makes its chunk as soon as
its audio is in, at its own phase of the chunk period: 1.0-1.2 streams a call at 4-5 sessions on the
2-core CPU). A batched session joins a phase group: its frame slots go on the group's grid, its
chunks are made in the cohort of the group's chunks ready together (`PhaseGroup.gather`), and a
Combiner batch led by a cohort member waits until no member still computes outside a Combiner
(`Cohort.meet`), so the members' speech encoder, chunk graph and renderer calls each run as one batch.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import threading
import time
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
            _cpu_slots = ComputeSlots(cores() + 1)
        return _cpu_slots


_cpu_slots: ComputeSlots | None = None
_cpu_slots_lock = threading.Lock()


class _Call:
    __slots__ = ("cohort", "done", "error", "leads", "item", "result", "waiting", "wake")

    def __init__(self, item, cohort: Cohort | None):
        self.item, self.cohort = item, cohort
        self.leads = False  # its caller leads the next batch
        self.waiting = False  # queued behind a busy lane: its caller does not count as computing in its cohort
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
        self._queue: deque[_Call] = deque()  # calls waiting for a batch (not their leaders)
        self._running = 0  # lanes busy
        self._leading: set[Cohort] = set()  # cohorts whose call holds a lane
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, item: Item) -> Result:
        call = _Call(item, getattr(_cohort, "current", None))
        with self._lock:
            if self._closed:
                raise RuntimeError("this Combiner is closed; make a new one")
            self._queue.append(call)
            self._dispatch()
            if not call.leads:
                call.waiting = True
                _add(call.cohort, -1)
        while not call.done:
            if not call.leads:
                with yielding():  # a batch in flight carries this call, or a lane will free for it
                    call.wake.wait()
                call.wake.clear()
            if call.leads:
                call.leads = False
                if call.cohort is not None:  # the cohort's other members' calls of this stage are on their way
                    with yielding():
                        call.cohort.meet()
                with self._lock:
                    group = [call, *self._take(call.cohort, self.max_batch - 1)]
                self._lead(group)
        if call.error is not None:
            raise call.error
        return call.result

    def _dispatch(self) -> None:
        """Free lanes go to queued calls in arrival order (lock held), each caller leading the next batch; at
        most one lane a cohort, so a cohort's later calls join its leader's batch and the next lane goes to
        another cohort (a phase group's batch beside another's, one a core)."""
        while self._running < self.lanes:
            call = next((c for c in self._queue if c.cohort is None or c.cohort not in self._leading), None)
            if call is None:
                return
            self._queue.remove(call)
            self._running += 1
            if call.cohort is not None:
                self._leading.add(call.cohort)
            call.leads = True
            _resume(call)

    def _take(self, cohort: Cohort | None, most: int) -> list[_Call]:
        """Up to `most` queued calls for a batch led by a call of `cohort` (lock held): its own cohort's."""
        taken = [c for c in self._queue if c.cohort is cohort][:most]
        for c in taken:
            self._queue.remove(c)
        return taken

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
            self._leading.discard(group[0].cohort)
            if error is None:
                self.batches += 1
                self.items += len(group)
            self._dispatch()  # what queued meanwhile: its first caller leads it
        for member, result in zip(group, results, strict=True):
            member.result, member.error, member.done = result, error, True
            _resume(member)

    def close(self) -> None:
        """Refuse new calls (those queued or running finish). Idempotent."""
        with self._lock:
            self._closed = True


# --- cohorts: making the sessions' chunks meet ---------------------------------------------------------------

MEET_TIMEOUT_S = 0.03  # a batch's leader waits at most this long for its cohort's other calls
GATHER_S = 0.025  # a phase group's chunks of one tick wait at most this long for each other (a packet and a bit)

_cohort = threading.local()  # .current: the Cohort this thread is computing in


class Cohort:
    """Workers making their chunks together (a phase group's chunks of one tick, `PhaseGroup.gather`).

    A Combiner call by a member leads its batch only once no member is still computing outside a
    Combiner (each waits in one, or is done), or after MEET_TIMEOUT_S: so the members' calls of each
    stage (speech encoder, chunk graph, renderer) meet in one batch instead of the first running alone."""

    def __init__(self, members: int, meet_timeout_s: float = MEET_TIMEOUT_S):
        self.members, self.meet_timeout_s = members, meet_timeout_s
        self._computing = members  # members neither waiting in a Combiner nor done
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def member(self) -> Iterator[None]:
        """One member's compute (its Combiner calls inside meet the others'); every member enters it once."""
        _cohort.current = self
        try:
            yield
        finally:
            _cohort.current = None
            self._add(-1)

    def meet(self) -> None:
        """Wait until no other member computes, at most meet_timeout_s (the caller waits meanwhile)."""
        self._add(-1)
        try:
            with self._cond:
                self._cond.wait_for(lambda: self._computing <= 0, self.meet_timeout_s)
        finally:
            self._add(1)

    def _add(self, n: int) -> None:
        with self._cond:
            self._computing += n
            if self._computing <= 0:
                self._cond.notify_all()


def _add(cohort: Cohort | None, n: int) -> None:
    if cohort is not None:
        cohort._add(n)


def _resume(call: _Call) -> None:
    """Wake a call's caller (to lead a batch, or with its result). It counts as computing again from now, not
    from when its thread runs: a leader about to meet must not miss it."""
    if call.waiting:
        call.waiting = False
        _add(call.cohort, 1)
    call.wake.set()


class PhaseGroup:
    """Sessions whose chunk slots share one grid: `phase + k x period` on the monotonic clock. Their chunks of
    one tick are made together (`gather`), and the batched stages see them at once."""

    def __init__(self, period: float, phase: float, gather_s: float):
        self.period, self.phase, self.gather_s = period, phase, gather_s
        self.members = 0
        self._cond = threading.Condition()
        self._gathering: dict | None = None  # the open gathering: arrived, deadline, cohort (once formed)

    def align(self, t: float) -> float:
        """The first grid time at or after `t`."""
        return self.phase + math.ceil((t - self.phase) / self.period - 1e-9) * self.period

    def gather(self) -> Cohort:
        """Wait until every member's next chunk is ready to be made, or `gather_s` after the first of them was;
        the cohort of those that were. On schedule the members' chunks are of one tick; behind it, the
        members go on making their chunks together, so they stay in step while they catch up."""
        with self._cond:
            if self._gathering is None:  # the first of this gathering: it sets its deadline
                self._gathering = {"arrived": 0, "deadline": time.monotonic() + self.gather_s, "cohort": None}
            gathering = self._gathering
            gathering["arrived"] += 1
            while gathering["cohort"] is None:
                if gathering["arrived"] >= self.members or time.monotonic() >= gathering["deadline"]:
                    gathering["cohort"] = Cohort(gathering["arrived"])
                    self._gathering = None  # a member arriving later opens the next gathering
                    self._cond.notify_all()
                else:
                    self._cond.wait(gathering["deadline"] - time.monotonic())
            return gathering["cohort"]

    def _join(self) -> None:
        with self._cond:
            self.members += 1

    def leave(self) -> None:
        """A member is gone (its session closed): gatherings stop waiting for it."""
        with self._cond:
            self.members -= 1
            self._cond.notify_all()


class PhaseGroups:
    """A process's phase groups: `count` grids per chunk period, spread evenly over the period.

    A live session's worker makes a chunk as soon as its audio is in, so on its own each session's
    chunks fall at their own phase of the chunk period and the batched calls rarely meet (1.0-1.2
    streams a call on this 2-core CPU). A session that joins a group puts its frame slots on the
    group's grid (engine.stream.session: its first slot waits up to a period for the grid) and makes
    each chunk in that tick's cohort: audio arriving in real time then completes the chunks of a
    group's sessions within a packet of each other, the cohort forms, and its members' speech
    encoder, chunk graph and renderer calls each run as one batch. One group a core (the default) keeps
    both cores busy, the groups' ticks a fraction of a period apart."""

    def __init__(self, count: int | None = None, gather_s: float = GATHER_S):
        self.count = count if count is not None else cores()
        if self.count < 1:
            raise ValueError(f"PhaseGroups needs at least 1 group, got {self.count}")
        self.gather_s = gather_s
        self._groups: dict[tuple, list[PhaseGroup]] = {}  # (chunk period, kind) -> its groups
        self._lock = threading.Lock()

    def join(self, period: float, kind: object = None) -> PhaseGroup:
        """The least loaded group of the chunk period `period` (seconds) among those of `kind` (sessions of
        one preset gather only with each other); leave it when the session ends."""
        with self._lock:
            groups = self._groups.setdefault((period, kind), [
                PhaseGroup(period, i * period / self.count, self.gather_s) for i in range(self.count)])
            group = min(groups, key=lambda g: g.members)
            group._join()
            return group


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
