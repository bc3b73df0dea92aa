"""Clocks for pacing a stream: the real monotonic clock, and a simulated one for tests.

A session touches time only through its clock: `now()` (timestamps, deadlines), `wait(cond,
deadline)` (its worker thread blocks on its condition until notified or the deadline passes),
`notify(cond)` (wake that worker: new audio, an interrupt, close) and `sleep_until(deadline)`
(the async consumer waits for a frame's slot). The worker thread is announced with `attach()`
before it starts and `detach()` when it ends.

`SimulatedClock` is a discrete-event clock. Its time moves only in `advance_to` / `sleep_until`,
and only while every attached worker is idle (blocked in `wait`): it steps to the earliest deadline
a worker waits for, wakes that worker, waits until it is idle again, and so on up to the target.
So a worker acts at exactly the simulated instants it would act at in real time, whatever the
machine's speed: a stream runs as fast as its compute allows, deterministically, and tests can push
an hour of audio through the real threads and check every pts against its slot to the microsecond.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

_REAL_TIMEOUT_S = 30.0  # a simulated clock gives up waiting for a busy worker after this (a bug, not a load)


class MonotonicClock:
    """Wall time from `time.monotonic()`: never jumps, never goes back."""

    def now(self) -> float:
        return time.monotonic()

    def attach(self) -> None:
        pass

    def detach(self) -> None:
        pass

    def wait(self, cond: threading.Condition, deadline: float | None) -> None:
        """Block on `cond` (held by the caller) until notified or `deadline` (None: until notified)."""
        if deadline is None:
            cond.wait()
        else:
            cond.wait(max(deadline - time.monotonic(), 0.0))

    def notify(self, cond: threading.Condition) -> None:
        """Wake the worker waiting on `cond` (held by the caller)."""
        cond.notify_all()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class SimulatedClock:
    """Discrete-event time for tests: advances only when every attached worker is idle."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)
        self._state = threading.Condition()  # guards _now, _idle and _workers
        self._idle: dict[threading.Condition, float] = {}  # workers blocked in wait(): their condition -> deadline
        self._workers = 0  # attached worker threads

    def now(self) -> float:
        return self._now

    def attach(self) -> None:
        with self._state:
            self._workers += 1

    def detach(self) -> None:
        with self._state:
            self._workers -= 1
            self._state.notify_all()

    def wait(self, cond: threading.Condition, deadline: float | None) -> None:
        """Block on `cond` (held by the caller) until notified or simulated time reaches `deadline`."""
        with self._state:
            if deadline is not None and self._now >= deadline:
                return
            self._idle[cond] = math.inf if deadline is None else deadline
            self._state.notify_all()  # time may move on now
        cond.wait(_REAL_TIMEOUT_S)
        with self._state:
            self._idle.pop(cond, None)

    def notify(self, cond: threading.Condition) -> None:
        """Wake the worker waiting on `cond` (held by the caller); it counts as busy from now on."""
        with self._state:
            self._idle.pop(cond, None)
        cond.notify_all()

    def advance_to(self, t: float) -> None:
        """Move time forward to `t` (never back), event by event; returns once every worker is idle at `t`."""
        while True:
            with self._state:
                if not self._state.wait_for(lambda: len(self._idle) >= self._workers, _REAL_TIMEOUT_S):
                    raise RuntimeError(f"simulated clock: a worker stayed busy for {_REAL_TIMEOUT_S} s of real time")
                if self._now >= t:
                    return
                self._now = min(t, min(self._idle.values(), default=math.inf))
                due = [cond for cond, deadline in self._idle.items() if deadline <= self._now]
                for cond in due:
                    del self._idle[cond]  # busy until it waits again
            for cond in due:  # outside _state: workers take their condition first, then _state
                with cond:
                    cond.notify_all()

    async def sleep_until(self, deadline: float) -> None:
        self.advance_to(deadline)  # blocks the event loop while workers catch up: nothing on it is due before
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is


Clock = MonotonicClock | SimulatedClock
