import asyncio
import threading

import pytest

from engine.stream.clock import MonotonicClock, SimulatedClock


def test_simulated_time_steps_through_a_workers_deadlines():
    clock, cond, woke = SimulatedClock(), threading.Condition(), []

    def worker():
        with cond:
            for deadline in (0.25, 0.5, 2.0):
                while clock.now() < deadline:
                    clock.wait(cond, deadline)
                woke.append(clock.now())
        clock.detach()

    clock.attach()
    thread = threading.Thread(target=worker)
    thread.start()
    clock.advance_to(1.0)  # returns once the worker is idle at 1.0: it acted at 0.25 and 0.5 on the way
    assert woke == [0.25, 0.5] and clock.now() == 1.0
    asyncio.run(clock.sleep_until(3.0))
    thread.join(5)
    assert woke == [0.25, 0.5, 2.0] and clock.now() == 3.0


def test_simulated_time_never_goes_back():
    clock = SimulatedClock(start=5.0)
    clock.advance_to(2.0)
    assert clock.now() == 5.0


def test_a_notified_worker_is_busy_until_it_waits_again():
    clock, cond, seen = SimulatedClock(), threading.Condition(), []
    work = threading.Event()

    def worker():
        with cond:
            clock.wait(cond, None)  # idle until notified
            seen.append(clock.now())
            work.wait(5)  # busy: time must not move meanwhile
            clock.wait(cond, 10.0)
        clock.detach()

    clock.attach()
    thread = threading.Thread(target=worker)
    thread.start()
    clock.advance_to(1.0)
    with cond:
        clock.notify(cond)
    mover = threading.Thread(target=clock.advance_to, args=(2.0,))
    mover.start()
    mover.join(0.2)
    assert mover.is_alive() and clock.now() == 1.0  # held back while the worker is busy
    work.set()
    mover.join(5)
    assert seen == [1.0] and clock.now() == 2.0
    clock.advance_to(11.0)
    thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize("clock", [MonotonicClock(), SimulatedClock()])
def test_sleep_until_reaches_the_deadline(clock):
    target = clock.now() + 0.01
    asyncio.run(clock.sleep_until(target))
    assert clock.now() >= target
